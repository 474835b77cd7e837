"""The native kernels: they load where the CPU can run them, and match float products of the same inputs."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from fast_tts import kernels
from fast_tts.kernels.linear import (
    QUANTIZED,
    PackedLinear,
    TiledBF16Linear,
    TiledF32Linear,
    TiledInt8Linear,
    _TiledLinear,
    native_available,
    pack_linears,
    prepack_linears,
    quantize_groups,
)
from fast_tts.models.transformer import DecoderConfig, Transformer


def _cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux lists them (empty elsewhere)."""
    if not sys.platform.startswith("linux"):
        return set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


X86_LINUX = sys.platform.startswith("linux") and platform.machine() == "x86_64"
CAN_RUN = X86_LINUX and {"avx512f", "avx512bw", "avx512vl", "avx512_bf16"} <= _cpu_flags()
needs_kernel = pytest.mark.skipif(not CAN_RUN, reason="this CPU lacks AVX-512 BF16 (or is not x86-64 Linux)")


def test_the_installed_kernels_load_wherever_the_cpu_runs_them() -> None:
    """The library is built at install time on x86-64 Linux and ships in the package; it loads on a CPU with the
    features, and reports them as /proc/cpuinfo does."""
    lib = kernels.native()
    assert (lib is not None and lib.bf16) == CAN_RUN
    if X86_LINUX and "avx512f" in _cpu_flags():
        assert lib is not None and lib.float32
    if lib is not None:
        assert lib.bf16 == ("avx512_bf16" in _cpu_flags())
        assert lib.amx == (lib.bf16 and {"amx_tile", "amx_bf16"} <= _cpu_flags())
        header = kernels.HEADER.read_text()
        assert f"#define FAST_TTS_TILE {lib.lib.FAST_TTS_TILE} " in header  # cffi read the shipped header


@pytest.fixture(params=["vector", "amx"])
def amx_switch(request: pytest.FixtureRequest):
    """Run a test with the products on the vector kernels, then with AMX tiles where the CPU has them."""
    lib = kernels.native()
    if request.param == "amx" and not (lib.amx or lib.amx_int8):
        pytest.skip("this CPU (or its OS) gives no AMX tiles")
    lib.lib.fast_tts_use_amx(int(request.param == "amx"))
    yield request.param
    lib.lib.fast_tts_use_amx(1)  # as the library is loaded


def _reference(x: torch.Tensor, lin: nn.Linear) -> torch.Tensor:
    """float32 product of the same bf16 operands, bias added in float32."""
    out = x.float() @ lin.weight.float().T
    return out if lin.bias is None else out + lin.bias.float()


@needs_kernel
@pytest.mark.usefixtures("amx_switch")
@pytest.mark.parametrize("rows", [1, 2, 7, 8, 9, 17, 64])
@pytest.mark.parametrize(
    ("out_features", "in_features", "bias"), [(32, 2, False), (96, 64, True), (2304, 768, True), (45, 16, True)]
)
def test_tiled_linear_matches_float_product(rows: int, out_features: int, in_features: int, bias: bool) -> None:
    torch.manual_seed(rows * 7 + in_features)
    lin = nn.Linear(in_features, out_features, bias=bias).to(torch.bfloat16)
    x = torch.randn(rows, in_features).to(torch.bfloat16)
    with torch.no_grad():
        got = TiledBF16Linear(lin)(x)
    assert got.dtype == torch.bfloat16 and got.shape == (rows, out_features)
    want = _reference(x, lin)
    # only the final rounding to bf16 (and float32 summation order) may differ
    torch.testing.assert_close(got.float(), want, rtol=2**-8, atol=1e-5)


@needs_kernel
@pytest.mark.parametrize("rows", [1, 3, 8, 9, 64])
@pytest.mark.parametrize(("out_features", "in_features", "bias"), [(32, 2, False), (45, 16, True), (2304, 768, True)])
def test_tiled_float32_linear_matches_a_float64_product(rows: int, out_features: int, in_features: int,
                                                        bias: bool) -> None:
    torch.manual_seed(rows * 5 + in_features)
    lin = nn.Linear(in_features, out_features, bias=bias)
    x = torch.randn(rows, in_features)
    with torch.no_grad():
        got = TiledF32Linear(lin)(x[None])[0]  # a 3-D input too
        want = x.double() @ lin.weight.double().T + (0 if lin.bias is None else lin.bias.double())
    assert got.dtype == torch.float32 and got.shape == (rows, out_features)
    # float32 sums in another order than a float64 product: a few float32 ulps of the magnitudes summed
    scale = x.abs().double() @ lin.weight.abs().double().T + 1
    assert bool(((got.double() - want).abs() <= 1e-5 * scale).all())


