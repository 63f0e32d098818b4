"""kv_indices builder under the Triton interpreter against its torch twin."""

from __future__ import annotations

import pytest

from tests.kernels._attention_cases import decode_metadata_case, kv_indices_case, window_indices_case
from tests.kernels._attention_fixtures import interpreted

pytest.importorskip("triton", reason="triton is not installed")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("with_start", [False, True])
def test_kv_indices_matches_twin(with_start):
    indptr_ok, indices_ok, no_overrun = interpreted(kv_indices_case, with_start)
    assert indptr_ok and indices_ok and no_overrun, (indptr_ok, indices_ok, no_overrun)


@pytest.mark.timeout(300)
def test_window_start_offsets_equal_window_masking():
    """kv_indices built from the window's start equal decoding every slot with the window mask."""
    assert interpreted(window_indices_case, 6) < 1e-6


@pytest.mark.timeout(300)
@pytest.mark.parametrize("window", [0, 10])
def test_decode_metadata_matches_twin(window):
    """A CUDA graph's one-launch metadata build: seq lens, slots, indices, pending ids, state slots, windows."""
    ok = interpreted(decode_metadata_case, window)
    assert all(ok.values()), ok
