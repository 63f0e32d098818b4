"""Memory regions and layouts: what two nodes must agree on before pages move."""

from __future__ import annotations

import msgspec

__all__ = ["LayoutMismatch", "MemoryLayout", "MemoryRegion", "check_compatible"]


class MemoryRegion(msgspec.Struct, frozen=True):
    """One registered pool: ``num_items`` items of ``item_bytes`` each, contiguous from ``base_ptr``."""

    kind: str
    base_ptr: int
    item_bytes: int
    num_items: int
    dtype: str
    dp_rank: int = 0  # the DP-attention rank whose pool this is (a layout has one region set per DP rank)
    window: int = 0  # sliding-window pools: tokens a query sees (its own included); 0: none
    layers: tuple[int, ...] = ()  # the model layers whose state an item holds (empty: not stated)
    session_id: str = ""  # the transfer session that serves this pool (a rank process's); "": the layout's
    attn_tp_rank: int = 0  # the attention-TP rank of `dp_rank` whose share of the KV heads this pool holds

    def __post_init__(self) -> None:
        if self.dp_rank < 0 or self.attn_tp_rank < 0:
            raise ValueError(f"bad region {self.kind!r}: dp_rank={self.dp_rank} attn_tp_rank={self.attn_tp_rank}")
        if self.base_ptr < 0 or self.item_bytes < 1 or self.num_items < 0:
            raise ValueError(
                f"bad region {self.kind!r}: base_ptr={self.base_ptr} item_bytes={self.item_bytes} "
                f"num_items={self.num_items}"
            )

    @property
    def nbytes(self) -> int:
        return self.item_bytes * self.num_items

    @property
    def end_ptr(self) -> int:
        return self.base_ptr + self.nbytes


class MemoryLayout(msgspec.Struct, frozen=True):
    """A node's regions plus the facts pairing must agree on."""

    node_id: str
    session_id: str
    protocol: str
    page_size: int
    model_fingerprint: str
    regions: tuple[MemoryRegion, ...]
    attn_tp_size: int = 1  # ranks splitting each DP rank's KV heads; a region holds one rank's share

    def __post_init__(self) -> None:
        if self.attn_tp_size < 1:
            raise ValueError(f"layout of {self.node_id!r}: attn_tp_size must be >= 1, got {self.attn_tp_size}")
        keys = [(r.kind, r.dp_rank, r.attn_tp_rank) for r in self.regions]
        if len(set(keys)) != len(keys):
            raise ValueError(f"layout of {self.node_id!r} names a region kind twice for one rank: {keys}")
        if self.page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {self.page_size}")
        for d, t in self.rank_sets:
            if sorted(r.kind for r in self.regions if (r.dp_rank, r.attn_tp_rank) == (d, t)) != sorted(self.kinds):
                raise ValueError(f"layout of {self.node_id!r}: DP rank {d} lacks some of the kinds {self.kinds} "
                                 f"(attention-TP rank {t})")
        for d, t in self.rank_sets:
            if len({r.session_id for r in self.regions if (r.dp_rank, r.attn_tp_rank) == (d, t)}) != 1:
                raise ValueError(f"layout of {self.node_id!r}: the regions of DP rank {d} (attention-TP rank {t}) "
                                 "name different transfer sessions")
        if self.regions and (0, 0) not in self.rank_sets:
            raise ValueError(f"layout of {self.node_id!r} has no region set for DP rank 0")

    @property
    def kinds(self) -> tuple[str, ...]:
        """The pool kinds (every rank's set has the same)."""
        return tuple(r.kind for r in self.regions if r.dp_rank == 0 and r.attn_tp_rank == 0)

    @property
    def dp_ranks(self) -> tuple[int, ...]:
        """The DP ranks with a region set: 0..n-1 (just 0 without DP attention)."""
        return tuple(sorted({r.dp_rank for r in self.regions}))

    @property
    def rank_sets(self) -> tuple[tuple[int, int], ...]:
        """The (DP rank, attention-TP rank) pairs with a region set."""
        return tuple(sorted({(r.dp_rank, r.attn_tp_rank) for r in self.regions}))

    @property
    def sessions(self) -> tuple[str, ...]:
        """Every transfer session the layout names (its own and its regions')."""
        return tuple(sorted({self.session_id, *(r.session_id for r in self.regions if r.session_id)}))

    def region(self, kind: str, dp_rank: int = 0, attn_tp_rank: int = 0) -> MemoryRegion:
        for r in self.regions:
            if r.kind == kind and r.dp_rank == dp_rank and r.attn_tp_rank == attn_tp_rank:
                return r
        raise KeyError(f"layout of {self.node_id!r} has no region {kind!r} for DP rank {dp_rank} (attention-TP "
                       f"rank {attn_tp_rank}; kinds {list(self.kinds)}, rank sets {list(self.rank_sets)})")

    def for_dp_rank(self, dp_rank: int, attn_tp_rank: int = 0) -> MemoryLayout:
        """One rank's region set as a single-rank layout whose session is the one serving that set (its regions
        renumbered to rank (0, 0), which is what plans look up); ValueError naming the DP ranks there are."""
        if (dp_rank, attn_tp_rank) not in self.rank_sets:
            raise ValueError(f"DP rank {dp_rank} has no region set for attention-TP rank {attn_tp_rank} in the "
                             f"layout of {self.node_id!r} (DP ranks {list(self.dp_ranks)})")
        if self.rank_sets == ((0, 0),) and not any(r.session_id for r in self.regions):
            return self
        mine = [r for r in self.regions if (r.dp_rank, r.attn_tp_rank) == (dp_rank, attn_tp_rank)]
        session = mine[0].session_id or self.session_id
        regions = tuple(msgspec.structs.replace(r, dp_rank=0, attn_tp_rank=0, session_id="") for r in mine)
        return MemoryLayout(self.node_id, session, self.protocol, self.page_size, self.model_fingerprint,
                            regions, self.attn_tp_size)


