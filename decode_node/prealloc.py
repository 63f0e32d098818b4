"""PreallocManager: requests waiting for destination items, first come first served.

`poll(preallocate)` runs on the engine thread every iteration: it asks the scheduler for the head
request's items and stops at the first that does not fit (no overtaking, so a long prompt is not
starved by short ones). `on_ready(items)` gets the items, or the exception preallocate raised.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(eq=False)
class _Pending:
    req: Any
    on_ready: Callable[[Any], None]


class PreallocManager:
    def __init__(self) -> None:
        self._pending: OrderedDict[str, _Pending] = OrderedDict()

    def add(self, req: Any, on_ready: Callable[[Any], None]) -> None:
        if req.rid in self._pending:
            raise ValueError(f"request id {req.rid!r} already waits for pages")
        self._pending[req.rid] = _Pending(req, on_ready)

    def remove(self, rid: str) -> bool:
        """Forget a waiting request; False when it is not waiting (never added, or already served)."""
        return self._pending.pop(rid, None) is not None

    def poll(self, preallocate: Callable[[Any], Any]) -> int:
        """Serve waiting requests in order while preallocate returns items; returns how many were served."""
        served = 0
        while self._pending:
            rid, head = next(iter(self._pending.items()))
            try:
                items = preallocate(head.req)
            except Exception as exc:  # an invalid request: hand the error back, keep serving the rest
                items = exc
            if items is None:
                break
            del self._pending[rid]
            head.on_ready(items)
            served += 1
        return served

    def __len__(self) -> int:
        return len(self._pending)
