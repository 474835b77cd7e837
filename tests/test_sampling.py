"""SamplingParams validation and the batched processors against a plain per-row reference."""

from __future__ import annotations

import math

import pytest
import torch

from fast_tts.errors import InvalidInputError
from fast_tts.sampling import BatchSampler, SamplingParams, sample_inverse_cdf


@pytest.mark.parametrize(
    "field,value",
    [
        ("temperature", -0.1),
        ("temperature", float("nan")),
        ("temperature", ()),
        ("temperature", (0.3, -1.0)),
        ("top_k", 0),
        ("top_k", 2.5),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("min_tokens_to_keep", 0),
        ("repetition_penalty", 0.0),
        ("repetition_penalty", float("inf")),
        ("repetition_window", 0),
        ("max_new_tokens", -1),
        ("min_new_tokens", -1),
        ("stop_token_ids", (3, -2)),
        ("seed", -5),
        ("seed", 1.5),
        ("return_hidden", "yes"),
    ],
)
def test_invalid_values_name_the_field(field: str, value: object) -> None:
    with pytest.raises(InvalidInputError) as err:
        SamplingParams(**{field: value})
    assert err.value.field == field


def test_min_new_above_max_new_is_rejected() -> None:
    with pytest.raises(InvalidInputError) as err:
        SamplingParams(min_new_tokens=5, max_new_tokens=4)
    assert err.value.field == "min_new_tokens"


def test_model_checks() -> None:
    SamplingParams(temperature=(0.1, 0.2, 0.3, 0.4)).check_model(4, 626)
    with pytest.raises(InvalidInputError) as err:
        SamplingParams(temperature=(0.1, 0.2)).check_model(4, 626)
    assert err.value.field == "temperature"
    with pytest.raises(InvalidInputError) as err:
        SamplingParams(stop_token_ids=[626]).check_model(4, 626)
    assert err.value.field == "stop_token_ids"


def _reference_process(logits: torch.Tensor, p: SamplingParams, generated: list[list[int]], step: int) -> torch.Tensor:
    """Per (row, codebook) loop written the obvious way (Hugging Face warper semantics)."""
    num_codebooks, vocab = logits.shape
    temps = p.temperatures() * (num_codebooks if len(p.temperatures()) == 1 else 1)
    out = torch.empty_like(logits)
    for c in range(num_codebooks):
        s = logits[c].clone()
        if temps[c] > 0:
            s = s / temps[c]
        if p.repetition_penalty != 1.0:
            hist = [g[c] for g in generated]
            if p.repetition_window is not None:
                hist = hist[len(hist) - p.repetition_window :] if len(hist) > p.repetition_window else hist
            for tok in set(hist):
                alpha = p.repetition_penalty ** hist.count(tok)
                s[tok] = s[tok] * alpha if s[tok] < 0 else s[tok] / alpha
        if p.top_p is not None and p.top_p < 1.0:
            vals, order = torch.sort(s)
            cum = torch.cumsum(torch.softmax(vals, -1), -1)
            remove = cum <= 1 - p.top_p
            remove[-p.min_tokens_to_keep :] = False
            s[order[remove]] = -math.inf
        if p.top_k is not None:
            k = min(max(p.top_k, p.min_tokens_to_keep), vocab)
            kth = torch.topk(s, k).values[-1]
            s[s < kth] = -math.inf
        if step < p.min_new_tokens:
            for t in p.stop_token_ids:
                s[t] = -math.inf
        out[c] = s
    return out


ROW_PARAMS = [
    SamplingParams(
        temperature=0.7,
        top_k=20,
        top_p=0.7,
        min_tokens_to_keep=3,
        repetition_penalty=1.05,
        repetition_window=4,
        stop_token_ids=[5],
        min_new_tokens=3,
    ),
    SamplingParams(temperature=(0.3, 1.0, 2.0), repetition_penalty=1.3),
    SamplingParams(temperature=1.0, top_k=2, min_tokens_to_keep=3),
    SamplingParams(temperature=1.2, top_p=0.2),
    SamplingParams(),
]


