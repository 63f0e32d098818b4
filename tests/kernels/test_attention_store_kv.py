"""K/V store kernel under the Triton interpreter against its torch twin."""

from __future__ import annotations

import pytest
import torch

from tests.kernels._attention_cases import store_kv_case
from tests.kernels._attention_fixtures import interpreted

pytest.importorskip("triton", reason="triton is not installed")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("page_size", [1, 16])
def test_store_kv_matches_twin(dtype, page_size):
    assert interpreted(store_kv_case, dtype, page_size)
