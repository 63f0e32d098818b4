"""Overlap scheduling's pending tokens gathered in the decode graphs' input staging (CPU, interpreted kernels)."""

from __future__ import annotations

import pytest

from tests.kernels._attention_fixtures import interpreted

pytest.importorskip("triton", reason="triton is not installed")


@pytest.mark.timeout(300)
def test_pending_tokens_are_gathered_in_graph_staging():
    from tests.kernels._overlap_cases import graph_staging_case

    assert interpreted(graph_staging_case) == {
        "tokens": True, "stopped": True, "pending_staged": True, "pools_free": True, "launch_failures": 0}