@needs_kernel
@pytest.mark.usefixtures("amx_switch")
def test_tiled_linear_takes_batched_and_strided_inputs() -> None:
    lin = nn.Linear(64, 96).to(torch.bfloat16)
    layer = TiledBF16Linear(lin)
    wide = torch.randn(3, 5, 128).to(torch.bfloat16)
    x = wide[..., ::2]  # not contiguous
    with torch.no_grad():
        got = layer(x)
        empty = layer(torch.empty(0, 64, dtype=torch.bfloat16))
    assert got.shape == (3, 5, 96) and empty.shape == (0, 96)
    torch.testing.assert_close(got.float(), _reference(x, lin), rtol=2**-8, atol=1e-5)


@needs_kernel
def test_pack_linears_uses_the_kernel_where_the_layout_fits() -> None:
    model = Transformer(DecoderConfig(64, 128, 2, 4, 2)).to(torch.bfloat16)
    model.extra = nn.Linear(64, 80).to(torch.bfloat16)  # 80 outputs: the last tile is padded
    model.odd = nn.Linear(63, 32).to(torch.bfloat16)  # an odd input width does not fit column pairs
    x, x_odd = torch.randn(2, 3, 64).to(torch.bfloat16), torch.randn(5, 63).to(torch.bfloat16)
    expected, expected_odd = _reference(x, model.extra), model.odd(x_odd).float()
    model.float_head = nn.Linear(64, 40)  # float32 weights take the float32 kernel
    assert pack_linears(model) == 2 * 4 + 3
    assert isinstance(model.extra, TiledBF16Linear) and isinstance(model.odd, PackedLinear)
    assert isinstance(model.float_head, TiledF32Linear)
    with torch.no_grad():
        torch.testing.assert_close(model.extra(x).float(), expected, rtol=2**-8, atol=1e-5)
        torch.testing.assert_close(model.odd(x_odd).float(), expected_odd, rtol=2e-2, atol=2e-2)


def test_prepack_linears_swaps_float32_layers_for_onednn_packed_ones() -> None:
    """Audio decoders' float32 linears become `PackedLinear` with `F.linear`'s results; other dtypes stay."""
    torch.manual_seed(5)
    mlp = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64))
    model = nn.ModuleDict({"mlp": mlp, "bf16": nn.Linear(64, 32).to(torch.bfloat16)})
    x = torch.randn(2, 300, 64)
    with torch.no_grad():
        want = mlp(x)
        assert prepack_linears(model) == 2
        assert isinstance(mlp[0], PackedLinear) and isinstance(mlp[2], PackedLinear)
        assert type(model["bf16"]) is nn.Linear
        torch.testing.assert_close(mlp(x), want, rtol=1e-5, atol=1e-5)


