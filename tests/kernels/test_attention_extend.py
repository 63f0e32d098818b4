"""Extend attention kernel under the Triton interpreter against its torch twin."""

from __future__ import annotations

import pytest
import torch

from tests.kernels._attention_cases import extend_case
from tests.kernels._attention_fixtures import interpreted

pytest.importorskip("triton", reason="triton is not installed")

TOL = {torch.float32: 1e-5, torch.float16: 4e-3}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("group", [1, 4])
@pytest.mark.parametrize("window", [0, 6])
def test_extend_matches_twin(dtype, page_size, group, window):
    # ragged rows: no prefix, a single new token, no new tokens, a long one; plus a padded row.
    # The new K/V go through bulk-copy descriptors in half the cases, plain loads in the other half.
    err = interpreted(extend_case, dtype, page_size, group, window, [0, 21, 5, 17], [9, 1, 0, 37],
                      seed=page_size * 100 + group * 10 + window, use_tma=page_size == 16, strided_q=group == 4)
    assert err < TOL[dtype], err


@pytest.mark.timeout(300)
@pytest.mark.parametrize("window", [0, 4, 25])
def test_extend_strided_q_and_long_prefix(window):
    """q as a strided slice of the fused qk tensor; windows shorter and longer than the prefix."""
    for use_tma in (False, True):
        err = interpreted(extend_case, torch.float32, 4, 2, window, [30, 2], [20, 5], block_m=16, seed=window,
                          strided_q=True, use_tma=use_tma)
        assert err < 1e-5, (use_tma, err)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("use_tma", [False, True])
def test_extend_without_prefix(use_tma):
    """`has_prefix=False` (first chunks only): the padded row's stale kv span must still be ignored."""
    err = interpreted(extend_case, torch.float16, 16, 4, 0, [0, 0, 0], [33, 1, 16], seed=5, use_tma=use_tma,
                      has_prefix=False)
    assert err < 4e-3, err

