"""An in-process memmove engine for unit tests of the code around the transfer engine."""

from __future__ import annotations

import ctypes
import itertools
import threading
import time

from pdpair.transfer import MemoryRegion, TransferPlan, TransferResult

_SESSIONS: dict[str, MemmoveEngine] = {}
_IDS = itertools.count()


class MemmoveEngine:
    """Writes with ``ctypes.memmove`` to another engine of this process.

    ``gate`` (an Event) blocks every write until set; ``fail_batches`` lists the
    zero-based write calls that fail without moving a byte.
    """

    def __init__(self, gate: threading.Event | None = None, fail_batches: set[int] | None = None) -> None:
        self.session_id = f"local:{next(_IDS)}"
        self.regions: list[MemoryRegion] = []
        self.gate, self.fail_batches = gate, fail_batches or set()
        self.calls = 0
        self.started = threading.Semaphore(0)  # released once per write call that began
        self._lock = threading.Lock()
        _SESSIONS[self.session_id] = self

    def register(self, regions: list[MemoryRegion]) -> None:
        self.regions += regions

    def _inside(self, addr: int, n: int) -> bool:
        return any(r.base_ptr <= addr and addr + n <= r.end_ptr for r in self.regions)

    def write(self, target_session: str, plan: TransferPlan) -> TransferResult:
        with self._lock:
            call, self.calls = self.calls, self.calls + 1
        self.started.release()
        if self.gate is not None:
            self.gate.wait()
        t0 = time.perf_counter()
        peer = _SESSIONS.get(target_session)
        if peer is None or call in self.fail_batches:
            return TransferResult(False, 0, 0, 1, 0.0, f"write to {target_session} failed (call {call})")
        for s, d, n in zip(
            plan.src_addrs.tolist(), plan.dst_addrs.tolist(), plan.lengths.tolist(), strict=True
        ):
            assert self._inside(s, n) and peer._inside(d, n), (s, d, n)
            ctypes.memmove(d, s, n)
        return TransferResult(True, plan.nbytes, len(plan), 1, time.perf_counter() - t0)

    def probe(self, target_session: str) -> bool:
        return target_session in _SESSIONS

    def close(self) -> None:
        _SESSIONS.pop(self.session_id, None)