def test_processors_match_reference_over_several_steps() -> None:
    torch.manual_seed(0)
    rows, codebooks, vocab, steps = len(ROW_PARAMS), 3, 40, 9
    sampler = BatchSampler(rows + 1, codebooks, vocab, max_steps=64)
    for r, p in enumerate(ROW_PARAMS):
        sampler.set_row(r + 1, p)  # row 0 unused: checks the row offset handling
    generated: list[list[list[int]]] = [[] for _ in ROW_PARAMS]
    for step in range(steps):
        logits = torch.randn(rows, codebooks, vocab) * 3
        got = sampler.process(logits, slice(1, rows + 1))
        for r, p in enumerate(ROW_PARAMS):
            want = _reference_process(logits[r], p, generated[r], step)
            assert torch.equal(torch.isinf(got[r]), torch.isinf(want)), (step, r)
            finite = torch.isfinite(want)
            torch.testing.assert_close(got[r][finite], want[finite], rtol=1e-5, atol=1e-5)
        tokens, _ = sampler.sample(logits, slice(1, rows + 1))
        for r in range(rows):
            generated[r].append(tokens[r].tolist())


def test_inverse_cdf_follows_the_distribution_and_skips_zero_probability() -> None:
    logits = torch.tensor([[[0.0, -math.inf, 1.0, 2.0, -math.inf]]]).expand(20000, 1, 5)
    u = torch.rand(20000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    tokens = sample_inverse_cdf(logits, u)[:, 0]
    freq = torch.bincount(tokens, minlength=5).double() / len(tokens)
    probs = logits[0, 0].softmax(-1).double()
    assert freq[1] == 0 and freq[4] == 0
    assert torch.allclose(freq, probs, atol=0.015)
    edge = sample_inverse_cdf(logits[:2], torch.tensor([[0.0], [1.0 - 2**-24]], dtype=torch.float64))
    assert edge.tolist() == [[0], [3]]


def test_rows_do_not_depend_on_neighbours() -> None:
    torch.manual_seed(1)
    vocab, codebooks = 30, 2
    target = SamplingParams(temperature=0.9, top_p=0.9, repetition_penalty=1.2, repetition_window=3, seed=42)
    alone = BatchSampler(1, codebooks, vocab, 32)
    alone.set_row(0, target)
    busy = BatchSampler(4, codebooks, vocab, 32)
    busy.set_row(0, SamplingParams(temperature=0.0, top_k=3, seed=1))
    busy.set_row(1, SamplingParams(temperature=2.0, seed=2))
    busy.set_row(2, target)
    busy.set_row(3, SamplingParams(top_k=1, min_tokens_to_keep=1, stop_token_ids=[0], min_new_tokens=5, seed=3))
    for _ in range(100):  # crosses the uniform-buffer refill
        logits = torch.randn(1, codebooks, vocab)
        a, _ = alone.sample(logits, slice(0, 1))
        noise = torch.randn(4, codebooks, vocab)
        noise[2] = logits[0]
        b, _ = busy.sample(noise, slice(0, 4))
        assert torch.equal(a[0], b[2])


def test_same_seed_same_tokens_and_move_row_keeps_state() -> None:
    torch.manual_seed(2)
    p = SamplingParams(temperature=1.0, repetition_penalty=1.5, repetition_window=2, seed=7)
    logits = [torch.randn(1, 2, 16) for _ in range(80)]
    first = BatchSampler(3, 2, 16, 128)
    first.set_row(0, p)
    second = BatchSampler(3, 2, 16, 128)
    second.set_row(2, p)
    for i, x in enumerate(logits):
        if i == 40:
            second.move_row(2, 1, steps=40)
        row = 2 if i < 40 else 1
        a, _ = first.sample(x, slice(0, 1))
        b, _ = second.sample(x, slice(row, row + 1))
        assert torch.equal(a, b)


def test_repetition_window_counts() -> None:
    vocab = 8
    sampler = BatchSampler(1, 1, vocab, 32)
    sampler.set_row(0, SamplingParams(temperature=0.0, repetition_penalty=1.1, repetition_window=3))
    sequence = [1, 2, 1, 1, 3, 4, 1]
    for i, tok in enumerate(sequence):
        logits = torch.full((1, 1, vocab), -50.0)
        logits[0, 0, tok] = 50.0
        tokens, _ = sampler.sample(logits, slice(0, 1))
        assert tokens.item() == tok
        window = sequence[max(0, i - 2) : i + 1]
        want = torch.bincount(torch.tensor(window), minlength=vocab).float()
        assert torch.equal(sampler.counts[0, 0], want)


def test_per_codebook_temperature_and_greedy() -> None:
    vocab = 12
    sampler = BatchSampler(64, 2, vocab, 16)
    for r in range(64):
        sampler.set_row(r, SamplingParams(temperature=(0.0, 1.0), seed=r))
    logits = torch.randn(1, 2, vocab, generator=torch.Generator().manual_seed(3)).expand(64, 2, vocab)
    tokens, _ = sampler.sample(logits, slice(0, 64))
    assert (tokens[:, 0] == logits[0, 0].argmax()).all()
    assert tokens[:, 1].unique().numel() > 3


def test_all_greedy_rows_take_the_argmax_of_the_fully_processed_logits() -> None:
    """The all-greedy fast path skips temperature/top-p/top-k but must keep what can move the argmax (penalty)."""
    vocab, steps = 40, 12
    params = SamplingParams(temperature=0.0, top_k=5, top_p=0.5, repetition_penalty=3.0, repetition_window=4)
    fast, full = BatchSampler(3, 2, vocab, 32), BatchSampler(3, 2, vocab, 32)
    for r in range(3):
        fast.set_row(r, params)
        full.set_row(r, params)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        logits = torch.randn(3, 2, vocab, generator=g) * 0.3 + torch.linspace(0, 1, vocab)  # favours repeats
        want = full.process(logits, slice(0, 3)).argmax(-1)
        full._advance(want, slice(0, 3), torch.arange(3))
        tokens, _ = fast.sample(logits, slice(0, 3))
        assert torch.equal(tokens, want)
    assert torch.unique(want).numel() > 1  # the penalty did move the argmax


def test_stop_on_any_codebook_and_min_new_tokens() -> None:
    vocab = 10
    sampler = BatchSampler(2, 2, vocab, 16)
    sampler.set_row(0, SamplingParams(temperature=0.0, stop_token_ids=[9]))
    sampler.set_row(1, SamplingParams(temperature=0.0, stop_token_ids=[9], min_new_tokens=2))
    logits = torch.zeros(2, 2, vocab)
    logits[:, 1, 9] = 5.0  # codebook 1 prefers the stop id
    logits[:, :, 4] = 1.0
    for step in range(3):
        tokens, stopped = sampler.sample(logits, slice(0, 2))
        assert stopped[0]
        assert bool(stopped[1]) == (step >= 2)
        assert tokens[1, 1].item() == (9 if step >= 2 else 4)


def test_noise_source_replays_a_batched_multinomial() -> None:
    """Rows with a noise source draw what one torch.multinomial over the whole batch draws from one generator."""
    vocab, codebooks = 50, 4
    draws = torch.Generator().manual_seed(11)
    blocks: list[torch.Tensor] = []

    class Replay:
        def __init__(self, position: int) -> None:
            self.position = position

        def noise(self, step: int) -> torch.Tensor:
            while len(blocks) <= step:
                blocks.append(torch.empty(2 * codebooks, vocab).exponential_(generator=draws))
            return blocks[step].view(2, codebooks, vocab)[self.position]

    torch.manual_seed(4)
    sampler = BatchSampler(3, codebooks, vocab, 32)
    sampler.set_row(0, SamplingParams(seed=1))
    for row in (1, 2):
        sampler.set_row(row, SamplingParams(temperature=0.7, top_k=5, min_tokens_to_keep=3, noise=Replay(row - 1)))
    gen = torch.Generator().manual_seed(11)
    for _ in range(5):
        logits = torch.randn(3, codebooks, vocab)
        tokens, _ = sampler.sample(logits, slice(0, 3))
        scores = logits[1:] / 0.7
        kth = torch.topk(scores, 5).values[..., -1:]
        scores = scores.masked_fill(scores < kth, -math.inf).reshape(2 * codebooks, vocab)
        want = torch.multinomial(torch.softmax(scores, -1), 1, generator=gen)[:, 0].view(2, codebooks)
        assert torch.equal(tokens[1:], want)
    with pytest.raises(InvalidInputError) as err:
        SamplingParams(noise=object())  # type: ignore[arg-type]
    assert err.value.field == "noise"


@pytest.mark.parametrize("seed", range(6))
def test_sparse_top_p_top_k_keeps_the_same_tokens_as_sorting(seed: int) -> None:
    from fast_tts.sampling import apply_top_k, apply_top_p, apply_top_p_top_k_sparse

    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 2, 6000, generator=gen) * (1 + seed)  # flat to peaked distributions
    top_p = torch.tensor([0.95, 0.5, 0.999])
    min_keep = torch.tensor([1, 3, 1])
    k_eff = torch.tensor([50, 7, 400])
    dense = apply_top_k(apply_top_p(logits, top_p, min_keep), k_eff)
    sparse = apply_top_p_top_k_sparse(logits, top_p, min_keep, k_eff)
    assert torch.equal(torch.isinf(dense), torch.isinf(sparse))
    kept = ~torch.isinf(dense)
    assert torch.equal(dense[kept], sparse[kept])


