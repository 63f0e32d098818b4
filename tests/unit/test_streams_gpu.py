"""engine/streams.py on a GPU: a node's compute stream does not wait for the legacy default stream, where
Mooncake's receive copies run and may still be landing when a transfer is reported done, unless
`after_received` orders it. The legacy stream here runs a long spin and then the "copy" that lands a page;
the compute stream then reads the page, the way a decode forward reads a remote prefill's pages."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

SPIN_CYCLES = 200_000_000  # ~0.1 s of GPU time before the page lands


def _read_after_landing(ordered: bool) -> float:
    from pdpair.engine.streams import after_received, use_compute_stream

    page = torch.zeros(1 << 20, device="cuda")
    torch.cuda.synchronize()
    before = torch.cuda.current_stream()
    compute = use_compute_stream("cuda")  # as a node's engine thread does
    try:
        legacy = torch.cuda.default_stream()
        with torch.cuda.stream(legacy):
            torch.cuda._sleep(SPIN_CYCLES)
            page.fill_(1.0)  # the receive copy, queued before the transfer is reported done
        if ordered:
            after_received("cuda")
        seen = page.sum()  # on the compute stream
        compute.synchronize()
        return seen.item()
    finally:
        torch.cuda.synchronize()
        torch.cuda.set_stream(before)


def test_the_compute_stream_reads_received_pages_only_after_they_land():
    assert _read_after_landing(ordered=True) == float(1 << 20)


def test_without_the_wait_the_compute_stream_reads_before_the_legacy_copy_lands():
    # the premise of after_received: without it the read does not wait for the legacy stream
    assert _read_after_landing(ordered=False) == 0.0

