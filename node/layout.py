"""An engine's pools as a transfer MemoryLayout, and MemoryLayout <-> protobuf."""

from __future__ import annotations

from typing import Any

from pdpair.proto import pdpair_pb2 as pb
from pdpair.transfer import MemoryLayout, MemoryRegion


def pool_regions(pools: Any, dp_rank: int = 0, attn_tp_rank: int = 0, session_id: str = "") -> tuple[MemoryRegion, ...]:
    """One region per pool of `pools` (an engine's `MemoryPools`), as rank (dp_rank, attn_tp_rank) holds them."""
    return tuple(
        MemoryRegion(kind=r.kind, base_ptr=int(r.base_ptr), item_bytes=int(r.item_bytes),
                     num_items=int(r.num_items), dtype=str(r.dtype), window=int(r.window),
                     layers=tuple(int(i) for i in r.layers), dp_rank=dp_rank, attn_tp_rank=attn_tp_rank,
                     session_id=session_id)
        for r in pools.regions()
    )


def engine_layout(engine: Any, node_id: str, session_id: str, protocol: str) -> MemoryLayout:
    """The layout a node advertises: one region per pool, plus what pairing must agree on. A node running
    ranks adds the region sets its rank processes registered with their own transfer sessions
    (`engine.rank_regions`, set by the node's ranks)."""
    regions = pool_regions(engine.pools) + tuple(getattr(engine, "rank_regions", ()))
    return MemoryLayout(node_id=node_id, session_id=session_id, protocol=protocol,
                        page_size=int(engine.pools.page_size), model_fingerprint=engine.fingerprint,
                        regions=regions, attn_tp_size=int(getattr(engine, "attn_tp_size", 1)))  # set by node ranks


def layout_to_proto(layout: MemoryLayout) -> pb.MemoryLayout:
    return pb.MemoryLayout(
        node_id=layout.node_id, session_id=layout.session_id, protocol=layout.protocol,
        page_size=layout.page_size, model_fingerprint=layout.model_fingerprint,
        regions=[pb.MemoryRegion(kind=r.kind, base_ptr=r.base_ptr, item_bytes=r.item_bytes,
                                 num_items=r.num_items, dtype=r.dtype, dp_rank=r.dp_rank, window=r.window,
                                 layers=list(r.layers), session_id=r.session_id, attn_tp_rank=r.attn_tp_rank)
                 for r in layout.regions],
        attn_tp_size=layout.attn_tp_size,
    )


def layout_from_proto(msg: pb.MemoryLayout) -> MemoryLayout:
    """Raises ValueError when the message cannot be a layout (the transfer types validate their fields)."""
    regions = tuple(
        MemoryRegion(kind=r.kind, base_ptr=r.base_ptr, item_bytes=r.item_bytes, num_items=r.num_items,
                     dtype=r.dtype, dp_rank=r.dp_rank, window=r.window, layers=tuple(r.layers),
                     session_id=r.session_id, attn_tp_rank=r.attn_tp_rank)
        for r in msg.regions
    )
    return MemoryLayout(node_id=msg.node_id, session_id=msg.session_id, protocol=msg.protocol,
                        page_size=msg.page_size, model_fingerprint=msg.model_fingerprint, regions=regions,
                        attn_tp_size=msg.attn_tp_size or 1)
