"""Sampling parameters and logits processing vectorised over a batch of independent requests.

`SamplingParams` is what a caller sets per request. `BatchSampler` keeps every request's parameters and state in
per-row tensors (one row per KV-cache row) so one step samples the whole batch without a Python loop over rows.
Processing follows the ChatTTS order: temperature, repetition penalty, top-p, top-k, stop ids masked before
`min_new_tokens`, then sampling by inverse CDF from uniforms drawn by each row's own seeded generator, so a row's
tokens never depend on its batch neighbours. A request may instead bring a `NoiseSource`: its token is then
argmax(probs / noise) with Exp(1) noise from the source, which is exactly how `torch.multinomial(probs, 1)` draws,
so a caller can replay another implementation's random stream (the ChatTTS drop-in replays the reference's).
Where every row keeps its top k tokens (the sparse path below) and the native kernels run, a step is one call to
`kernels/sample.c`, which follows the same rules in one pass (tokens equal up to float rounding).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from fast_tts.errors import InvalidInputError
from fast_tts.kernels import native

_UNIFORM_BLOCK = 64  # steps of uniforms drawn per refill of a row's buffer
_NO_WINDOW = 2**62  # repetition window of "all generated tokens"


@runtime_checkable
class NoiseSource(Protocol):
    """Per-request Exp(1) noise, one (num_codebooks, vocab) float32 tensor per generated token."""

    def noise(self, step: int) -> torch.Tensor:
        """The noise of the request's token number `step` (0-based); called once per step, in order."""
        ...


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings; validated on creation (InvalidInputError names the field)."""

    temperature: float | Sequence[float] = 1.0  # 0 = greedy; a sequence gives one value per codebook
    top_k: int | None = None  # None disables
    top_p: float | None = None  # None (or 1.0) disables
    min_tokens_to_keep: int = 1  # kept by top-k and top-p whatever their thresholds (ChatTTS uses 3)
    repetition_penalty: float = 1.0
    repetition_window: int | None = None  # last N generated tokens per codebook (ChatTTS: 16); None = all generated
    min_new_tokens: int = 0
    max_new_tokens: int = 1024
    stop_token_ids: Sequence[int] = ()  # a row stops when any codebook samples one; that step is not returned
    seed: int | None = None  # None draws a fresh seed
    noise: NoiseSource | None = None  # sample argmax(probs / noise) with the source's noise instead (seed unused)
    return_hidden: bool = False  # deliver the final-norm hidden state that predicted each token

    def __post_init__(self) -> None:
        temps = self.temperatures()
        if not temps or any(not _finite(t) or t < 0 for t in temps):
            raise InvalidInputError(f"temperature must be >= 0 and finite, got {self.temperature!r}", "temperature")
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 1):
            raise InvalidInputError(f"top_k must be a positive integer or None, got {self.top_k!r}", "top_k")
        if self.top_p is not None and (not _finite(self.top_p) or not 0.0 < self.top_p <= 1.0):
            raise InvalidInputError(f"top_p must be in (0, 1] or None, got {self.top_p!r}", "top_p")
        if not _is_int(self.min_tokens_to_keep) or self.min_tokens_to_keep < 1:
            raise InvalidInputError("min_tokens_to_keep must be an integer >= 1", "min_tokens_to_keep")
        if not _finite(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise InvalidInputError(
                f"repetition_penalty must be > 0 and finite, got {self.repetition_penalty!r}", "repetition_penalty"
            )
        if self.repetition_window is not None and (not _is_int(self.repetition_window) or self.repetition_window < 1):
            raise InvalidInputError("repetition_window must be an integer >= 1 or None", "repetition_window")
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 0:
            raise InvalidInputError(
                f"max_new_tokens must be an integer >= 0, got {self.max_new_tokens!r}", "max_new_tokens"
            )
        if not _is_int(self.min_new_tokens) or not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise InvalidInputError("min_new_tokens must be an integer in [0, max_new_tokens]", "min_new_tokens")
        if any(not _is_int(t) or t < 0 for t in self.stop_token_ids):
            raise InvalidInputError(
                f"stop_token_ids must be non-negative integers, got {self.stop_token_ids!r}", "stop_token_ids"
            )
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < 2**63):
            raise InvalidInputError(f"seed must be an integer in [0, 2**63), got {self.seed!r}", "seed")
        if self.noise is not None and not isinstance(self.noise, NoiseSource):
            raise InvalidInputError("noise must have a noise(step) -> Tensor method", "noise")
        if not isinstance(self.return_hidden, bool):
            raise InvalidInputError("return_hidden must be a bool", "return_hidden")

    def temperatures(self) -> list[float]:
        """Temperature as a list (one value, or one per codebook)."""
        t = self.temperature
        return [float(x) for x in t] if isinstance(t, Sequence) else [float(t)]

    def check_model(self, num_codebooks: int, vocab_size: int) -> None:
        """Validate the fields that depend on the model (codebook count, vocabulary size)."""
        temps = self.temperatures()
        if len(temps) not in (1, num_codebooks):
            raise InvalidInputError(
                f"temperature needs 1 or {num_codebooks} values (one per codebook), got {len(temps)}", "temperature"
            )
        if any(t >= vocab_size for t in self.stop_token_ids):
            raise InvalidInputError(f"stop_token_ids must be < vocabulary size {vocab_size}", "stop_token_ids")


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# ---- batched processors: logits (B, C, V) float32, per-row parameters as tensors -------------------------------


def apply_temperature(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Divide by temperature (B, C); greedy entries carry 1 here and are resolved at sampling."""
    return logits / temperature[:, :, None]


