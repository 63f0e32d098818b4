"""Decode attention kernel (split-KV) under the Triton interpreter against its torch twin."""

from __future__ import annotations

import pytest
import torch

from tests.kernels._attention_cases import decode_case
from tests.kernels._attention_fixtures import interpreted

pytest.importorskip("triton", reason="triton is not installed")

TOL = {torch.float32: 1e-5, torch.float16: 4e-3}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("group", [1, 4])
@pytest.mark.parametrize("window", [0, 5])
def test_decode_matches_twin(dtype, page_size, group, window):
    # ragged lengths incl. a single-token row, plus one padded row (fill length 1);
    # 3 splits of 16-token blocks leave some splits empty
    errs = interpreted(decode_case, dtype, page_size, group, window, [1, 19, 40, 7], splits=(1, 3),
                       seed=page_size * 100 + group * 10 + window)
    assert max(errs) < TOL[dtype], errs


@pytest.mark.timeout(300)
@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("window", [0, 5])
def test_decode_with_the_first_block_preloaded_matches_twin(page_size, window):
    """`preload`: each split's first block read up front, all but the row's own (last) token, which is read
    with the rest; single-token rows, own tokens in the first block or a later one, empty splits."""
    errs = interpreted(decode_case, torch.float32, page_size, 4, window, [1, 19, 40, 7], splits=(1, 3, 8),
                       seed=page_size + window, preload=True)
    assert max(errs) < TOL[torch.float32], errs
