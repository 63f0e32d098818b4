"""Admission: admission of requests — unique request ids, a bound on requests held at once."""

from __future__ import annotations


class QueueFull(RuntimeError):
    pass


class Admission:
    def __init__(self, max_requests: int) -> None:
        if max_requests <= 0:
            raise ValueError(f"max_requests must be positive, got {max_requests}")
        self.max_requests = max_requests
        self._rids: set[str] = set()

    def admit(self, rid: str) -> None:
        """Raises ValueError for an empty or duplicate id, QueueFull when the node holds max_requests."""
        if not rid:
            raise ValueError("rid is empty")
        if rid in self._rids:
            raise ValueError(f"request id {rid!r} is already in flight")
        if len(self._rids) >= self.max_requests:
            raise QueueFull(f"{len(self._rids)} requests in flight (limit {self.max_requests})")
        self._rids.add(rid)

    def done(self, rid: str) -> None:
        self._rids.discard(rid)

    def __contains__(self, rid: str) -> bool:
        return rid in self._rids

    def __len__(self) -> int:
        return len(self._rids)
