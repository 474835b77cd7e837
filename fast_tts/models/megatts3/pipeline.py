"""MegaTTS3 inference, stage by stage: reference preprocessing once per voice, then per text segment
G2P phones -> duration LM -> DiT -> WaveVAE -> trim, loudness match and peak guard; segments joined with a 0.16 s
Hann crossfade; int16 by truncation (x * 32767 cast), as the reference writes its wav (`REFERENCE_JOIN`, the rule the
engine streams by too).

A reference longer than the aligner's position table allows is trimmed to `MAX_REFERENCE_SECONDS` with a warning
(the latent, sliced to the aligned length, follows the trim).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from fast_tts.audio import JoinRule
from fast_tts.errors import InvalidInputError, UnsupportedOperationError
from fast_tts.models.megatts3 import frontend
from fast_tts.models.megatts3.dit import NoiseFn, prepare_inputs
from fast_tts.models.megatts3.duration import DurationPrompt, postprocess
from fast_tts.models.megatts3.loader import MegaTTS3Models
from fast_tts.models.megatts3.phones import fix_total, length_regulate, split_stream
from fast_tts.models.megatts3.wavvae import HOP

log = logging.getLogger(__name__)

SAMPLE_RATE = 24000
CROSSFADE_S = 0.16
LEVEL_SECONDS = 1.0  # a stream's first piece: long enough for a BS.1770 loudness reading (>= 0.4 s blocks)
STREAM_CHUNK_FRAMES = 50  # later pieces: 2 s of audio per WaveVAE call
MAX_REFERENCE_SECONDS = 59.0  # the aligner encoder has 3000 positions = 60 s of 16 kHz mel after padding
PHONE_VOCAB = 174
_BRACKETS = re.compile(r"[《》〈〉「」『』【】]")
_NEWLINES = re.compile(r"[\r\n\t\f\v]+")


@dataclass
class ReferencePrompt:
    """Everything a voice contributes to synthesis (computed once, reusable across requests)."""

    ph: torch.Tensor  # (1, N_ref)
    tone: torch.Tensor  # (1, N_ref)
    mel2ph: torch.Tensor  # (1, T_frames), multiple of 8
    latent: torch.Tensor  # (1, T_frames // 4, 32)
    duration: DurationPrompt
    loudness: float
    aligner_tokens: torch.Tensor = field(repr=False)


@dataclass
class SegmentOutput:
    """One segment's waveform and the intermediates the parity tests compare."""

    wav: np.ndarray  # float, after trim, loudness and peak guard
    mel2ph: torch.Tensor
    dit_out: torch.Tensor
    vae_in: torch.Tensor
    vae_out: torch.Tensor  # decoded target region only (B, 1, 960 * T_target)


def clean_text(text: str) -> str:
    """Remove book-title brackets and fold newlines/tabs into spaces (the reference turns both into noise)."""
    return re.sub(r" {2,}", " ", _NEWLINES.sub(" ", _BRACKETS.sub("", text))).strip()


# The reference's join: halves of np.hanning(2w) over w = 0.16 s at each seam, in float64; int16 as its wav writer
# makes it, x * 32767 cut toward zero. The engine streams by the same rule.
REFERENCE_JOIN = JoinRule(CROSSFADE_S, "hanning", np.float64, int16_scale=32767.0, int16_truncate=True)


def match_loudness(wav: np.ndarray, target: float) -> np.ndarray:
    """Scale to the prompt's integrated loudness; if the peak reaches 1, rescale it to 0.95."""
    import pyloudnorm

    current = frontend.loudness(wav)
    if math.isfinite(current) and math.isfinite(target):
        wav = pyloudnorm.normalize.loudness(wav, current, target)
    peak = float(np.abs(wav).max()) if wav.size else 0.0
    if peak >= 1:
        wav = wav / peak * 0.95
    return wav