def test_switch_off_and_nothing_built_at_run_time(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """FAST_TTS_NATIVE=0 keeps the torch path; loading builds nothing and writes nothing (the install built it)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    kernels.native.cache_clear()
    native_available.cache_clear()
    try:
        monkeypatch.setenv("FAST_TTS_NATIVE", "0")
        assert kernels.native() is None
        assert not native_available(torch.bfloat16) and not native_available(torch.float32)
        monkeypatch.setenv("FAST_TTS_NATIVE", "1")
        kernels.native.cache_clear()
        native_available.cache_clear()
        if CAN_RUN:
            assert kernels.native() is not None
        assert not list(tmp_path.rglob("*"))
    finally:
        kernels.native.cache_clear()
        native_available.cache_clear()


def test_a_missing_library_falls_back_to_torch(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    """An install without the built library (another architecture, no compiler at install time) uses torch, with
    one log line and no exception."""
    monkeypatch.setitem(sys.modules, "fast_tts.kernels._native", None)  # import of it now fails
    monkeypatch.delattr(kernels, "_native", raising=False)
    kernels.native.cache_clear()
    native_available.cache_clear()
    try:
        with caplog.at_level("INFO", logger="fast_tts.kernels"):
            assert kernels.native() is None
        assert [r.message for r in caplog.records if "native kernels" in r.message]
        assert not native_available(torch.bfloat16)
        model = Transformer(DecoderConfig(64, 128, 1, 4, 2)).to(torch.bfloat16)
        pack_linears(model)  # oneDNN's layout instead
        assert isinstance(model.layers[0].mlp.w13, PackedLinear)
        assert model.native_decoder(model.new_cache(1, 4)) is None
    finally:
        kernels.native.cache_clear()
        native_available.cache_clear()


class _TinyLM(nn.Module):
    """A one-codebook adapter (embedding in, head out) around a small random decoder."""

    num_codebooks = 1

    def __init__(self) -> None:
        super().__init__()
        self.transformer = _random_decoder(DecoderConfig(64, 128, 2, 4, 2), seed=3).float()
        self.emb = nn.Embedding(50, 64)
        self.head = nn.Linear(64, 50, bias=False)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.emb(tokens[..., 0])

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden)[:, None].float()


def _random_decoder(cfg: DecoderConfig, seed: int) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(cfg)
    for p in model.parameters():
        nn.init.normal_(p, std=0.05) if p.dim() > 1 else nn.init.uniform_(p, 0.5, 1.5)
    if cfg.qkv_bias:
        for layer in model.layers:
            nn.init.normal_(layer.self_attn.wqkv.bias, std=0.5)
    return model.to(torch.bfloat16)


def _native_and_torch_step(model: Transformer, dtype: torch.dtype):
    """One decode step of 3 rows of a 5-row cache at different lengths (stale keys beyond must be ignored), natively
    and through the torch code from the same cache: (native out, torch out, cache after native, cache after torch)."""
    pack_linears(model)
    hidden = model.config.hidden_size
    cache = model.new_cache(5, 32, dtype)
    batch, rows = 3, slice(1, 4)
    with torch.no_grad():
        model(torch.randn(batch, 9, hidden).to(dtype), torch.arange(9).repeat(batch, 1), cache, rows=rows)
        decoder = model.native_decoder(cache)
        assert decoder is not None
        x = torch.randn(batch, 1, hidden).to(dtype)
        positions = torch.tensor([[9], [4], [7]])
        saved = cache.k.clone(), cache.v.clone()
        want = model(x, positions, cache, rows=rows, kv_len=10)
        want_cache = cache.k.clone(), cache.v.clone()
        cache.k.copy_(saved[0])
        cache.v.copy_(saved[1])
        got = decoder(x, positions, rows)
    return got, want, cache, want_cache


@needs_kernel
@pytest.mark.usefixtures("amx_switch")
@pytest.mark.parametrize(
    "cfg",
    [DecoderConfig(128, 256, 2, 4, 4), DecoderConfig(128, 320, 2, 4, 2, qkv_bias=True)],  # Llama; Qwen2-like GQA
    ids=["llama", "qwen2-gqa"],
)
@pytest.mark.parametrize("threads", [1, 2, 3])  # 3: more threads than this machine's cores must still be right
def test_native_decode_step_equals_the_torch_step(cfg: DecoderConfig, threads: int, monkeypatch) -> None:
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)  # what the decoder asks for its thread count
    got, want, cache, want_cache = _native_and_torch_step(_random_decoder(cfg, seed=1), torch.bfloat16)
    # same rounding points as the torch code: equal up to float32 summation order, i.e. at most a bf16 step or two
    torch.testing.assert_close(got.float(), want.float(), rtol=2**-7, atol=2**-7)
    torch.testing.assert_close(cache.k.float(), want_cache[0].float(), rtol=2**-7, atol=2**-7)
    # layer 0's values are the same fused qkv product on both paths: bit-equal; later layers follow the residual
    # stream, so they agree to a bf16 step like the keys
    torch.testing.assert_close(cache.v[0], want_cache[1][0], rtol=0, atol=0)
    torch.testing.assert_close(cache.v.float(), want_cache[1].float(), rtol=2**-7, atol=2**-7)


@needs_kernel
@pytest.mark.parametrize(
    "cfg",
    [DecoderConfig(128, 256, 2, 4, 4), DecoderConfig(128, 320, 2, 4, 2, qkv_bias=True)],  # Llama; Qwen2-like GQA
    ids=["llama", "qwen2-gqa"],
)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_native_float32_decode_step_equals_the_torch_step(cfg: DecoderConfig, threads: int, monkeypatch) -> None:
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    got, want, cache, want_cache = _native_and_torch_step(_random_decoder(cfg, seed=1).float(), torch.float32)
    assert got.dtype == torch.float32
    # the same float32 formulas with sums in another order: a few float32 ulps
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cache.k, want_cache[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cache.v, want_cache[1], rtol=1e-5, atol=1e-5)


def _step_inputs(cfg: DecoderConfig, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1, cfg.hidden_size, generator=g).to(torch.bfloat16)
    return x, torch.randint(9, 20, (batch, 1), generator=g)


@needs_kernel
def test_native_steps_from_several_threads_at_once_match_steps_run_alone() -> None:
    """Backends decode on their own threads; concurrent steps (two models) share the pool one step at a time."""
    from concurrent.futures import ThreadPoolExecutor

    cfg = DecoderConfig(128, 256, 2, 4, 2)
    decoders, inputs = [], []
    for seed in range(4):
        model = _random_decoder(cfg, seed=seed)
        pack_linears(model)
        decoders.append(model.native_decoder(model.new_cache(3, 32, torch.bfloat16)))
        inputs.append(_step_inputs(cfg, 3, seed))

    def steps(i: int) -> list[torch.Tensor]:
        x, pos = inputs[i]
        return [decoders[i](x, pos + n, slice(0, 3)) for n in range(6)]

    alone = [steps(i) for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(steps, range(4)))
    for a, b in zip(alone, together):
        for x, y in zip(a, b):
            assert torch.equal(x, y)


@needs_kernel
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_can_still_run_native_steps(monkeypatch) -> None:
    """The pool's helper threads do not survive a fork; the child must start its own instead of waiting forever."""
    import multiprocessing

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # torch itself drops to 1 thread in a forked child

    cfg = DecoderConfig(128, 256, 2, 4, 2)
    model = _random_decoder(cfg, seed=7)
    pack_linears(model)
    decoder = model.native_decoder(model.new_cache(2, 32, torch.bfloat16))
    x, pos = _step_inputs(cfg, 2, 7)
    want = decoder(x, pos, slice(0, 2))  # the parent's helpers now exist
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    child = ctx.Process(target=lambda: results.put(decoder(x, pos, slice(0, 2)).float().numpy()), daemon=True)
    child.start()
    got = results.get(timeout=30)  # a child waiting for helpers it does not have would hang here
    child.join(timeout=10)
    assert child.exitcode == 0
    assert torch.equal(torch.from_numpy(got), want.float())


@needs_kernel
def test_native_decoder_refuses_what_it_cannot_run() -> None:
    cfg = DecoderConfig(128, 256, 1, 4, 4)
    plain = _random_decoder(cfg, seed=2)  # nn.Linear layers, not tiled
    assert plain.native_decoder(plain.new_cache(1, 8, torch.bfloat16)) is None
    tiled = _random_decoder(cfg, seed=2)
    pack_linears(tiled)
    assert tiled.native_decoder(tiled.new_cache(1, 8, torch.float32)) is None  # the cache is not in the weights' dtype
    decoder = tiled.native_decoder(tiled.new_cache(1, 8, torch.bfloat16))
    assert decoder is not None
    with pytest.raises(ValueError, match="past the KV cache"):
        decoder(torch.zeros(1, 1, 128, dtype=torch.bfloat16), torch.tensor([[8]]), slice(0, 1))


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_decoder_rotary_tables_are_the_models_own_numbers(dtype: torch.dtype) -> None:
    """The decoder looks its rotary tables up instead of computing them each step: every position's row must be
    exactly what the model's `rope` gives for that position alone (and for positions in a batch)."""
    model = _random_decoder(DecoderConfig(128, 256, 1, 4, 4, rope_theta=500000.0), seed=2).to(dtype)
    pack_linears(model)
    decoder = model.native_decoder(model.new_cache(2, 600, dtype))
    assert decoder is not None
    for p in (0, 1, 7, 300, 599):
        cos, sin = model.rope(torch.tensor([[p]]), dtype)
        assert torch.equal(decoder.cos[p], cos.reshape(-1)) and torch.equal(decoder.sin[p], sin.reshape(-1))
    positions = torch.tensor([[599], [3]])
    cos, _ = model.rope(positions, dtype)
    assert torch.equal(decoder.cos[positions[:, 0]], cos.reshape(2, -1))


@needs_kernel
async def test_backend_tokens_agree_with_and_without_the_native_path() -> None:
    from fast_tts.backends import create_backend
    from fast_tts.sampling import SamplingParams

    params = SamplingParams(temperature=0.7, max_new_tokens=12, seed=5, return_hidden=True)
    prompt = torch.randint(0, 50, (9, 1), generator=torch.Generator().manual_seed(1))
    results = []
    for pack in (True, False):
        b = create_backend("torch", _TinyLM(), max_batch=2, max_seq=64, dtype="bfloat16", pack_weights=pack)
        try:
            assert (b.runner.native is not None) is pack
            results.append(await b.submit(prompt, params).collect())
        finally:
            await b.shutdown()
    assert torch.equal(results[0].token_ids, results[1].token_ids)
    torch.testing.assert_close(results[0].hiddens, results[1].hiddens, rtol=2e-2, atol=2e-2)


@needs_kernel
@pytest.mark.usefixtures("amx_switch")
@pytest.mark.parametrize("rows", [1, 3, 11])
def test_float_output_keeps_the_float32_sums(rows: int) -> None:
    lin = nn.Linear(96, 64).to(torch.bfloat16)
    x = torch.randn(rows, 96).to(torch.bfloat16)
    with torch.no_grad():
        got = TiledBF16Linear(lin, float_out=True)(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, _reference(x, lin), rtol=1e-5, atol=1e-5)


@needs_kernel
@pytest.mark.usefixtures("amx_switch")
def test_a_rows_product_does_not_depend_on_the_rows_beside_it() -> None:
    """Batch invariance: a row's product is bit-equal alone and in any batch (AMX takes 16 rows per tile)."""
    torch.manual_seed(3)
    layer = TiledBF16Linear(nn.Linear(96, 64).to(torch.bfloat16), float_out=True)
    x = torch.randn(40, 96).to(torch.bfloat16)
    with torch.no_grad():
        alone = torch.cat([layer(x[i : i + 1]) for i in range(len(x))])
        assert torch.equal(layer(x), alone)
        assert torch.equal(layer(x[5:30]), alone[5:30])


@needs_kernel
def test_g2p_head_runs_tiled_for_a_bf16_backend() -> None:
    from fast_tts.models.megatts3.g2p import G2P

    model = G2P(DecoderConfig(64, 128, 1, 4, 2, qkv_bias=True), 96, True, tokenizer=None, speech_start=0)
    hidden = torch.randn(2, 64)
    with torch.no_grad():
        plain = model.logits(hidden)
        model.prepare_for_backend(torch.float32, torch.device("cpu"))
        assert model._decode_head is None  # float32 keeps the exact head
        model.prepare_for_backend(torch.bfloat16, torch.device("cpu"))
        tiled = model.logits(hidden)
    assert isinstance(model._decode_head, TiledBF16Linear) and tiled.shape == plain.shape == (2, 1, 96)
    want = hidden.to(torch.bfloat16).float() @ model.embed_tokens.weight.to(torch.bfloat16).float().T
    torch.testing.assert_close(tiled[:, 0], want, rtol=1e-5, atol=1e-5)


@needs_kernel
def test_chattts_heads_run_as_one_float32_layer_on_the_kernel() -> None:
    """The 4 code heads (and the text head) take the native float32 kernel under the torch backend, for any dtype,
    with the logits of the plain heads; on another device they stay torch's."""
    from fast_tts.models.chattts.config import EmbedConfig
    from fast_tts.models.chattts.gpt import ChatTTSEmbed, ChatTTSGPT, CodeLM, TextLM

    torch.manual_seed(4)
    gpt = ChatTTSGPT(Transformer(DecoderConfig(64, 128, 1, 4, 4)), ChatTTSEmbed(EmbedConfig(64, 40, 70, 4)))
    hidden = torch.randn(3, 64)
    with torch.no_grad():
        for adapter, shape in ((CodeLM(gpt), (3, 4, 40)), (TextLM(gpt), (3, 1, 70))):
            plain = adapter.logits(hidden)
            adapter.prepare_for_backend(torch.float32, torch.device("meta"))
            assert adapter._head is None
            adapter.prepare_for_backend(torch.bfloat16, torch.device("cpu"))
            assert isinstance(adapter._head, TiledF32Linear)
            tiled = adapter.logits(hidden)
            assert tiled.shape == plain.shape == shape
            torch.testing.assert_close(tiled, plain, rtol=1e-5, atol=1e-6)


needs_int8 = pytest.mark.skipif(not (CAN_RUN and {"amx_tile", "amx_int8"} <= _cpu_flags()),
                                reason="this CPU lacks AMX-INT8 (or is not x86-64 Linux)")
needs_int4 = pytest.mark.skipif(not (CAN_RUN and "avx512_vnni" in _cpu_flags()),
                                reason="this CPU lacks AVX-512 VNNI (or is not x86-64 Linux)")
SCHEMES = [pytest.param("int8", marks=needs_int8), pytest.param("int4", marks=needs_int4)]


def _grouped_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, levels: int) -> torch.Tensor:
    """The grouped kernels' result in torch, float32: weights to -levels-1..levels (7: 4-bit, 127: int8) and
    activations to int8 in groups of 64, exact integer sums per group, the groups added up in order with their
    scales."""
    xq, xs = quantize_groups(x.to(torch.bfloat16), 127, 64)
    wq, ws = quantize_groups(weight, levels, 64)
    m, n, groups = x.shape[0], weight.shape[0], x.shape[1] // 64
    sums = torch.einsum("mgi,ngi->mng", xq.double().view(m, groups, 64), wq.double().view(n, groups, 64)).float()
    out = torch.zeros(m, n)
    for g in range(groups):
        out = out + sums[..., g] * (xs[:, g, None] * ws[None, :, g])
    return out if bias is None else out + bias.float()


