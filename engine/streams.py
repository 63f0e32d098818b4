"""The engine's own CUDA stream, and the marks that order page transfers around it.

Mooncake's CUDA transports (TCP through a host bounce buffer, intra-host NVLink) copy GPU memory with
blocking `cudaMemcpy` on the legacy default stream, which waits for every kernel queued on that stream so
far and holds back every kernel queued after it. An engine computing on the legacy stream therefore makes
each page copy wait for the forwards the scheduler has already queued behind the chunk that wrote the
pages, and makes those forwards wait for the copy. A node's engine thread, and a rank process that leads a DP
rank or sends a prefill follower's pages (engine/distributed/rank_main.py), computes on a stream of its own
instead (`use_compute_stream`; PyTorch's streams do not synchronise with the legacy one), so a copy runs
beside the next chunk's forward.

Nothing then orders a copy after the forward that wrote its pages, so every chunk hand-over carries
`work_done()`: an event recorded on the compute stream right after the chunk's forward, which the transfer
worker waits for before it hands the pages to the engine.

Nothing orders the receiving side either. Mooncake's TCP transport receives each chunk into a pageable host
buffer (`new char[]`) and copies it to the GPU with a blocking `cudaMemcpy`, which, from pageable memory,
may return once the bytes are staged, before the DMA lands (CUDA's "API synchronization behavior"); only
work queued on the legacy stream afterwards is ordered after it. So a remote prefill's pages are read only
after `after_received()`: the compute stream waits (on the GPU, the host does not block) for an event
recorded on the legacy stream once the transfer is reported done. Off CUDA all three are no-ops (torch ops
run in order).
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


def after_received(device: str) -> None:
    """Order the work queued from now on on `device`'s current stream after every copy queued so far on the
    legacy default stream: Mooncake's receive copies into preallocated pages (see the module docstring).
    Call it once the transfer is reported done and before a forward reads the pages. On the legacy stream
    itself it orders nothing new; off CUDA it does nothing."""
    if not device.startswith("cuda"):
        return
    dev = torch.device(device)
    landed = torch.cuda.Event()
    landed.record(torch.cuda.default_stream(dev))
    torch.cuda.current_stream(dev).wait_event(landed)
