"""The MLX backend on the real engine (mlx-lm on MLX's Linux CPU build, in its side environment under CI): greedy
ids equal the torch backend's on a random Qwen2 with head_dim 64, seeds repeat, 8 requests at once, cancel, limits,
refusals, and the MegaTTS3 engine end to end."""

from __future__ import annotations

import importlib.util

import pytest

if importlib.util.find_spec("mlx_lm") is None:

    @pytest.mark.timeout(1800)  # the whole module runs inside this one test
    def test_mlx_backend_in_its_environment() -> None:
        from backend_suite import run_module_in_env

        run_module_in_env("mlx-lm", __file__)

else:
    import asyncio

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
    from fast_tts.errors import InvalidInputError, ModelLoadError, UnsupportedOperationError
    from fast_tts.models.lm import LMSource
    from fast_tts.models.megatts3.g2p import G2P
    from fast_tts.sampling import SamplingParams

    @pytest.fixture(scope="module")
    def qwen2(tmp_path_factory):
        return write_random_qwen2(tmp_path_factory.mktemp("mlx") / "qwen2")

    @pytest.fixture(scope="module")
    def reference(qwen2):
        return asyncio.run(torch_greedy(qwen2))

    @pytest_asyncio.fixture
    async def make(qwen2):
        made = []

        def build(**options):
            options.setdefault("max_batch", 8)
            options.setdefault("max_seq", 128)
            backend = create_backend("mlx-lm", G2P.from_folder(qwen2), **options)
            made.append(backend)
            return backend

        yield build
        for backend in made:
            await backend.shutdown()

    async def test_greedy_ids_equal_torch(make, qwen2, reference) -> None:
        await check_greedy_matches_torch(make(dtype="float32"), G2P.from_folder(qwen2), reference, tie=0.01)

    async def test_seeded_sampling_repeats(make, qwen2) -> None:
        await check_seeded_sampling(make(), G2P.from_folder(qwen2))

    async def test_eight_concurrent_requests_finish(make, qwen2) -> None:
        await check_concurrent(make(max_seq=256), G2P.from_folder(qwen2))

    async def test_cancel_frees_the_slot(make, qwen2) -> None:
        await check_cancel_frees(make, G2P.from_folder(qwen2))

    async def test_limits_and_stop_ids(make, qwen2, reference) -> None:
        await check_limits_and_stops(make(), G2P.from_folder(qwen2), reference[0])

    async def test_event_loop_stays_free(make, qwen2) -> None:
        await check_event_loop_free(make(), G2P.from_folder(qwen2))

    async def test_bad_requests_and_options_are_refused(make, qwen2) -> None:
        backend = make()
        with pytest.raises(InvalidInputError, match="token ids"):
            backend.submit(torch.tensor([[backend.vocab_size]]), SamplingParams())
        with pytest.raises(InvalidInputError, match="embeddings"):
            backend.submit(torch.zeros(3, backend.hidden_size), SamplingParams())
        with pytest.raises(UnsupportedOperationError, match="return_hidden"):
            backend.submit(torch.zeros(3, 1, dtype=torch.long), SamplingParams(return_hidden=True))
        with pytest.raises(UnsupportedOperationError, match="min_tokens_to_keep"):
            backend.submit(torch.zeros(3, 1, dtype=torch.long), SamplingParams(top_p=0.5, min_tokens_to_keep=3))
        with pytest.raises(InvalidInputError, match="dtype"):
            make(dtype="int8")
        with pytest.raises(InvalidInputError, match="compile"):
            make(compile=True)

    def test_unloadable_checkpoints_fail_at_construction(tmp_path, qwen2) -> None:
        folder = write_random_qwen2(tmp_path / "q", vocab=1536)
        adapter = G2P.from_folder(folder)
        (folder / "model.safetensors").write_bytes(b"not a safetensors file")
        with pytest.raises(ModelLoadError, match="mlx-lm could not load"):
            create_backend("mlx-lm", adapter)
        adapter.source = LMSource(qwen2, stock_head=False)
        with pytest.raises(UnsupportedOperationError, match="heads of its own"):
            create_backend("mlx-lm", adapter)

    async def test_quantized_and_bf16_models_run(make, qwen2) -> None:
        adapter = G2P.from_folder(qwen2)
        prompt = torch.tensor(adapter.prompt_ids("hello world"))[:, None]
        for options in ({"dtype": "bfloat16"}, {"quantize_bits": 8}):
            got = await make(**options).submit(prompt, SamplingParams(temperature=0.0, max_new_tokens=16)).collect()
            assert got.token_ids.shape == (16, 1)

    async def test_megatts3_engine_gives_the_torch_audio(tmp_path) -> None:
        from megatts3_checkpoint import DEFAULT_ALIGNER_SEQ, build_checkpoint
        from megatts3_fixtures import aligner_variant, cases

        root = build_checkpoint(tmp_path / "plain", seed=int(cases()["seed"]), aligner_seq=None)
        await check_megatts3_same_audio("mlx-lm", aligner_variant(root, DEFAULT_ALIGNER_SEQ), tmp_path,
                                        dtype="float32")
