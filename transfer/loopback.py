"""A transfer peer in its own OS process, for two-process loopback checks.

``LoopbackPeer`` starts a spawned child that owns shared-memory regions,
registers them with a ``MooncakeEngine`` and executes sends on request. The
parent reads and fills the same bytes through the shared memory, so it can check what
landed without going through the engine. Used by the transfer tests and
``bench/transfer.py``; it needs only numpy and Mooncake.
"""

from __future__ import annotations

import multiprocessing as mp
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

from .engine import DEFAULT_BATCH_ENTRIES, TransferResult
from .layout import MemoryLayout, MemoryRegion
from .plan import TransferPlan, build_plan
from .worker import TransferWorkers

__all__ = ["LoopbackPeer"]

RegionSpec = tuple[str, int, int, str]  # kind, item_bytes, num_items, dtype


def _serve(conn, node_id: str, specs: list[tuple[RegionSpec, str]], page_size: int, fingerprint: str,
           timeout_s: float | None, batch_entries: int) -> None:  # fmt: skip
    from .mooncake_engine import MooncakeEngine

    shms, regions = [], []
    for (kind, item_bytes, num_items, dtype), name in specs:
        shm = SharedMemory(name=name)  # the parent owns it and unlinks it
        shms.append(shm)
        base = np.frombuffer(shm.buf, dtype=np.uint8).ctypes.data
        regions.append(MemoryRegion(kind, base, item_bytes, num_items, dtype))
    engine = MooncakeEngine(timeout_s=timeout_s, max_batch_entries=batch_entries)
    engine.register(regions)
    layout = MemoryLayout(node_id, engine.session_id, "tcp", page_size, fingerprint, tuple(regions))
    conn.send(("ok", layout))
    workers = TransferWorkers(engine, num_threads=2, batch_entries=batch_entries)

    def send_many(dst: MemoryLayout, requests: list[dict]) -> list[TransferResult]:
        plans = [build_plan(layout, dst, pairs) for pairs in requests]
        futures = [workers.submit(f"r{i}", dst.session_id, p) for i, p in enumerate(plans)]
        return [f.result() for f in futures]

    ops = {
        "send": lambda dst, pairs: engine.write(dst.session_id, build_plan(layout, dst, pairs)),
        "send_many": send_many,
        "write": engine.write,
        "probe": engine.probe,
    }
    while True:
        op, args = conn.recv()
        if op == "close":
            break
        try:
            conn.send(("ok", ops[op](*args)))
        except Exception as err:
            conn.send(("err", err))
    workers.shutdown()
    engine.close()
    conn.send(("ok", None))


class LoopbackPeer:
    """Parent-side handle of a child process holding a ``MooncakeEngine``.

    ``regions`` lists ``(kind, item_bytes, num_items, dtype)``. Exceptions raised
    in the child (``InvalidPages``, ``ProtocolError``...) are re-raised here.
    """

    def __init__(
        self,
        node_id: str,
        regions: list[RegionSpec],
        *,
        page_size: int = 16,
        fingerprint: str = "",
        timeout_s: float | None = None,
        batch_entries: int = DEFAULT_BATCH_ENTRIES,
        start_timeout_s: float = 60.0,
    ) -> None:
        ctx = mp.get_context("spawn")
        self._shms = {spec[0]: SharedMemory(create=True, size=spec[1] * spec[2]) for spec in regions}
        self._conn, child = ctx.Pipe()
        args = (child, node_id, [(s, self._shms[s[0]].name) for s in regions], page_size, fingerprint,
                timeout_s, batch_entries)  # fmt: skip
        self.process = ctx.Process(target=_serve, args=args, name=f"loopback-{node_id}", daemon=True)
        self.process.start()
        child.close()
        self.layout: MemoryLayout = self._reply(start_timeout_s)

    def read(self, kind: str) -> np.ndarray:
        """A copy of the region's bytes as ``[num_items, item_bytes]`` uint8."""
        return self._view(kind).copy()

    def fill(self, kind: str, data: np.ndarray) -> None:
        """Overwrite the region's bytes (broadcast to ``[num_items, item_bytes]``)."""
        self._view(kind)[...] = data

    def _view(self, kind: str) -> np.ndarray:
        # views are never handed out: a live export would keep the mapping from closing
        region = self.layout.region(kind)
        flat = np.frombuffer(self._shms[kind].buf, dtype=np.uint8)[: region.nbytes]
        return flat.reshape(region.num_items, region.item_bytes)

    def send(self, dst: MemoryLayout, pairs_by_kind: dict[str, tuple[np.ndarray, np.ndarray]],
             timeout_s: float = 120.0) -> TransferResult:  # fmt: skip
        """Build the plan in the child (its own layout → ``dst``) and write it."""
        return self._call("send", (dst, pairs_by_kind), timeout_s)

    def send_many(
        self, dst: MemoryLayout, requests: list[dict], timeout_s: float = 120.0
    ) -> list[TransferResult]:
        """Send several requests' pairs at once through the child's ``TransferWorkers`` (two threads)."""
        return self._call("send_many", (dst, requests), timeout_s)

    def write(self, target_session: str, plan: TransferPlan, timeout_s: float = 120.0) -> TransferResult:
        return self._call("write", (target_session, plan), timeout_s)

    def probe(self, target_session: str, timeout_s: float = 30.0) -> bool:
        return self._call("probe", (target_session,), timeout_s)

    def kill(self) -> None:
        self.process.kill()
        self.process.join(10)

    def close(self) -> None:
        if self.process.is_alive():
            try:
                self._call("close", (), 30.0)
            except (TimeoutError, EOFError, OSError):
                pass
            self.process.join(10)
            if self.process.is_alive():
                self.kill()
        self._conn.close()
        for shm in self._shms.values():
            shm.close()
            shm.unlink()
        self._shms.clear()

    def _call(self, op: str, args: tuple, timeout_s: float) -> Any:
        self._conn.send((op, args))
        return self._reply(timeout_s)

    def _reply(self, timeout_s: float) -> Any:
        if not self._conn.poll(timeout_s):
            raise TimeoutError(f"peer {self.process.name} did not answer within {timeout_s} s")
        status, value = self._conn.recv()
        if status == "err":
            raise value
        return value
