"""TransferTally: what one request's transfer batches moved, summed; converts to the wire TransferStats."""

from __future__ import annotations

from dataclasses import dataclass, field

from pdpair.proto import pdpair_pb2 as pb


@dataclass(eq=False)
class TransferTally:
    items: int = 0
    bytes: int = 0
    batches: int = 0
    entries: int = 0
    seconds: float = 0.0
    pools: dict[str, list[int]] = field(default_factory=dict)  # kind -> [items, bytes, entries]

    def add(self, items: int, nbytes: int, entries: int, batches: int, seconds: float,
            kinds: dict[str, tuple[int, int, int]] | None = None) -> None:
        """One landed batch; `kinds`: per pool kind, (items, bytes, entries) of what it moved."""
        self.items += items
        self.bytes += nbytes
        self.entries += entries
        self.batches += batches
        self.seconds += seconds
        for kind, fig in (kinds or {}).items():
            acc = self.pools.setdefault(kind, [0, 0, 0])
            for i, v in enumerate(fig):
                acc[i] += int(v)

    @property
    def gbps(self) -> float:
        return self.bytes / self.seconds / 1e9 if self.seconds > 0 else 0.0

    def to_proto(self) -> pb.TransferStats:
        pools = [pb.PoolTransfer(kind=k, items=v[0], bytes=v[1], entries=v[2]) for k, v in self.pools.items()]
        return pb.TransferStats(items=self.items, bytes=self.bytes, batches=self.batches,
                                entries=self.entries, seconds=self.seconds, pools=pools)

    @classmethod
    def from_proto(cls, msg: pb.TransferStats) -> TransferTally:
        pools = {p.kind: [p.items, p.bytes, p.entries] for p in msg.pools}
        return cls(items=msg.items, bytes=msg.bytes, batches=msg.batches, entries=msg.entries,
                   seconds=msg.seconds, pools=pools)
