"""ChatTTS speaker strings and audio-prompt strings, in the reference's format so strings move both ways.

Speaker string: base16384(raw LZMA2 (preset 9 | extreme) of the float16 vector). Audio-prompt string:
base16384(uint16 LE shape (2 values) ++ raw LZMA2 of the uint16 LE codes (num_vq, T)). The `spk_stat` string
(std ++ mean, float16) is base16384 of the raw bytes, without LZMA.
"""

from __future__ import annotations

import lzma

import numpy as np
import pybase16384 as b14
import torch
import torch.nn.functional as F

from fast_tts.errors import InvalidInputError

_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]


def _compress(data: bytes) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)


def _decompress(data: bytes) -> bytes:
    return lzma.decompress(data, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)


def parse_spk_stat(spk_stat: str, hidden: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(std, mean) float16 vectors of size `hidden` from a spk_stat string."""
    try:
        values = np.frombuffer(b14.decode_from_string(spk_stat), dtype="<f2").copy()
    except Exception as exc:
        raise InvalidInputError(f"spk_stat is not a base16384 float16 string: {exc}", field="spk_stat") from exc
    if values.size != 2 * hidden:
        raise InvalidInputError(
            f"spk_stat holds {values.size} float16 values; this model needs {2 * hidden} (std ++ mean)",
            field="spk_stat",
        )
    t = torch.from_numpy(values)
    return t[:hidden], t[hidden:]


def encode_speaker(vector: torch.Tensor) -> str:
    """Speaker string of a float16 vector."""
    data = vector.detach().to("cpu", torch.float16).contiguous().numpy().astype("<f2").tobytes()
    return b14.encode_to_string(_compress(data))


def decode_speaker(text: str, hidden: int | None = None) -> torch.Tensor:
    """float16 vector of a speaker string; InvalidInputError (field `spk_emb`) when it is not one."""
    try:
        raw = _decompress(b14.decode_from_string(text))
    except Exception as exc:
        raise InvalidInputError(f"not a ChatTTS speaker string: {exc}", field="spk_emb") from exc
    if len(raw) % 2 or (hidden is not None and len(raw) != 2 * hidden):
        want = f"{hidden} float16 values" if hidden is not None else "float16 values"
        raise InvalidInputError(f"speaker string decodes to {len(raw)} bytes, expected {want}", field="spk_emb")
    return torch.from_numpy(np.frombuffer(raw, dtype="<f2").copy())


def _box_muller_16(u: np.ndarray) -> np.ndarray:
    """Box-Muller over blocks of 16 uniforms (first 8 -> radius, last 8 -> angle), rounding to float16 at every
    operation as torch's CPU float16 kernel did."""
    h, f = np.float16, np.float32
    blocks = u.reshape(-1, 2, 8)
    u1 = (f(1) - blocks[:, 0].astype(f)).astype(h)
    radius = np.sqrt((f(-2) * np.log(u1.astype(f)).astype(h).astype(f)).astype(h).astype(f)).astype(h)
    theta = (2.0 * np.pi * blocks[:, 1].astype(np.float64)).astype(h)
    cos = (radius.astype(f) * np.cos(theta.astype(f)).astype(h).astype(f)).astype(h)
    sin = (radius.astype(f) * np.sin(theta.astype(f)).astype(h).astype(f)).astype(h)
    return np.stack([cos, sin], axis=1).reshape(-1)


def randn_float16(n: int) -> torch.Tensor:
    """`torch.randn(n, dtype=float16)` as torch <= 2.9 computes it on CPU, from the global RNG.

    Those releases drew 11-bit uniforms and ran Box-Muller in float16 arithmetic; newer releases compute in float32,
    so a seed would give another speaker than the reference. The uniforms are the low 11 bits of the same 32-bit
    draws `torch.rand` (float32) takes the low 24 bits of, so the stream is reproduced exactly. For n < 16 torch used
    a float64 path; that case falls back to the current `torch.randn`.
    """
    if n < 16:
        return torch.randn(n, dtype=torch.float16)
    bits = (torch.rand(n, dtype=torch.float32) * 2**24).to(torch.int64) & 2047
    u = (bits.double() * 2**-11).numpy().astype(np.float16)
    whole = n - n % 16
    out = np.empty(n, dtype=np.float16)
    out[:whole] = _box_muller_16(u[:whole])
    if n % 16:  # torch redraws 16 fresh uniforms for the last 16 values
        tail_bits = (torch.rand(16, dtype=torch.float32) * 2**24).to(torch.int64) & 2047
        out[n - 16 :] = _box_muller_16((tail_bits.double() * 2**-11).numpy().astype(np.float16))
    return torch.from_numpy(out)


def sample_random_speaker(std: torch.Tensor, mean: torch.Tensor) -> str:
    """A random speaker string: float16 normal draws from the global RNG (as the reference's torch drew them),
    times std plus mean, in float16; the same seed gives the same speaker as the reference."""
    vec = randn_float16(std.shape[0]).mul_(std).add_(mean)
    return encode_speaker(vec)


def seeded_speaker(std: torch.Tensor, mean: torch.Tensor, seed: int) -> str:
    """`sample_random_speaker` after `torch.manual_seed(seed)`, the global RNG left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return sample_random_speaker(std, mean)


def normalize_speaker(vector: torch.Tensor) -> torch.Tensor:
    """The vector injected at `[spk_emb]`: L2-normalised in float16 (eps 1e-12)."""
    return F.normalize(vector.to(torch.float16), p=2.0, dim=0, eps=1e-12)


def encode_prompt(codes: torch.Tensor) -> str:
    """Audio-prompt string of integer codes (num_vq, T)."""
    arr = codes.detach().cpu().numpy().astype("<u2")
    shape = np.array(arr.shape, dtype="<u2").tobytes()
    return b14.encode_to_string(shape + _compress(arr.tobytes()))


def decode_prompt(text: str) -> torch.Tensor:
    """Codes (num_vq, T) int32 of an audio-prompt string; InvalidInputError (field `spk_smp`) when it is not one."""
    try:
        raw = b14.decode_from_string(text)
        shape = tuple(int(x) for x in np.frombuffer(raw[:4], dtype="<u2"))
        codes = np.frombuffer(_decompress(raw[4:]), dtype="<u2").astype(np.int32).reshape(shape)
    except Exception as exc:
        raise InvalidInputError(f"not a ChatTTS audio-prompt string: {exc}", field="spk_smp") from exc
    return torch.from_numpy(codes)
