"""TransferTally: what one request's transfer batches moved, summed; converts to the wire TransferStats."""

from __future__ import annotations

from dataclasses import dataclass

from pdpair.proto import pdpair_pb2 as pb


@dataclass(eq=False)
class TransferTally:
    items: int = 0
    bytes: int = 0
    batches: int = 0
    entries: int = 0
    seconds: float = 0.0

    def add(self, items: int, nbytes: int, entries: int, batches: int, seconds: float) -> None:
        self.items += items
        self.bytes += nbytes
        self.entries += entries
        self.batches += batches
        self.seconds += seconds

    @property
    def gbps(self) -> float:
        return self.bytes / self.seconds / 1e9 if self.seconds > 0 else 0.0

    def to_proto(self) -> pb.TransferStats:
        return pb.TransferStats(items=self.items, bytes=self.bytes, batches=self.batches,
                                entries=self.entries, seconds=self.seconds)

    @classmethod
    def from_proto(cls, msg: pb.TransferStats) -> TransferTally:
        return cls(items=msg.items, bytes=msg.bytes, batches=msg.batches, entries=msg.entries,
                   seconds=msg.seconds)
