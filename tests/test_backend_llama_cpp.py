"""The llama.cpp backend on the real engine (llama-cpp-python, in its side environment under CI): greedy ids equal
the torch backend's on a random Qwen2 with head_dim 64, seeds repeat, 8 requests at once, cancel, limits, the GGUF
cache, ChatTTS's GPT through embeddings in / hidden states out, and the MegaTTS3 engine end to end."""

from __future__ import annotations

import importlib.util

import pytest

if importlib.util.find_spec("llama_cpp") is None:

    def test_llama_cpp_backend_in_its_environment() -> None:
        from backend_suite import run_module_in_env

        run_module_in_env("llama-cpp", __file__)

else:
    import asyncio
    import time

    import pytest_asyncio
    import torch
    from backend_suite import (
        check_cancel_frees,
        check_concurrent,
        check_event_loop_free,
        check_greedy_matches_torch,
        check_limits_and_stops,
        check_megatts3_same_audio,
        check_seeded_sampling,
        torch_greedy,
    )
    from random_qwen2 import write_random_qwen2

    from fast_tts.backends import create_backend
    from fast_tts.backends.gguf_convert import gguf_path
    from fast_tts.errors import InvalidInputError, ModelLoadError, UnsupportedOperationError
    from fast_tts.models.lm import LMSource
    from fast_tts.models.megatts3.g2p import G2P
    from fast_tts.sampling import SamplingParams

    @pytest.fixture(scope="module")
    def qwen2(tmp_path_factory):
        return write_random_qwen2(tmp_path_factory.mktemp("llama") / "qwen2")

    @pytest.fixture(scope="module")
    def reference(qwen2):
        return asyncio.run(torch_greedy(qwen2))

    @pytest_asyncio.fixture
    async def make(qwen2):
        made = []

        def build(**options):
            options.setdefault("max_batch", 8)
            options.setdefault("max_seq", 128)
            backend = create_backend("llama-cpp", G2P.from_folder(qwen2), **options)
            made.append(backend)
            return backend

        yield build
        for backend in made:
            await backend.shutdown()

    @pytest.mark.parametrize("gguf_type", ["f16", "f32"])
    async def test_greedy_ids_equal_torch(make, qwen2, reference, gguf_type) -> None:
        backend = make(gguf_type=gguf_type)
        assert backend.path.name == f"fast-tts-qwen2-{gguf_type}.gguf"
        await check_greedy_matches_torch(backend, G2P.from_folder(qwen2), reference)

    async def test_q8_0_runs_and_mostly_agrees(make, qwen2, reference) -> None:
        backend = make(gguf_type="q8_0")
        adapter = G2P.from_folder(qwen2)
        assert backend.path.stat().st_size < gguf_path(adapter.source, "f16").stat().st_size * 0.7
        got = await backend.submit(torch.tensor(adapter.prompt_ids("hello world"))[:, None],
                                   SamplingParams(temperature=0.0, max_new_tokens=64)).collect()
        ids = got.token_ids[:, 0].tolist()
        assert len(ids) == 64 and ids[:4] == reference[0][:4]  # 8-bit weights: early tokens agree

    async def test_seeded_sampling_repeats(make, qwen2) -> None:
        await check_seeded_sampling(make(), G2P.from_folder(qwen2))

    async def test_eight_concurrent_requests_finish(make, qwen2) -> None:
        await check_concurrent(make(max_seq=256), G2P.from_folder(qwen2))

    async def test_cancel_frees_the_slot(make, qwen2) -> None:
        await check_cancel_frees(make, G2P.from_folder(qwen2))

    async def test_limits_and_stop_ids(make, qwen2, reference) -> None:
        await check_limits_and_stops(make(), G2P.from_folder(qwen2), reference[0])

    async def test_event_loop_stays_free(make, qwen2) -> None:
        await check_event_loop_free(make(num_threads=1), G2P.from_folder(qwen2))

    async def test_bad_requests_are_refused(make, qwen2) -> None:
        backend = make()
        with pytest.raises(InvalidInputError, match="token ids"):
            backend.submit(torch.tensor([[backend.vocab_size]]), SamplingParams())
        with pytest.raises(InvalidInputError, match="embeddings"):
            backend.submit(torch.zeros(3, backend.hidden_size), SamplingParams())
        with pytest.raises(InvalidInputError, match="limit"):
            backend.submit(torch.zeros(backend.max_seq, 1, dtype=torch.long), SamplingParams())
        with pytest.raises(UnsupportedOperationError, match="return_hidden"):
            backend.submit(torch.zeros(3, 1, dtype=torch.long), SamplingParams(return_hidden=True))
        with pytest.raises(InvalidInputError, match="gguf_type"):
            make(gguf_type="q4_k")
        with pytest.raises(InvalidInputError, match="compile"):
            make(compile=True)

    def test_gguf_cache_is_reused_and_rebuilt_when_the_source_changes(tmp_path) -> None:
        folder = write_random_qwen2(tmp_path / "q", vocab=1536)
        source = LMSource(folder, stock_head=True)
        path = gguf_path(source)
        assert path.parent == folder
        built = path.stat().st_mtime_ns
        assert gguf_path(source).stat().st_mtime_ns == built  # unchanged source: reused
        time.sleep(0.01)
        write_random_qwen2(folder, vocab=1536, seed=1)  # new weights
        assert gguf_path(source).stat().st_mtime_ns != built
        elsewhere = gguf_path(source, "f16", tmp_path / "cache")  # a cache dir instead of the checkpoint folder
        assert elsewhere.parent == tmp_path / "cache" and elsewhere.with_suffix(".json").is_file()

    def test_unloadable_checkpoints_fail_at_construction(tmp_path) -> None:
        folder = write_random_qwen2(tmp_path / "q", vocab=1536)
        adapter = G2P.from_folder(folder)
        config = (folder / "config.json").read_text()
        (folder / "config.json").write_text(config.replace('"qwen2"', '"gpt_neox"'))
        with pytest.raises(ModelLoadError, match="gpt_neox"):
            create_backend("llama-cpp", adapter)
        (folder / "config.json").write_text(config)
        adapter.source = None
        with pytest.raises(ModelLoadError, match="source"):
            create_backend("llama-cpp", adapter)

    async def test_megatts3_engine_gives_the_torch_audio(tmp_path) -> None:
        from megatts3_checkpoint import DEFAULT_ALIGNER_SEQ
        from megatts3_fixtures import aligner_variant, cases
        from megatts3_checkpoint import build_checkpoint

        root = build_checkpoint(tmp_path / "plain", seed=int(cases()["seed"]), aligner_seq=None)
        await check_megatts3_same_audio("llama-cpp", aligner_variant(root, DEFAULT_ALIGNER_SEQ), tmp_path)