def test_quantize_is_refused_with_the_reason(monkeypatch) -> None:
    from fast_tts.backends import create_backend, torch_runner
    from fast_tts.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="one of int8, int4, not 'int2'"):
        create_backend("torch", _TinyLM(), dtype="bfloat16", quantize="int2")
    with pytest.raises(InvalidInputError, match="pass dtype='bfloat16'"):
        create_backend("torch", _TinyLM(), dtype="float32", quantize="int8")
    monkeypatch.setattr(torch_runner, "quantized_available", lambda quantize: False)
    with pytest.raises(InvalidInputError, match="AMX-INT8") as err:
        create_backend("torch", _TinyLM(), dtype="bfloat16", quantize="int8")
    assert err.value.field == "quantize"
    with pytest.raises(InvalidInputError, match="AVX-512 VNNI") as err:
        create_backend("torch", _TinyLM(), dtype="bfloat16", quantize="int4")
    assert err.value.field == "quantize"


@pytest.mark.parametrize("quantize", SCHEMES)
@pytest.mark.usefixtures("amx_switch")
# 4-bit at 5 rows: two vector passes or one AMX block; 17: two AMX blocks; 33, 70: several quantized chunks, the last
# of 1 or 6 rows
@pytest.mark.parametrize("rows", [1, 3, 5, 17, 33, 70])
@pytest.mark.parametrize(("out_features", "in_features", "bias"), [(96, 64, True), (2304, 768, False),
                                                                   (45, 192, True)])