class LayoutMismatch(Exception):
    """Two layouts cannot pair; ``field`` names the first difference."""

    def __init__(self, field: str, local: object, remote: object) -> None:
        super().__init__(f"layout mismatch on {field}: local {local!r}, remote {remote!r}")
        self.field, self.local, self.remote = field, local, remote

    def __reduce__(self):
        return type(self), (self.field, self.local, self.remote)


def _dtype_facts(dtype: str) -> dict[str, str]:
    """A region dtype ``base;name=value;...`` (latent pools state their widths this way) -> {"dtype": base,
    name: value, ...}."""
    base, *facts = dtype.split(";")
    out = {"dtype": base}
    for fact in facts:
        name, _, value = fact.partition("=")
        out[name] = value
    return out


def _check_dtype(kind: str, a: str, b: str) -> None:
    """Name the first differing part of two region dtypes: e.g. ``regions[dsa].index_topk``."""
    fa, fb = _dtype_facts(a), _dtype_facts(b)
    for name in [*fa, *(n for n in fb if n not in fa)]:
        if fa.get(name) != fb.get(name):
            raise LayoutMismatch(f"regions[{kind}].{name}", fa.get(name), fb.get(name))


def _same_share(layout: MemoryLayout, r: MemoryRegion) -> MemoryRegion | None:
    """`layout`'s DP rank 0 region of r's kind and attention-TP rank (None when it lists no such rank)."""
    try:
        return layout.region(r.kind, 0, r.attn_tp_rank)
    except KeyError:
        return None


def check_compatible(local: MemoryLayout, remote: MemoryLayout) -> None:
    """Raise ``LayoutMismatch`` naming the first field on which the layouts differ.

    Order: attn_tp_size (a KV-head split that differs also changes the fingerprint; name the cause), page_size,
    model_fingerprint, protocol, region kinds, a region set for every attention-TP rank, then per region the
    facts its dtype string states (``float32;latent_dim=576;rope_dim=64``: ``dtype``, ``latent_dim``, ...),
    window, layers, item_bytes and dtype.
    Item counts may differ (pools are sized per node).
    """
    for field in ("attn_tp_size", "page_size", "model_fingerprint", "protocol"):
        a, b = getattr(local, field), getattr(remote, field)
        if a != b:
            raise LayoutMismatch(field, a, b)
    if sorted(local.kinds) != sorted(remote.kinds):
        raise LayoutMismatch("regions", sorted(local.kinds), sorted(remote.kinds))
    if local.attn_tp_size > 1:  # each attention-TP rank's share moves between the same-numbered ranks
        everyone = list(range(local.attn_tp_size))
        mine, theirs = (sorted({t for _, t in x.rank_sets}) for x in (local, remote))
        if mine != everyone or theirs != everyone:
            raise LayoutMismatch("regions.attn_tp_rank", mine, theirs)
    # every rank's region set against the other side's DP rank 0 set of the same attention-TP rank (the head
    # splits must be equal; a side that does not list that attention-TP rank is not compared on it)
    pairs = [(m, _same_share(remote, m)) for m in local.regions]
    pairs += [(_same_share(local, t), t) for t in remote.regions if t.dp_rank or t.attn_tp_rank]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    for mine, theirs in pairs:
        if "=" in mine.dtype + theirs.dtype:  # stated facts first: a width mismatch also changes item_bytes
            _check_dtype(mine.kind, mine.dtype, theirs.dtype)
        for field in ("window", "layers", "item_bytes", "dtype"):
            a, b = getattr(mine, field), getattr(theirs, field)
            if field == "layers" and not (a and b):  # a layout that does not state its layers
                continue
            if a != b:
                raise LayoutMismatch(f"regions[{mine.kind}].{field}", a, b)
