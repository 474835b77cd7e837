"""The llama.cpp backend on the real engine (llama-cpp-python, in its side environment under CI): greedy ids equal
the torch backend's on a random Qwen2 with head_dim 64, seeds repeat, 8 requests at once, cancel, limits, the GGUF
cache, ChatTTS's GPT through embeddings in / hidden states out, and the MegaTTS3 engine end to end."""

from __future__ import annotations

import importlib.util

import pytest

if importlib.util.find_spec("llama_cpp") is None:

    @pytest.mark.timeout(1800)  # the whole module runs inside this one test
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
        # f16 weights: max logit error about 2e-2 at logit std 2.2 (../shared/notes/backends.md); f32: about 6e-3
        tie = 0.05 if gguf_type == "f16" else 0.02
        await check_greedy_matches_torch(backend, G2P.from_folder(qwen2), reference, tie)

    async def test_greedy_ids_hold_when_a_sequence_moves(make, qwen2, reference) -> None:
        # the first request ends early, so the last one's KV cache moves into its sequence (see _compact)
        backend = make(gguf_type="f32")
        await check_greedy_matches_torch(backend, G2P.from_folder(qwen2), reference, 0.02,
                                         lengths=[8] + [len(r) for r in reference[1:]])
        assert backend.stats()["active"] == 0

    async def test_q8_0_runs_and_mostly_agrees(make, qwen2, reference) -> None:
        backend = make(gguf_type="q8_0")
        adapter = G2P.from_folder(qwen2)
        assert backend.path.stat().st_size < gguf_path(adapter.source, "f16").stat().st_size * 0.7
        got = await backend.submit(torch.tensor(adapter.prompt_ids("hello world"))[:, None],
                                   SamplingParams(temperature=0.0, max_new_tokens=64)).collect()
        ids = got.token_ids[:, 0].tolist()  # how far 8-bit weights agree is measured in benchmarks/backends.py
        assert len(ids) == 64 and len(set(ids)) > 32 and ids[0] == reference[0][0]

    async def test_q4_0_is_smaller_still_and_runs(make, qwen2) -> None:
        backend = make(gguf_type="q4_0")
        adapter = G2P.from_folder(qwen2)
        assert backend.path.name == "fast-tts-qwen2-q4_0.gguf"
        assert backend.path.stat().st_size < gguf_path(adapter.source, "q8_0").stat().st_size * 0.8
        got = await backend.submit(torch.tensor(adapter.prompt_ids("hello world"))[:, None],
                                   SamplingParams(temperature=0.0, max_new_tokens=64)).collect()
        ids = got.token_ids[:, 0].tolist()  # 4-bit weights agree less; benchmarks/backends.py measures how much
        assert len(ids) == 64 and len(set(ids)) > 32

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
        from megatts3_checkpoint import DEFAULT_ALIGNER_SEQ, build_checkpoint
        from megatts3_fixtures import aligner_variant, cases

        root = build_checkpoint(tmp_path / "plain", seed=int(cases()["seed"]), aligner_seq=None)
        await check_megatts3_same_audio("llama-cpp", aligner_variant(root, DEFAULT_ALIGNER_SEQ), tmp_path)

    @pytest.fixture(scope="module")
    def chattts(tmp_path_factory):
        from pathlib import Path

        from chattts_checkpoint import build_fixture_checkpoint

        fixtures = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "chattts"
        if not (fixtures / "config.json").is_file():
            pytest.skip(f"no ChatTTS fixtures at {fixtures}")
        root = tmp_path_factory.mktemp("chattts")
        build_fixture_checkpoint(root, fixtures)
        return root

    async def test_chattts_gpt_runs_on_embeddings_in_and_hidden_states_out(chattts) -> None:
        from fast_tts.models.chattts.loader import load_chattts
        from fast_tts.models.chattts.prompt import code_sampling

        models = load_chattts(chattts)
        prompt = torch.randn(9, models.config.gpt.hidden_size, generator=torch.Generator().manual_seed(0))
        text = torch.tensor([[5], [17], [40], [3], [99]])
        greedy = SamplingParams(temperature=0.0, max_new_tokens=32, return_hidden=True)
        sampled = code_sampling(0.3, 0.7, 20, 1.05, 24, 24, 625, 3, True, True)
        out = {}
        for name, options in (("torch", {}), ("llama-cpp", {"gguf_type": "f32"})):
            models = load_chattts(chattts)
            code = create_backend(name, models.code_lm, max_batch=2, max_seq=128, dtype="float32", **options)
            refine = create_backend(name, models.text_lm, max_batch=2, max_seq=128, dtype="float32", **options)
            try:
                out[name] = await asyncio.gather(code.submit(prompt, greedy).collect(),
                                                 code.submit(prompt, sampled).collect(),
                                                 refine.submit(text, SamplingParams(temperature=0.0,
                                                                                    max_new_tokens=16)).collect())
            finally:
                await code.shutdown()
                await refine.shutdown()
        ours, ref = out["llama-cpp"], out["torch"]
        assert torch.equal(ours[0].token_ids, ref[0].token_ids) and ref[0].token_ids.shape == (32, 4)
        assert len(set(ref[0].token_ids.flatten().tolist())) > 16
        assert (ours[0].hiddens - ref[0].hiddens).abs().max() < 0.02 * ref[0].hiddens.std()
        # sampling with ChatTTS's settings is fast-tts's own sampler on llama.cpp's hidden states: the same draws
        assert torch.equal(ours[1].token_ids[:8], ref[1].token_ids[:8])
        assert torch.equal(ours[2].token_ids, ref[2].token_ids)  # refine-text mode: ids in, the text head

    async def test_chattts_engine_greedy_audio_matches_torch(chattts, tmp_path) -> None:
        import numpy as np

        from fast_tts.engine.chattts import AsyncChatTTSEngine

        params = {"max_tokens": 40, "min_tokens": 40, "seed": 3, "temperature": 0.0}
        audio = {}
        for name, options in (("torch", None), ("llama-cpp", {"gguf_type": "f32"})):
            engine = AsyncChatTTSEngine(chattts, dtype="float32", backend=name, backend_options=options,
                                        speakers_dir=tmp_path / name)
            try:
                audio[name] = (await engine.speak_async("hello world", **params)).astype(np.float64)
            finally:
                await engine.shutdown()
        ref, ours = audio["torch"], audio["llama-cpp"]
        assert ours.shape == ref.shape and np.abs(ref).max() > 0
        snr = 10 * np.log10((ref**2).sum() / ((ours - ref) ** 2).sum())
        assert snr > 40, snr  # same codes; the Decoder hears hidden states within llama.cpp's rounding

    async def test_a_prompt_the_adapter_rejects_fails_alone(chattts) -> None:
        from fast_tts.models.chattts.gpt import CodeLM
        from fast_tts.models.chattts.loader import load_chattts

        class PickyLM(CodeLM):
            """ChatTTS's code adapter that refuses prompts holding code 13 in every codebook."""

            def embed(self, tokens):
                if bool((tokens == 13).all(-1).any()):
                    raise ValueError("code 13 is not allowed here")
                return super().embed(tokens)

        models = load_chattts(chattts)
        backend = create_backend("llama-cpp", PickyLM(models.gpt), max_batch=4, max_seq=128)
        try:
            good = [backend.submit(torch.tensor([[1, 2, 3, 4]] * (3 + i)), SamplingParams(max_new_tokens=12, seed=i))
                    for i in range(3)]
            bad = backend.submit(torch.full((5, 4), 13), SamplingParams(max_new_tokens=12))
            with pytest.raises(ValueError, match="code 13"):
                await bad.collect()
            results = await asyncio.gather(*(s.collect() for s in good))
            assert [r.token_ids.shape for r in results] == [(12, 4)] * 3
            after = await backend.submit(torch.tensor([[1, 2, 3, 4]]), SamplingParams(max_new_tokens=4)).collect()
            assert after.token_ids.shape == (4, 4)
        finally:
            await backend.shutdown()