@pytest.mark.parametrize("float_out", [False, True])
def test_grouped_linear_is_its_torch_arithmetic_bit_for_bit(quantize: str, rows: int, out_features: int,
                                                            in_features: int, bias: bool, float_out: bool) -> None:
    """int8 or 4-bit grouped weights, int8 grouped activations, exact int32 group sums, float32 scaling: the kernel
    and `_grouped_reference` compute the same numbers, and a row's result is the same alone as in a batch."""
    torch.manual_seed(rows + in_features)
    lin = nn.Linear(in_features, out_features, bias=bias)
    x = torch.randn(rows, in_features).to(torch.bfloat16)
    layer = QUANTIZED[quantize](lin, float_out=float_out)
    with torch.no_grad():
        got = layer(x)
        want = _grouped_reference(x, lin.weight, lin.bias, layer.levels)
        assert torch.equal(got, want if float_out else want.to(torch.bfloat16))
        assert torch.equal(layer(x[-1:]), got[-1:])
        # and near the float product: a step is a seventh (4-bit) or 1/127 (int8) of a group's largest weight
        error = (want - (x.float() @ lin.weight.T + (lin.bias if bias else 0))).norm() / want.norm()
    assert error < {"int8": 0.02, "int4": 0.15}[quantize]


def test_group_quantization_rounds_half_to_even_and_keeps_zero_groups() -> None:
    x = torch.tensor([[7.0, 3.5, -0.5, 0.0, 0.0, 0.0, 0.0, 0.0], [0.0] * 8])
    q, scales = quantize_groups(x, 7, 4)
    assert q.tolist() == [[7, 4, 0, 0, 0, 0, 0, 0], [0] * 8]  # 3.5 -> 4 and -0.5 -> 0: halves to even
    assert scales.tolist() == [[1.0, 0.0], [0.0, 0.0]]


