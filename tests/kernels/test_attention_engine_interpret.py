"""The engine's triton attention backend, run by the Triton interpreter on CPU, against the torch backend."""

from __future__ import annotations

import pytest

from tests.kernels._attention_cases import engine_backends_case, graph_padding_case, swa_engine_case
from tests.kernels._attention_fixtures import interpreted

pytest.importorskip("triton", reason="triton is not installed")
pytest.importorskip("transformers", reason="transformers writes the seeded test model")


@pytest.mark.timeout(300)
def test_triton_backend_greedy_equals_torch_backend(tmp_path):
    outs = interpreted(engine_backends_case, str(tmp_path))
    assert outs["triton"] == outs["torch"], outs
    assert all(len(t) == 6 for t in outs["torch"]), outs


@pytest.mark.timeout(300)
def test_graph_padding_rows_are_harmless(tmp_path):
    """CUDA-graph padding (fill seq_len 1, slot -1) through the triton backend, eagerly on CPU."""
    res = interpreted(graph_padding_case, str(tmp_path))
    assert res["rows"] == 4 and res["metadata"] and res["pool_untouched"], res
    assert res["rel_err"] < 1e-5, res


@pytest.mark.timeout(300)
@pytest.mark.parametrize("family", ["gemma3"])  # the kernels see the same paged layout for both families
def test_triton_backend_with_a_sliding_window(tmp_path, family):
    """Window 7, page 4: triton == torch greedy; decode reads window-clipped kv_indices (at most the window plus
    a page's offset), including through the CUDA-graph runner's static metadata."""
    res = interpreted(swa_engine_case, str(tmp_path), family)
    assert res["triton"] == res["torch"], res
    assert res["window_keys"] == [1, 7, 8, 9], res  # lengths 1, 7, 12, 21: from the page of len - 7 on
    assert res["graph_metadata"] and res["graph_rel_err"] < 1e-5, res
