"""No-prefix extend through torch SDPA (the triton backend's route for plain prefill) against the twin."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.kernels._sdpa_cases import sdpa_extend_case


@pytest.mark.parametrize("lens", [[16, 16, 16], [1, 9, 30], [5]])
@pytest.mark.parametrize("group", [1, 3])
def test_sdpa_extend_matches_twin(lens, group):
    r = sdpa_extend_case(torch.float32, lens, 2 * group, 2, 32)
    assert r["fits"] and r["rel_err"] < 1e-5, r


def test_sdpa_route_rules():
    from pdpair.engine.attention.sdpa_extend import MAX_RAGGED_ROWS, sdpa_fits

    assert sdpa_fits(np.full(64, 4096)) and sdpa_fits(np.arange(1, MAX_RAGGED_ROWS + 1))
    assert not sdpa_fits(np.arange(1, MAX_RAGGED_ROWS + 2)) and not sdpa_fits(np.zeros(0, dtype=np.int64))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.timeout(300)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("lens", [[1024, 1024], [300, 17, 1000, 1]])
def test_sdpa_extend_gpu(dtype, lens):
    r = sdpa_extend_case(dtype, lens, 32, 8, 128, device="cuda", seed=len(lens))
    assert r["rel_err"] < 1e-2, r


def test_sdpa_route_skips_windowed_pools():
    """SDPA has no window mask: a no-prefix batch of a model with sliding-window pools stays on the extend kernel."""
    from pdpair.engine.batch import ForwardBatch, ForwardMode
    from pdpair.engine.memory.kv_pool import KVPool
    from pdpair.kernels import HAS_TRITON

    if not HAS_TRITON:
        pytest.skip("needs triton")
    from pdpair.engine.attention.triton_backend import TritonBackend

    backend = TritonBackend(KVPool(16, 1, 4, 2, 32, torch.float32, "cpu"), 4, 2, 32)
    backend.extend_sdpa = True
    table = torch.arange(64, dtype=torch.int32).view(2, 32)
    args = (ForwardMode.EXTEND, np.array([0, 1]), np.array([0, 0]), np.array([9, 9]), [3] * 18, table)
    backend.prepare(ForwardBatch.build(*args))
    assert backend._sdpa
    backend.prepare(ForwardBatch.build(*args, {"swa": (table + 64, 4, 4)}))
    assert not backend._sdpa
