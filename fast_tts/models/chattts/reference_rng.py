"""Replays of the reference ChatTTS's random draws, as sampler `NoiseSource`s, so `fast_tts.Chat` samples the same
tokens as the reference for the same seed.

The reference samples each step of a batch with one `torch.multinomial(probs, 1)` over (B * C, V) probabilities
(C codebooks, or 1 when refining text). That call draws B * C * V Exp(1) values from its generator and takes
argmax(probs / noise) per row, so row b sees values [b*C*V, (b+1)*C*V) of the draw. With `manual_seed` the reference
re-seeds its generator before every step: every step of row b sees the same noise. Without, it draws from the
global torch generator, one whole-batch draw per step (finished rows included) until every row has finished, one
batch after the other.
"""

from __future__ import annotations

import threading

import torch


class SeededDraws:
    """Row `position` of a batch sampled with `manual_seed`: the same noise (C, V) at every step."""

    def __init__(self, seed: int, position: int, codebooks: int, vocab: int) -> None:
        self._args = (seed, position, codebooks, vocab)
        self._noise: torch.Tensor | None = None

    def noise(self, step: int) -> torch.Tensor:
        if self._noise is None:
            seed, position, c, v = self._args
            draw = torch.empty((position + 1) * c, v).exponential_(generator=torch.Generator().manual_seed(seed))
            self._noise = draw[position * c :].clone()  # draws of any length share their prefix
        return self._noise

    def release(self) -> None:
        """Nothing to free (kept for symmetry with `BatchDraws` rows)."""


class BatchDraws:
    """One batch's whole-batch draws from `generator`, step by step, each row taking its own slice.

    A row may run ahead of or behind the others (the backend admits rows one by one); each row keeps the slices it
    has not taken yet, and a released (finished) row stops receiving them.
    """

    def __init__(self, generator: torch.Generator, rows: int, codebooks: int, vocab: int) -> None:
        self._gen, self._shape = generator, (rows, codebooks, vocab)
        self._drawn = 0
        self._pending: list[dict[int, torch.Tensor] | None] = [{} for _ in range(rows)]
        self._lock = threading.Lock()

    def row(self, position: int) -> _RowDraws:
        """The noise source of row `position`."""
        return _RowDraws(self, position)

    def _take(self, position: int, step: int) -> torch.Tensor:
        with self._lock:
            while self._drawn <= step:
                rows, c, v = self._shape
                block = torch.empty(rows * c, v).exponential_(generator=self._gen).view(rows, c, v)
                for r, pending in enumerate(self._pending):
                    if pending is not None:
                        pending[self._drawn] = block[r].clone()
                self._drawn += 1
            pending = self._pending[position]
            if pending is None or step not in pending:
                raise RuntimeError(f"noise of step {step} of row {position} was already taken or released")
            return pending.pop(step)

    def _release(self, position: int) -> None:
        with self._lock:
            self._pending[position] = None


class _RowDraws:
    def __init__(self, batch: BatchDraws, position: int) -> None:
        self._batch, self._position = batch, position

    def noise(self, step: int) -> torch.Tensor:
        return self._batch._take(self._position, step)

    def release(self) -> None:
        """The row has finished: drop what it has not taken and stop keeping its slices."""
        self._batch._release(self._position)


class GlobalStream:
    """The global torch generator, cloned when a reference-style call starts and written back when it ends.

    The backend thread draws from the clone in the reference's order while nothing touches the global generator;
    afterwards the global generator stands where the reference would have left it.
    """

    def __init__(self) -> None:
        self.generator = torch.Generator()
        self.generator.set_state(torch.get_rng_state())

    def batch(self, rows: int, codebooks: int, vocab: int) -> BatchDraws:
        """Draws for the next batch (call only once the previous batch has finished drawing)."""
        return BatchDraws(self.generator, rows, codebooks, vocab)

    def close(self) -> None:
        torch.set_rng_state(self.generator.get_state())


def batch_noise(
    stream: GlobalStream, seed: int | None, rows: int, codebooks: int, vocab: int
) -> list[SeededDraws | _RowDraws]:
    """One noise source per row of a reference batch: re-seeded with `seed`, else from the global stream."""
    if seed is not None:
        return [SeededDraws(seed, b, codebooks, vocab) for b in range(rows)]
    batch = stream.batch(rows, codebooks, vocab)
    return [batch.row(b) for b in range(rows)]
