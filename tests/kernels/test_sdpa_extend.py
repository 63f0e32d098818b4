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