def bf16_autocast(device: torch.device, enabled: bool = True) -> torch.autocast:
    """bf16 autocast for the DiT and WaveVAE: their matmuls and convolutions run in bf16, while elementwise work
    (the CFG mix, the sampler's update, the final wav) stays float32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


class MegaTTS3Pipeline:
    """The MegaTTS3 stages over loaded models; no threads, no I/O beyond what the caller passes in.

    `bf16=True` runs the DiT and the WaveVAE under bf16 autocast (CPUs with AVX-512 BF16 / AMX, recent GPUs):
    about 2x faster on such a CPU, at a small, measured distance from float32 (tests/test_megatts3_parity.py). The
    default float32 reproduces the reference's numbers."""

    def __init__(self, models: MegaTTS3Models, bf16: bool = False) -> None:
        self.m = models
        self.bf16 = bf16

    # ---- reference -------------------------------------------------------------------------------------------
    def preprocess(self, wav_24k: np.ndarray, latent: np.ndarray | torch.Tensor | None) -> ReferencePrompt:
        """Align the reference, slice its latent and build the duration prompt."""
        wav = np.asarray(wav_24k, dtype=np.float32).reshape(-1)
        if wav.size == 0:
            raise InvalidInputError("reference audio is empty", field="reference_audio")
        limit = int(MAX_REFERENCE_SECONDS * SAMPLE_RATE)
        if wav.size > limit:
            log.warning("reference audio is %.1f s; trimming to %.0f s (the aligner's limit)",
                        wav.size / SAMPLE_RATE, MAX_REFERENCE_SECONDS)
            wav = wav[:limit]
        padded = frontend.pad_prompt(wav, self.m.win_size)
        loud = frontend.loudness(padded)
        _, mel = frontend.prompt_mel(padded, self.m.frames_multiple)
        n_frames = mel.shape[-1]
        tokens = self.m.aligner.greedy(mel.to(self._device))
        stream = tokens[0, 1:-1].cpu()
        if stream.numel() < 2 or stream.numel() % 2:
            raise InvalidInputError("the aligner could not align the reference audio (no phone/time pairs)",
                                    field="reference_audio")
        ph, tone, dur = split_stream(stream)
        dur = fix_total(dur, n_frames)
        fm = self.m.frames_multiple
        mel2ph = length_regulate(dur[None])
        mel2ph = mel2ph[:, : mel2ph.shape[1] // fm * fm]
        lat = self._prompt_latent(latent, mel2ph.shape[1] // self.m.vae_stride, padded)
        ph, tone = ph[None].to(self._device), tone[None].to(self._device)
        mel2ph = mel2ph.to(self._device)
        dur_prompt = self.m.duration.make_prompt(ph, tone, mel2ph)
        return ReferencePrompt(ph, tone, mel2ph, lat, dur_prompt, loud, tokens)

    def _prompt_latent(self, latent: np.ndarray | torch.Tensor | None, needed: int, padded: np.ndarray) -> torch.Tensor:
        """The reference's latent (1, needed, 32): the caller's `.npy`, checked against the wav, or else the WaveVAE
        encoder's posterior mean of the padded wav when the checkpoint has the encoder."""
        if latent is None:
            encoder = self.m.wavvae_encoder
            if encoder is None:
                raise InvalidInputError(
                    "the reference needs its WaveVAE latent (.npy, shape [1, T, 32] at 25 Hz): this checkpoint's "
                    "wavvae/ has only the decoder (as the official MegaTTS3 release does), so a wav alone cannot be "
                    "encoded; pass (wav, npy), or use a wavvae/model_only_last.ckpt that includes the encoder",
                    field="reference_latent")
            with torch.inference_mode():
                lat = encoder(torch.from_numpy(padded)[None].to(self._device))
            if lat.shape[1] < needed:
                raise InvalidInputError(f"the WaveVAE encoder gave {lat.shape[1]} latent frames, the prompt needs "
                                        f"{needed}", field="reference_audio")
            return lat[:, :needed]
        lat = torch.as_tensor(np.asarray(latent, dtype=np.float32))
        if lat.dim() == 2:
            lat = lat[None]
        if lat.dim() != 3 or lat.shape[0] != 1 or lat.shape[2] != 32:
            raise InvalidInputError(f"reference latent must have shape [1, T, 32], got {list(lat.shape)}",
                                    field="reference_latent")
        max_frames = math.ceil(padded.size / (self.m.vae_stride * self.m.hop_size)) + 25
        if lat.shape[1] < needed or lat.shape[1] > max_frames:
            raise InvalidInputError(
                f"reference latent has {lat.shape[1]} frames but the wav needs {needed} (at most {max_frames}): "
                "the latent does not belong to this audio", field="reference_latent")
        return lat[:, :needed].to(self._device)

    @property
    def _device(self) -> torch.device:
        return self.m.dit.postnet.weight.device

    # ---- text -> phones ----------------------------------------------------------------------------------------
    def phonemize(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """G2P one segment (greedy), dropping ids that are not phones (ids < 3 or beyond the phone table)."""
        if self.m.g2p is None:
            raise UnsupportedOperationError("the G2P model was not loaded")
        return self.phones_from_g2p_ids(self.m.g2p.generate(clean_text(text)))

    def phones_from_g2p_ids(self, generated: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(phone, tone) from G2P output ids, keeping only valid phone ids."""
        ph, tone = self.m.g2p.phones(generated)
        keep = (ph[0] >= 3) & (ph[0] < PHONE_VOCAB)
        if not bool(keep.all()):
            log.warning("G2P produced %d ids outside the phone table; dropped", int((~keep).sum()))
        ph, tone = ph[:, keep], tone[:, keep]
        if ph.shape[1] == 0:
            raise InvalidInputError("the text produced no phones", field="text")
        return ph.to(self._device), tone.to(self._device)

    # ---- one segment ---------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def segment(self, ref: ReferencePrompt, ph: torch.Tensor, tone: torch.Tensor, *, is_first: bool, is_final: bool,
                time_step: int = 32, p_w: float = 1.6, t_w: float = 2.5, dur_disturb: float = 0.1,
                dur_alpha: float = 1.0, noise: NoiseFn | None = None,
                generator: torch.Generator | None = None) -> SegmentOutput:
        """Durations, DiT sampling, WaveVAE decoding and post-processing of one segment's phones."""
        mel2ph, dit_out, vae_in = self._latents(ref, ph, tone, is_first=is_first, is_final=is_final,
                                                time_step=time_step, p_w=p_w, t_w=t_w, dur_disturb=dur_disturb,
                                                dur_alpha=dur_alpha, noise=noise, generator=generator)
        with bf16_autocast(self._device, self.bf16):
            vae_out = self.m.wavvae.decode_range(vae_in, ref.latent.shape[1])  # the prompt region is trimmed anyway
        wav = vae_out[0, 0].float().cpu().numpy()
        wav = match_loudness(wav, ref.loudness)
        return SegmentOutput(wav, mel2ph, dit_out, vae_in, vae_out)

    @torch.inference_mode()
    def segment_pieces(self, ref: ReferencePrompt, ph: torch.Tensor, tone: torch.Tensor, *, is_first: bool,
                       is_final: bool, level_seconds: float = LEVEL_SECONDS, chunk_frames: int = STREAM_CHUNK_FRAMES,
                       **params) -> Iterator[np.ndarray]:
        """One segment's audio in pieces as WaveVAE decodes them, for streams: the first leaves after about
        `level_seconds` of audio instead of after the whole segment.

        The loudness match needs a level before the rest exists, so the gain (and the peak guard) is set from that
        first piece and kept for the whole segment: the pieces are the non-streamed segment times one constant
        (BS.1770 loudness of the opening second against that of the segment, typically within a dB or two); a
        later sample that would pass full scale is clipped.
        """
        _mel2ph, _dit_out, vae_in = self._latents(ref, ph, tone, is_first=is_first, is_final=is_final, **params)
        first = max(1, round(level_seconds * SAMPLE_RATE / HOP))
        gain = None
        pieces = self.m.wavvae.decode_chunks(vae_in, ref.latent.shape[1], first=first, chunk=chunk_frames)
        while True:
            with bf16_autocast(self._device, self.bf16):  # entered per piece: the generator yields in between
                piece = next(pieces, None)
            if piece is None:
                return
            wav = piece[0, 0].float().cpu().numpy()
            if gain is None:
                matched = match_loudness(wav, ref.loudness)
                peak = float(np.abs(wav).max()) if wav.size else 0.0
                gain = float(np.abs(matched).max()) / peak if peak > 0 else 1.0
                yield matched
            else:
                yield np.clip(wav * gain, -1.0, 1.0)

    def _latents(self, ref: ReferencePrompt, ph: torch.Tensor, tone: torch.Tensor, *, is_first: bool,
                 is_final: bool, time_step: int = 32, p_w: float = 1.6, t_w: float = 2.5, dur_disturb: float = 0.1,
                 dur_alpha: float = 1.0, noise: NoiseFn | None = None,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Durations and DiT sampling: (mel2ph, DiT output, WaveVAE input with the prompt latent restored)."""
        raw = self.m.duration.predict(ref.duration, ph, tone)
        dur = postprocess(raw, ph, is_first=is_first, is_final=is_final, dur_disturb=dur_disturb,
                          dur_alpha=dur_alpha, code_size=self.m.duration.cfg.code_size,
                          frames_multiple=self.m.frames_multiple, generator=generator)
        mel2ph = length_regulate(dur)
        inp = prepare_inputs(ref.mel2ph, mel2ph, ref.ph, ref.tone, ph, tone, ref.latent,
                             self.m.frames_multiple, self.m.vae_stride)
        with bf16_autocast(self._device, self.bf16):
            dit_out = self.m.dit.sample(inp, steps=time_step, p_w=p_w, t_w=t_w, noise=noise, generator=generator)
        dit_out = dit_out.float()
        vae_in = dit_out.clone()
        vae_in[:, : ref.latent.shape[1]] = ref.latent
        return mel2ph, dit_out, vae_in

    def synthesize(self, ref: ReferencePrompt, segments: Iterable[tuple[torch.Tensor, torch.Tensor]],
                   on_segment: Callable[[int, SegmentOutput], None] | None = None, **params) -> np.ndarray:
        """Phones of each segment -> one float waveform (crossfaded)."""
        segs = list(segments)
        if not segs:
            raise InvalidInputError("nothing to synthesize", field="text")
        outs = []
        for i, (ph, tone) in enumerate(segs):
            out = self.segment(ref, ph, tone, is_first=i == 0, is_final=i == len(segs) - 1, **params)
            if on_segment is not None:
                on_segment(i, out)
            outs.append(out.wav)
        return REFERENCE_JOIN.join(outs, SAMPLE_RATE)

    def speak(self, ref: ReferencePrompt, texts: list[str], **params) -> np.ndarray:
        """Text segments -> int16 audio at 24 kHz."""
        phones = [self.phonemize(t) for t in texts]
        return REFERENCE_JOIN.int16(self.synthesize(ref, phones, **params))
