"""Mamba2 decode-step kernels (conv update, selective state update, in place on pool slots) under the Triton
interpreter against their torch twins; rows write only their own slot of their own layer."""

from __future__ import annotations

import pytest
import torch

from tests.kernels._attention_fixtures import interpreted
from tests.kernels._mamba_cases import conv_update_case, scan_case, state_update_case

pytest.importorskip("triton", reason="triton is not installed")
pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("groups", [1, 2])
def test_state_update_matches_twin(dtype, groups):
    assert interpreted(state_update_case, dtype, 3, 4, 8, 16, groups)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("bias", [True, False])
def test_conv_update_matches_twin(dtype, bias):
    assert interpreted(conv_update_case, dtype, 3, 40, 4, bias)


@pytest.mark.parametrize("groups", [1, 2])
def test_prefill_scan_matches_twin(groups):
    """Varlen segments, fresh and continuing, written back to their slots; equal to the SSD chunked form."""
    assert interpreted(scan_case, torch.float32, [1, 7, 3, 12], 4, 8, 16, groups)


def test_mixer_triton_path_matches_torch_path(tmp_path):
    """The engine with the mixer's kernels (interpreted) generates what it generates with the torch twins."""
    from tests.hybrid_models import save_hybrid
    from tests.kernels._mamba_cases import engine_kernels_case

    save_hybrid("bamba", tmp_path)
    assert interpreted(engine_kernels_case, str(tmp_path))


def test_graph_padding_rows_write_only_the_dummy_slot(tmp_path):
    from tests.hybrid_models import save_hybrid
    from tests.kernels._mamba_cases import graph_padding_case

    save_hybrid("granite", tmp_path)
    assert interpreted(graph_padding_case, str(tmp_path)) == {
        "tokens": True, "padding_to_dummy": True, "dummy_written": True, "others_untouched": True}
