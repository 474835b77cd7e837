"""Windowed streaming decode and segment joins, checked against whole-signal references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fast_tts.audio import Crossfader, crossfade_join
from fast_tts.engine.streaming import StreamPlan, stream_windows

HOP = 8


def _decode_local(window: torch.Tensor) -> np.ndarray:
    """A 'vocoder' with no context: each frame's value repeated HOP times (so windows must tile exactly)."""
    return np.repeat(window[:, 0].numpy().astype(np.float32), HOP)


def _frames(values: np.ndarray, block: int):
    for i in range(0, len(values), block):
        yield torch.tensor(values[i : i + block, None])


@pytest.mark.parametrize("total,block", [(1, 1), (23, 5), (100, 7), (301, 50)])
def test_windows_tile_the_signal_exactly(total: int, block: int) -> None:
    values = np.sin(np.arange(total) * 0.3).astype(np.float32)
    plan = StreamPlan(first=4, chunk=16, left=3, right=2, fade=HOP)
    chunks = list(stream_windows(_frames(values, block), _decode_local, HOP, lambda n: HOP * n, 100, plan))
    out = np.concatenate(chunks)
    full = np.repeat(values, HOP)
    assert len(out) == len(full)
    # Both sides of each seam are the same signal, so the crossfade reproduces it.
    np.testing.assert_allclose(out, full, atol=1e-6)


def test_first_chunk_arrives_before_the_end() -> None:
    values = np.ones(200, dtype=np.float32)
    plan = StreamPlan(first=10, chunk=50, left=4, right=4, fade=HOP)
    seen = 0

    def frames():
        nonlocal seen
        for i in range(200):
            seen = i + 1
            yield torch.tensor(values[i : i + 1, None])

    gen = stream_windows(frames(), _decode_local, HOP, lambda n: HOP * n, 100, plan)
    first = next(gen)
    assert first.size and seen <= 10 + 4
    gen.close()


def test_fade_must_fit_in_right_context() -> None:
    with pytest.raises(ValueError):
        next(stream_windows(_frames(np.ones(5, np.float32), 5), _decode_local, HOP, lambda n: HOP * n, 100,
                            StreamPlan(right=1, fade=4 * HOP)))


@pytest.mark.parametrize("sizes", [[5, 300], [100, 100, 100], [50, 2, 7, 300]])
def test_segment_joins_match_the_hanning_crossfade(sizes: list[int]) -> None:
    """Segments arriving in chunks of any size join exactly as whole segments joined by the reference's rule."""
    fade = 16
    rng = np.random.default_rng(0)
    segments = [rng.standard_normal(200).astype(np.float32) for _ in range(3)]
    joiner = Crossfader(1000, fade / 1000, "hanning")
    out = []
    for seg in segments:
        pos = 0
        for size in sizes:
            out.append(joiner.push(seg[pos : pos + size]))
            pos += size
        out.append(joiner.push(seg[pos:]))
        out.append(joiner.end_segment())
    out.append(joiner.flush())
    got = np.concatenate(out)
    window = np.hanning(2 * fade).astype(np.float32)
    expected = segments[0]
    for seg in segments[1:]:
        mixed = expected[-fade:] * window[fade:] + seg[:fade] * window[:fade]
        expected = np.concatenate([expected[:-fade], mixed, seg[fade:]])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert len(got) == len(crossfade_join(segments, 1000, fade / 1000))
