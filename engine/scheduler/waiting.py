"""Admission: FIFO queue of waiting requests, admitted while pages (beyond a decode reserve) and rows last."""

from __future__ import annotations

from collections import deque

from pdpair.engine.request import ReqStatus, Request
from pdpair.engine.scheduler.resources import ResourceManager


class WaitingQueue:
    def __init__(self, resources: ResourceManager) -> None:
        self.resources = resources
        self._queue: deque[Request] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def push(self, req: Request, front: bool = False) -> None:
        req.status = ReqStatus.WAITING
        if front:
            self._queue.appendleft(req)
        else:
            self._queue.append(req)

    def remove(self, req: Request) -> None:
        self._queue.remove(req)

    def next_batch(self, reserve_pages: int, slots: int) -> list[Request]:
        """Admit from the head while it fits (no skipping ahead, so a long prompt is never starved)."""
        admitted: list[Request] = []
        while self._queue and len(admitted) < slots:
            req = self._queue[0]
            if not self.resources.acquire(req, req.seq_len, reserve_pages + len(admitted)):
                break
            self._queue.popleft()
            req.status = ReqStatus.PREFILLING
            admitted.append(req)
        return admitted