def test_large_vocab_sampler_uses_the_sparse_path_with_the_same_draws() -> None:
    vocab = 6000
    params = SamplingParams(temperature=0.9, top_k=50, top_p=0.95, seed=11, max_new_tokens=8)
    logits = torch.randn(1, 1, vocab, generator=torch.Generator().manual_seed(2)) * 3
    draws = []
    for sparse_from in (vocab, vocab + 1):  # at the threshold: sparse; above it: sorting
        import fast_tts.sampling as sampling

        old, sampling.SPARSE_VOCAB = sampling.SPARSE_VOCAB, sparse_from
        try:
            sampler = BatchSampler(1, 1, vocab, 16)
            sampler.set_row(0, params)
            draws.append([int(sampler.sample(logits, slice(0, 1))[0]) for _ in range(6)])
        finally:
            sampling.SPARSE_VOCAB = old
    assert draws[0] == draws[1]


class _FixedNoise:
    """A noise source with its own seeded Exp(1) draw per step."""

    def __init__(self, seed: int, codebooks: int, vocab: int) -> None:
        self.seed, self.shape = seed, (codebooks, vocab)

    def noise(self, step: int) -> torch.Tensor:
        return torch.empty(self.shape).exponential_(generator=torch.Generator().manual_seed(self.seed * 1000 + step))


