"""ExpiringMap: a small map whose entries expire after `ttl` seconds and that never holds more than
`max_items` (oldest dropped first). For facts worth remembering a while but never forever: tombstones of
requests aborted before they arrived, outcomes of finished transfers."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")


class ExpiringMap(Generic[V]):
    def __init__(self, ttl: float, max_items: int, clock: Callable[[], float] = time.monotonic) -> None:
        if ttl <= 0 or max_items <= 0:
            raise ValueError(f"ttl and max_items must be positive, got {ttl}, {max_items}")
        self.ttl, self.max_items, self._clock = ttl, max_items, clock
        self._items: OrderedDict[str, tuple[float, V]] = OrderedDict()

    def _expire(self) -> None:
        now = self._clock()
        while self._items:
            key, (at, _) = next(iter(self._items.items()))
            if now - at < self.ttl and len(self._items) <= self.max_items:
                break
            del self._items[key]

    def put(self, key: str, value: V) -> None:
        self._items.pop(key, None)
        self._items[key] = (self._clock(), value)
        self._expire()

    def get(self, key: str) -> V | None:
        self._expire()
        item = self._items.get(key)
        return None if item is None else item[1]

    def pop(self, key: str) -> V | None:
        self._expire()
        item = self._items.pop(key, None)
        return None if item is None else item[1]

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def __len__(self) -> int:
        self._expire()
        return len(self._items)