def apply_repetition_penalty(logits: torch.Tensor, counts: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """Scale each token by alpha = penalty ** count: s * alpha if s < 0 else s / alpha."""
    alpha = penalty[:, None, None] ** counts
    return torch.where(logits < 0, logits * alpha, logits / alpha)


def apply_top_p(logits: torch.Tensor, top_p: torch.Tensor, min_keep: torch.Tensor) -> torch.Tensor:
    """Nucleus filtering: drop tokens whose ascending cumulative probability is <= 1 - p; keep the top min_keep."""
    sorted_logits, order = torch.sort(logits, dim=-1)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    remove = cum <= (1 - top_p)[:, None, None]
    vocab = logits.shape[-1]
    keep_top = torch.arange(vocab, device=logits.device) >= (vocab - min_keep)[:, None, None]
    remove &= ~keep_top
    return logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))


def apply_top_k(logits: torch.Tensor, k_eff: torch.Tensor) -> torch.Tensor:
    """Keep the k_eff (B,) largest logits of each row (ties with the k-th are kept)."""
    kmax = int(k_eff.max())
    top = torch.topk(logits, kmax, dim=-1).values
    kth = top.gather(-1, (k_eff - 1)[:, None, None].expand(-1, logits.shape[1], 1))
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p_top_k_sparse(
    logits: torch.Tensor, top_p: torch.Tensor, min_keep: torch.Tensor, k_eff: torch.Tensor
) -> torch.Tensor:
    """`apply_top_k(apply_top_p(...))` without sorting the vocabulary, for large vocabularies where every row has a
    top-k: only the k largest logits can survive, and whether top-p drops one of them depends only on the probability
    mass above it (1 - that mass is the ascending cumulative sum at it), which the k largest and a logsumexp give.
    Same tokens up to float rounding at the nucleus edge; ties with the k-th logit past k are not kept."""
    kmax = int(k_eff.max())
    values, index = torch.topk(logits, kmax, dim=-1)  # descending
    probs = (values - torch.logsumexp(logits, -1, keepdim=True)).exp()
    at_or_below = 1 - (probs.cumsum(-1) - probs)  # ascending cumulative probability at each of the top tokens
    rank = torch.arange(kmax, device=logits.device)
    remove = (at_or_below <= (1 - top_p)[:, None, None]) & (rank >= min_keep[:, None, None])
    remove |= rank >= k_eff[:, None, None]
    kept = values.masked_fill(remove, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter_(-1, index, kept)


SPARSE_VOCAB = 512  # from this vocabulary size up (ChatTTS codebooks: 626), top-p + top-k avoid sorting the vocabulary


def sample_inverse_cdf(logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Sample one token per (row, codebook) from softmax(logits) with uniforms (B, C) in [0, 1)."""
    probs = logits.softmax(-1).double()
    cdf = probs.cumsum(-1)
    target = uniforms.double()[..., None] * cdf[..., -1:]
    idx = torch.searchsorted(cdf, target, right=True)
    return idx.clamp_(max=logits.shape[-1] - 1)[..., 0]


class BatchSampler:
    """Per-row sampling parameters and state for up to `max_rows` requests; rows are addressed like cache rows."""

    def __init__(
        self, max_rows: int, num_codebooks: int, vocab_size: int, max_steps: int, device: str | torch.device = "cpu"
    ) -> None:
        self.max_rows, self.num_codebooks, self.vocab_size = max_rows, num_codebooks, vocab_size
        self.max_steps = max_steps
        m, c, v = max_rows, num_codebooks, vocab_size
        self.device = dev = torch.device(device)  # generators stay on the CPU; their uniforms are copied over
        self.temperature = torch.ones(m, c, device=dev)
        self.greedy = torch.zeros(m, c, dtype=torch.bool, device=dev)
        self.penalty = torch.ones(m, device=dev)
        self.window = torch.full((m,), _NO_WINDOW, dtype=torch.long, device=dev)
        self.top_p = torch.ones(m, device=dev)
        self.k_eff = torch.full((m,), v, dtype=torch.long, device=dev)
        self.min_keep = torch.ones(m, dtype=torch.long, device=dev)
        self.min_new = torch.zeros(m, dtype=torch.long, device=dev)
        self.steps = torch.zeros(m, dtype=torch.long, device=dev)
        self.stop_mask = torch.zeros(m, v, dtype=torch.bool, device=dev)
        self.counts = torch.zeros(m, c, v, device=dev)
        self.history = torch.zeros(m, c, max_steps, dtype=torch.long, device=dev)  # ring buffer of generated tokens
        self.uniforms = torch.zeros(m, _UNIFORM_BLOCK, c, dtype=torch.float64, device=dev)
        self.cursor = torch.zeros(m, dtype=torch.long, device=dev)
        self._cursor_py = [0] * m  # Python mirror, so refills need no tensor reads
        self._steps_py = [0] * m  # tokens each row has sampled (Python mirror of `steps`)
        self._gens: list[torch.Generator | None] = [None] * m
        self._params: list[SamplingParams | None] = [None] * m
        self._flags = (False, False, False, False, False)

    def set_row(self, row: int, params: SamplingParams) -> None:
        """Install a new request's parameters in `row` and reset its state (seeded generator included)."""
        temps = params.temperatures()
        t = torch.tensor(temps if len(temps) > 1 else temps * self.num_codebooks, device=self.device)
        self.greedy[row] = t == 0
        self.temperature[row] = torch.where(t == 0, torch.ones_like(t), t)
        self.penalty[row] = params.repetition_penalty
        w = params.repetition_window
        self.window[row] = w if w is not None and w < self.max_steps else _NO_WINDOW
        self.top_p[row] = params.top_p if params.top_p is not None else 1.0
        k = self.vocab_size if params.top_k is None else max(params.top_k, params.min_tokens_to_keep)
        self.k_eff[row] = min(k, self.vocab_size)
        self.min_keep[row] = min(params.min_tokens_to_keep, self.vocab_size)
        self.min_new[row] = params.min_new_tokens
        self.steps[row] = 0
        self._steps_py[row] = 0
        self.stop_mask[row] = False
        if params.stop_token_ids:
            self.stop_mask[row, list(params.stop_token_ids)] = True
        self.counts[row] = 0
        seed = params.seed if params.seed is not None else random.SystemRandom().randrange(2**63)
        gen = torch.Generator().manual_seed(seed)
        self._gens[row] = gen
        self._refill(row)
        self._params[row] = params
        self._update_flags()

    def clear_row(self, row: int) -> None:
        """Forget the request in `row`."""
        self._params[row] = None
        self._gens[row] = None
        self._update_flags()

    def move_row(self, src: int, dst: int, steps: int) -> None:
        """Move a request's parameters and state from `src` to `dst` (`steps` = tokens it has generated)."""
        for t in (
            self.temperature,
            self.greedy,
            self.penalty,
            self.window,
            self.top_p,
            self.k_eff,
            self.min_keep,
            self.min_new,
            self.steps,
            self.stop_mask,
            self.counts,
            self.uniforms,
            self.cursor,
        ):
            t[dst] = t[src]
        self.history[dst, :, : min(steps, self.max_steps)] = self.history[src, :, : min(steps, self.max_steps)]
        self._cursor_py[dst] = self._cursor_py[src]
        self._steps_py[dst] = self._steps_py[src]
        self._gens[dst], self._params[dst] = self._gens[src], self._params[src]
        self.clear_row(src)

    def _refill(self, row: int) -> None:
        u = torch.rand(_UNIFORM_BLOCK, self.num_codebooks, generator=self._gens[row], dtype=torch.float64)
        self.uniforms[row] = u.to(self.device)
        self.cursor[row] = 0
        self._cursor_py[row] = 0

    def _update_flags(self) -> None:
        live = [p for p in self._params if p is not None]
        self._flags = (
            any(p.repetition_penalty != 1.0 for p in live),
            any(p.top_p is not None and p.top_p < 1.0 for p in live),
            any(p.top_k is not None and p.top_k < self.vocab_size for p in live),
            any(p.min_new_tokens > 0 and p.stop_token_ids for p in live),
            any(p.noise is not None for p in live),
        )

    def process(self, logits: torch.Tensor, rows: slice, argmax_only: bool = False) -> torch.Tensor:
        """Apply the processors to logits (B, C, V) of cache rows `rows`, in ChatTTS order.

        `argmax_only`: the caller only takes the argmax (every row greedy), so the processors that cannot move it
        (temperature, top-p, top-k: they keep the largest logit) are skipped."""
        use_penalty, use_top_p, use_top_k, use_min_new, _ = self._flags
        x = logits.float() if argmax_only else apply_temperature(logits.float(), self.temperature[rows])
        if use_penalty:
            x = apply_repetition_penalty(x, self.counts[rows], self.penalty[rows])
        if argmax_only:
            use_top_p = use_top_k = False
        if not argmax_only and self._sparse(rows):
            x = apply_top_p_top_k_sparse(x, self.top_p[rows], self.min_keep[rows], self.k_eff[rows])
        else:
            if use_top_p:
                x = apply_top_p(x, self.top_p[rows], self.min_keep[rows])
            if use_top_k:
                x = apply_top_k(x, self.k_eff[rows])
        if use_min_new:
            x = x.masked_fill(self._blocked(rows)[:, None, :], float("-inf"))
        return x

    def _sparse(self, rows: slice) -> bool:
        """True when top-p + top-k of `rows` take the path without sorting (every row keeps its top k tokens)."""
        use_top_p, use_top_k = self._flags[1], self._flags[2]
        return (use_top_p and use_top_k and self.vocab_size >= SPARSE_VOCAB
                and bool((self.k_eff[rows] < self.vocab_size).all()))

    def _blocked(self, rows: slice) -> torch.Tensor:
        """(B, V) the stop ids each row may not sample yet (before its min_new_tokens)."""
        return self.stop_mask[rows] & (self.steps[rows] < self.min_new[rows])[:, None]

    def sample(self, logits: torch.Tensor, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample tokens (B, C) for `rows` and record them; returns (tokens, stopped (B,) bool)."""
        greedy = self.greedy[rows]
        all_greedy = bool(greedy.all())
        start = rows.start or 0
        n = logits.shape[0]
        idx = torch.arange(start, start + n, device=self.device)
        if not all_greedy and self._native_applies(logits, rows):
            tokens = self._sample_native(logits, rows, idx)
            self._advance(tokens, rows, idx)
            return tokens, self.stop_mask[rows].gather(1, tokens).any(-1)
        x = self.process(logits, rows, argmax_only=all_greedy)
        if all_greedy:
            tokens = x.argmax(-1)
            self._advance(tokens, rows, idx)
            return tokens, self.stop_mask[rows].gather(1, tokens).any(-1)
        sources = self._noise_sources(start, n) if self._flags[4] else {}
        if len(sources) < n:  # rows without a noise source: inverse CDF from their own uniforms
            tokens = sample_inverse_cdf(x, self.uniforms[idx, self.cursor[rows]])
        else:
            tokens = torch.empty(x.shape[:2], dtype=torch.long, device=x.device)
        if sources:
            self._sample_with_noise(x, tokens, start, sources)
        tokens = torch.where(greedy, x.argmax(-1), tokens)
        self._advance(tokens, rows, idx)
        stopped = self.stop_mask[rows].gather(1, tokens).any(-1)
        return tokens, stopped

    def _native_applies(self, logits: torch.Tensor, rows: slice) -> bool:
        """True when `_sample_native` computes this step: the sparse top-p + top-k path on CPU, k small enough."""
        lib = native()
        return (lib is not None and logits.device.type == "cpu" and logits.dtype == torch.float32
                and self._sparse(rows) and int(self.k_eff[rows].max()) <= lib.lib.FAST_TTS_SAMPLE_MAX_K)

    def _sample_native(self, logits: torch.Tensor, rows: slice, idx: torch.Tensor) -> torch.Tensor:
        """The sparse path's processing and draw in one native call (`kernels/sample.c`); same tokens as the torch
        path up to float rounding."""
        lib = native()
        assert lib is not None
        n, c, v = logits.shape
        start = rows.start or 0
        sources = self._noise_sources(start, n) if self._flags[4] else {}
        noise = None
        use_noise = torch.zeros(n, dtype=torch.uint8)
        if sources:
            noise = torch.zeros(n, c, v)
            for row, row_noise in zip(sources, self._step_noise(start, sources)):
                noise[row] = row_noise  # row by row: a list index opens an OpenMP region whose idle workers then spin
                use_noise[row] = 1
        blocked = self._blocked(rows).to(torch.uint8) if self._flags[3] else None
        keep = {
            "logits": logits.contiguous(),
            "temperature": self.temperature[rows].contiguous(),
            "greedy": self.greedy[rows].to(torch.uint8),
            "penalty": self.penalty[rows].contiguous(),
            "counts": self.counts[rows].contiguous() if self._flags[0] else None,
            "top_p": self.top_p[rows].contiguous(),
            "k_eff": self.k_eff[rows].contiguous(),
            "min_keep": self.min_keep[rows].contiguous(),
            "blocked": blocked,
            "use_noise": use_noise,
            "noise": noise,
            "uniforms": self.uniforms[idx, self.cursor[rows]].contiguous(),
            "scratch": torch.empty(v),
            "tokens": torch.empty(n, c, dtype=torch.long),
        }
        args = lib.ffi.new("fast_tts_sample_args *")
        for name, tensor in keep.items():
            setattr(args, name, lib.ptr(None if tensor is None else tensor.data_ptr()))
        args.rows, args.books, args.vocab = n, c, v
        lib.lib.fast_tts_sample_top_k(args)
        return keep["tokens"]

    def _noise_sources(self, start: int, n: int) -> dict[int, NoiseSource]:
        """The noise sources of rows start..start+n-1 that bring one, by position 0..n-1."""
        sources = {}
        for i in range(n):
            p = self._params[start + i]
            if p is not None and p.noise is not None:
                sources[i] = p.noise
        return sources

    def _sample_with_noise(self, x: torch.Tensor, tokens: torch.Tensor, start: int,
                           sources: dict[int, NoiseSource]) -> None:
        """Set the tokens of the rows with a noise source to argmax(softmax(x) / noise), torch.multinomial's draw."""
        at = torch.tensor(list(sources), device=x.device)
        probs = x[at].softmax(-1)
        noise = torch.stack(self._step_noise(start, sources))
        tokens[at] = (probs / noise.to(probs.device, probs.dtype)).argmax(-1)

    def _step_noise(self, start: int, sources: dict[int, NoiseSource]) -> list[torch.Tensor]:
        """This step's noise (C, V) of each row with a source, in `sources` order (each source asked once per
        step)."""
        return [source.noise(self._steps_py[start + i]) for i, source in sources.items()]

    def _advance(self, tokens: torch.Tensor, rows: slice, idx: torch.Tensor) -> None:
        steps = self.steps[rows]
        if self._flags[0]:
            counts = self.counts[rows]
            counts.scatter_add_(-1, tokens[..., None], torch.ones_like(tokens[..., None], dtype=counts.dtype))
            old = steps - self.window[rows]  # the token that just left the window
            has_old = (old >= 0)[:, None, None]
            old_tok = self.history[idx, :, old.clamp(min=0) % self.max_steps][..., None]
            counts.scatter_add_(-1, old_tok, -has_old.to(counts.dtype).expand_as(old_tok))
        self.history[idx, :, steps % self.max_steps] = tokens
        self.steps[rows] += 1
        self.cursor[rows] += 1
        start = rows.start or 0
        for r in range(start, start + tokens.shape[0]):
            self._steps_py[r] += 1
            self._cursor_py[r] += 1
            if self._cursor_py[r] == _UNIFORM_BLOCK:
                self._refill(r)