@pytest.mark.skipif(__import__("fast_tts.kernels", fromlist=["native"]).native() is None,
                    reason="the native kernels do not run here")
@pytest.mark.parametrize("seed", range(4))
def test_native_sampling_draws_the_torch_paths_tokens(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """kernels/sample.c computes the sparse path's step (temperature, penalty, top-p + top-k, stop ids before
    min_new, then greedy codebooks, noise rows and inverse-CDF rows) with the torch path's tokens."""
    import fast_tts.sampling as sampling

    codebooks, vocab, steps = 4, 626, 24
    rows = [
        SamplingParams(temperature=0.3, top_p=0.7, top_k=20, min_tokens_to_keep=3, repetition_penalty=1.05,
                       repetition_window=16, min_new_tokens=6, stop_token_ids=[625, 3]),
        SamplingParams(temperature=0.8, top_p=0.9, top_k=40, seed=seed, stop_token_ids=[625]),
        SamplingParams(temperature=[0.5, 0.0, 1.0, 0.0], top_p=0.5, top_k=5, seed=seed + 1, repetition_penalty=1.5),
        SamplingParams(temperature=1.3, top_p=0.99, top_k=256, min_tokens_to_keep=2, repetition_penalty=0.8),
    ]
    samplers = []
    for _ in range(2):
        sampler = BatchSampler(len(rows), codebooks, vocab, 64)
        for i, params in enumerate(rows):
            noise = _FixedNoise(seed * 10 + i, codebooks, vocab) if i in (0, 3) else None
            sampler.set_row(i, SamplingParams(**{**params.__dict__, "noise": noise}))
        samplers.append(sampler)
    native_sampler, torch_sampler = samplers
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        logits = torch.randn(len(rows), codebooks, vocab, generator=gen) * (1 + seed) - 2  # mostly negative
        logits[0, :, 625] += 8  # row 0's stop id leads: blocked until its min_new_tokens
        assert native_sampler._native_applies(logits, slice(0, len(rows)))
        got = native_sampler.sample(logits, slice(0, len(rows)))
        with monkeypatch.context() as patch:
            patch.setattr(sampling, "native", lambda: None)
            assert not torch_sampler._native_applies(logits, slice(0, len(rows)))
            want = torch_sampler.sample(logits, slice(0, len(rows)))
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