@pytest.mark.parametrize("quantize", SCHEMES)
@pytest.mark.parametrize("threads", [1, 2])
def test_native_quantized_decode_step_equals_the_torch_step(quantize: str, threads: int, monkeypatch) -> None:
    """int8 or 4-bit linears (every in_features a multiple of 64) under the bf16 step: the torch code runs the same
    quantized products, so the two agree as the bf16 steps do."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    model = _random_decoder(DecoderConfig(128, 256, 2, 4, 2, qkv_bias=True), seed=4)
    assert pack_linears(model, quantize=quantize) == 8
    assert all(isinstance(m, QUANTIZED[quantize]) for m in model.modules() if isinstance(m, _TiledLinear))
    got, want, cache, want_cache = _native_and_torch_step(model, torch.bfloat16)
    torch.testing.assert_close(got.float(), want.float(), rtol=2**-7, atol=2**-7)
    torch.testing.assert_close(cache.k.float(), want_cache[0].float(), rtol=2**-7, atol=2**-7)
    torch.testing.assert_close(cache.v[0], want_cache[1][0], rtol=0, atol=0)  # layer 0: the same qkv product


@pytest.mark.parametrize("quantize", SCHEMES)
async def test_quantized_backend_tokens_agree_with_and_without_the_native_step(quantize: str, monkeypatch) -> None:
    from fast_tts.backends import create_backend
    from fast_tts.sampling import SamplingParams

    params = SamplingParams(temperature=0.7, max_new_tokens=12, seed=5, return_hidden=True)
    prompt = torch.randint(0, 50, (9, 1), generator=torch.Generator().manual_seed(1))
    results = []
    for native_step in (True, False):
        if not native_step:
            monkeypatch.setattr(Transformer, "native_decoder", lambda self, cache: None)
        b = create_backend("torch", _TinyLM(), max_batch=2, max_seq=64, dtype="bfloat16", quantize=quantize)
        try:
            assert (b.runner.native is not None) is native_step
            assert isinstance(b.runner.model.layers[0].mlp.down_proj, QUANTIZED[quantize])
            results.append(await b.submit(prompt, params).collect())
        finally:
            await b.shutdown()
    assert torch.equal(results[0].token_ids, results[1].token_ids)
    torch.testing.assert_close(results[0].hiddens, results[1].hiddens, rtol=2e-2, atol=2e-2)


@needs_int4
def test_g2p_head_keeps_eight_bits_under_four_bit_layers() -> None:
    from fast_tts.kernels.linear import quantized_available
    from fast_tts.models.megatts3.g2p import G2P

    model = G2P(DecoderConfig(64, 128, 1, 4, 2, qkv_bias=True), 96, True, tokenizer=None, speech_start=0)
    model.prepare_for_backend(torch.bfloat16, torch.device("cpu"), quantize="int4")
    want = TiledInt8Linear if quantized_available("int8") else TiledBF16Linear
    assert type(model._decode_head) is want
