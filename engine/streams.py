"""The engine's own CUDA stream, and the mark a page transfer waits for.

Mooncake's CUDA transports (TCP through a host bounce buffer, intra-host NVLink) copy GPU memory with
blocking `cudaMemcpy` on the legacy default stream, which waits for every kernel queued on that stream so
far and holds back every kernel queued after it. An engine computing on the legacy stream therefore makes
each page copy wait for the forwards the scheduler has already queued behind the chunk that wrote the
pages, and makes those forwards wait for the copy. A node's engine thread computes on a stream of its own
instead (`use_compute_stream`; PyTorch's streams do not synchronise with the legacy one), so a copy runs
beside the next chunk's forward.

Nothing then orders a copy after the forward that wrote its pages, so every chunk hand-over carries
`work_done()`: an event recorded on the compute stream right after the chunk's forward, which the transfer
worker waits for before it hands the pages to the engine. Off CUDA both are no-ops (torch ops run in order).
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def use_compute_stream(device: str) -> torch.cuda.Stream | None:
    """Make a fresh stream the calling thread's current stream on `device` (CUDA only); returns it."""
    if not device.startswith("cuda"):
        return None
    dev = torch.device(device)
    torch.cuda.synchronize(dev)  # what the build queued on the legacy stream is done before we leave it
    stream = torch.cuda.Stream(dev)
    torch.cuda.set_stream(stream)
    logger.debug("engine thread computes on its own stream of %s", device)
    return stream


def work_done(device: str) -> torch.cuda.Event | None:
    """An event that completes once the work queued so far on `device`'s current stream has run; None off CUDA."""
    if not device.startswith("cuda"):
        return None
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(torch.device(device)))
    return event
