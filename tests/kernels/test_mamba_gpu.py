"""(GPU) Mamba2 decode-step kernels at real sizes (64 heads x 64 head dim x 128 state, batch 64) against the
torch twins."""

from __future__ import annotations

import pytest
import torch

from tests.kernels._mamba_cases import conv_update_case, scan_case, state_update_case

pytest.importorskip("triton", reason="triton is not installed")
pytestmark = [pytest.mark.gpu, pytest.mark.timeout(300)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_update_real_size(dtype):
    assert state_update_case(dtype, 64, 64, 64, 128, 8, device="cuda")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_conv_update_real_size(dtype):
    assert conv_update_case(dtype, 64, 64 * 64 + 2 * 8 * 128, 4, True, device="cuda")


@pytest.mark.parametrize("graphs", [False, True])
def test_hybrid_engine_on_cuda_matches_cpu(tmp_path, graphs):
    """A tiny Bamba on CUDA (Triton scan and decode step on the pool slots; triton attention; with and without
    decode CUDA graphs, whose padding rows write the dummy slot) generates what the CPU engine generates."""
    from pdpair.engine import Engine, SamplingParams

    from tests.hybrid_models import save_hybrid

    save_hybrid("bamba", tmp_path)
    prompts = [[5, 6, 7], list(range(3, 40)), [9] * 17]  # 3 rows: the graph of 4 pads one row
    sp = SamplingParams(max_new_tokens=12, temperature=0.0, ignore_eos=True)
    outs = {}
    for device in ("cpu", "cuda"):
        eng = Engine.from_model(str(tmp_path), device=device, dtype="float32", page_size=4, max_pages=64,
                                chunk_size=5, max_running_requests=8, disable_cuda_graph=not graphs)
        outs[device] = [o.token_ids for o in eng.generate(prompts, sp)]
        assert eng.pools.all_free()
        if device == "cuda":
            assert (eng.runner.graphs is not None and eng.runner.graphs.num_replays > 0) == graphs
    assert outs["cuda"] == outs["cpu"]


def test_prefill_scan_real_size():
    assert scan_case(torch.float32, [1, 300, 77, 1024], 64, 64, 128, 8, device="cuda")
