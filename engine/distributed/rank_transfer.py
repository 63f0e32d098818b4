"""A rank process's own transfer engine: pages of a DP rank's pools arrive through the session of the process
that owns them (each rank is its own process, on its own device)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TransferSpec:
    """The node's transfer settings, which every rank engine uses too."""

    protocol: str = "tcp"
    host: str = "127.0.0.1"  # the node's advertised host
    devices: tuple[str, ...] = ()  # RDMA devices


def start_rank_transfer(spec: TransferSpec, pools, device: str, dp_rank: int, attn_tp_rank: int = 0):
    """(engine, regions): a MooncakeEngine with the rank's pools registered, and those pools as the regions of
    rank (dp_rank, attn_tp_rank) served by its session. The caller closes the engine when the rank exits."""
    from pdpair.node.layout import pool_regions
    from pdpair.transfer import MooncakeEngine

    engine = MooncakeEngine(host=spec.host, protocol=spec.protocol, devices=list(spec.devices) or None)
    try:
        if device.startswith("cuda"):  # bind the device's context to this thread (see NodeRuntime)
            import torch

            torch.cuda.synchronize(torch.device(device))
        regions = pool_regions(pools, dp_rank, attn_tp_rank, engine.session_id)
        engine.register(list(regions))
    except BaseException:
        engine.close()
        raise
    logger.info("DP rank %d (attention-TP rank %d): transfer session %s", dp_rank, attn_tp_rank, engine.session_id)
    return engine, regions
