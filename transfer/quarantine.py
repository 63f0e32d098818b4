"""Quarantine for the items of failed transfers.

A Mooncake write that failed (timeout, dead or frozen peer) may still land
in full later, so neither its source nor its destination items may be reused
until well past the transfer timeout. ``Quarantine`` holds them and hands them
back to their allocator through ``release`` once the hold has passed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

__all__ = ["Quarantine", "default_hold_seconds"]

logger = logging.getLogger(__name__)


def default_hold_seconds(transfer_timeout_s: float) -> float:
    """A hold comfortably longer than the transfer timeout: twice it, plus 10 s."""
    return 2.0 * transfer_timeout_s + 10.0


class Quarantine:
    """Holds ``(kind, ids)`` for ``hold_seconds``, then calls ``release(kind, ids)``.

    ``hold`` may be called from any thread; ``release`` runs on the thread that
    calls ``poll`` or ``flush`` (the owner of the allocators), outside the lock.
    """

    def __init__(
        self,
        hold_seconds: float,
        release: Callable[[str, np.ndarray], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not hold_seconds > 0:
            raise ValueError(f"hold_seconds must be > 0, got {hold_seconds}")
        self.hold_seconds, self._release, self._clock = hold_seconds, release, clock
        self._held: deque[tuple[float, str, np.ndarray]] = deque()  # deadlines ascend: hold is fixed
        self._lock = threading.Lock()

    def hold(self, kind: str, ids: np.ndarray) -> None:
        ids = np.array(ids, dtype=np.int32, copy=True).reshape(-1)
        if ids.size == 0:
            return
        with self._lock:
            self._held.append((self._clock() + self.hold_seconds, kind, ids))
        logger.debug("quarantined %d %s items for %.0f s", ids.size, kind, self.hold_seconds)

    def poll(self) -> int:
        """Release every hold whose time has passed; returns the number of items released."""
        now = self._clock()
        due = []
        with self._lock:
            while self._held and self._held[0][0] <= now:
                due.append(self._held.popleft())
        return self._give_back(due)

    def flush(self) -> int:
        """Release everything now (shutdown only: a late write may still land)."""
        with self._lock:
            due, self._held = list(self._held), deque()
        return self._give_back(due)

    def num_held(self, kind: str | None = None) -> int:
        with self._lock:
            return sum(ids.size for _, k, ids in self._held if kind is None or k == kind)

    def held_items(self) -> dict[str, list[np.ndarray]]:
        """The ids held now per kind (for integrity checks)."""
        out: dict[str, list[np.ndarray]] = {}
        with self._lock:
            for _, kind, ids in self._held:
                out.setdefault(kind, []).append(ids)
        return out

    def _give_back(self, due: list[tuple[float, str, np.ndarray]]) -> int:
        for _, kind, ids in due:
            self._release(kind, ids)
        return sum(ids.size for _, _, ids in due)
