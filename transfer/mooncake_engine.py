"""``MooncakeEngine``: the Mooncake Transfer Engine behind the ``TransferEngine`` interface.

P2P handshake, no metadata server. The measured behaviour it relies on is in
MOONCAKE.md: large batches break a peer, so plans are split; return codes never
raise, so they become ``TransferResult``s; Mooncake does not check the source
side over TCP, so it is checked here; ``MC_LOG_DIR`` aborts the process.

Exposure: the engine (0.3.x) listens on every interface, unauthenticated, whatever host it is given
(``MC_TCP_BIND_ADDRESS`` only picks the advertised address); ``MC_MIN_RPC_PORT``/``MC_MAX_RPC_PORT`` bound
its ports (15000-17000 by default). Only a firewall or NetworkPolicy can keep other hosts off them.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import numpy as np

from .engine import DEFAULT_BATCH_ENTRIES, PROTOCOLS, TransferError, TransferResult, transfer_timeout_s
from .layout import MemoryRegion
from .plan import TransferPlan

__all__ = ["MooncakeEngine"]

logger = logging.getLogger(__name__)

_QUEUE_LIMIT = 65535
_INSTALL_HINT = (
    "the Mooncake transfer engine is not available ({err}); install it with "
    "`pip install 'pdpair[mooncake]'` (mooncake-transfer-engine-non-cuda on CPU hosts, "
    "mooncake-transfer-engine on CUDA hosts) and the system library libibverbs.so.1 "
    "(`apt-get install libibverbs1`), which Mooncake needs even for TCP"
)


def _prepare_env(timeout_s: float | None, protocol: str) -> None:
    """Environment Mooncake reads at ``initialize()``."""
    if os.environ.pop("MC_LOG_DIR", None) is not None:
        logger.warning("ignoring MC_LOG_DIR: it aborts the Mooncake engine")
    queued = int(os.environ.setdefault("MC_TCP_MAX_QUEUED_TRANSFERS_PER_PEER", str(_QUEUE_LIMIT)))
    if queued < 4 * DEFAULT_BATCH_ENTRIES:
        logger.warning(
            "MC_TCP_MAX_QUEUED_TRANSFERS_PER_PEER=%d is low; large batches may break peers", queued
        )
    os.environ.setdefault("MC_LOG_LEVEL", "ERROR")
    if protocol == "nvlink_intra":  # the protocol decides: Mooncake picks the transport from this variable
        os.environ["MC_INTRANODE_NVLINK"] = "1"
    else:
        os.environ.pop("MC_INTRANODE_NVLINK", None)
    if timeout_s is not None:
        os.environ["MC_TRANSFER_TIMEOUT"] = str(max(1, round(timeout_s)))


def _import_engine() -> type:
    try:
        from mooncake.engine import TransferEngine as _MooncakeTE
    except ImportError as err:
        raise ImportError(_INSTALL_HINT.format(err=err)) from err
    return _MooncakeTE


class MooncakeEngine:
    """A Mooncake transfer engine over TCP (default), RDMA or intra-host NVLink, paired by P2P handshake.

    ``timeout_s`` sets ``MC_TRANSFER_TIMEOUT`` (process-wide, whole seconds).

    Thread-safe for ``write``/``probe`` (Mooncake releases the GIL); register
    regions before the first write. ``close()`` blocks about one second.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        protocol: str = "tcp",
        devices: list[str] | None = None,
        *,
        max_batch_entries: int = DEFAULT_BATCH_ENTRIES,
        timeout_s: float | None = None,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        if max_batch_entries < 1:
            raise ValueError(f"max_batch_entries must be >= 1, got {max_batch_entries}")
        _prepare_env(timeout_s, protocol)
        self.protocol, self.max_batch_entries = protocol, max_batch_entries
        # a failed write may land up to this long after it was issued: size quarantines from it
        self.transfer_timeout_s = transfer_timeout_s()
        host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host  # Mooncake picks the port
        self._engine = _import_engine()()
        rc = self._engine.initialize(host, "P2PHANDSHAKE", protocol, ",".join(devices or []))
        if rc != 0:
            raise TransferError(f"Mooncake initialize({host!r}, {protocol!r}) returned {rc}")
        self._session_id = f"{host}:{self._engine.get_rpc_port()}"
        self._regions: tuple[MemoryRegion, ...] = ()
        self._lock = threading.Lock()
        logger.info("transfer engine up: session %s over %s", self._session_id, protocol)
        logger.log(logging.INFO if host in ("127.0.0.1", "localhost", "::1") else logging.WARNING,
                   "the Mooncake transfer engine listens on every interface without authentication (ports "
                   "%s-%s): keep them reachable from peer nodes only (firewall or NetworkPolicy)",
                   os.environ.get("MC_MIN_RPC_PORT", "15000"), os.environ.get("MC_MAX_RPC_PORT", "17000"))

    @property
    def session_id(self) -> str:
        return self._session_id

    @property
    def regions(self) -> tuple[MemoryRegion, ...]:
        return self._regions

    def register(self, regions: list[MemoryRegion]) -> None:
        """Register each region's buffer; raise ``TransferError`` on failure."""
        with self._lock:
            engine = self._live()
            for r in regions:
                if r in self._regions or r.nbytes == 0:
                    continue
                rc = engine.register_memory(r.base_ptr, r.nbytes)
                if rc != 0:
                    raise TransferError(f"register_memory({r.kind}, {r.nbytes} bytes) returned {rc}")
                self._regions = (*self._regions, r)

    def write(self, target_session: str, plan: TransferPlan) -> TransferResult:
        """Write ``plan`` to the peer in batches of at most ``max_batch_entries``.

        Stops at the first failed batch. Whatever a failed write touched may
        still change until well past ``transfer_timeout_s``: quarantine it.
        """
        start = time.perf_counter()
        engine = self._live()
        self._check_sources(plan)
        done_bytes = done_entries = 0
        batches = plan.batches(self.max_batch_entries)
        for i, batch in enumerate(batches):
            rc = engine.batch_transfer_sync_write(
                target_session, batch.src_addrs.tolist(), batch.dst_addrs.tolist(), batch.lengths.tolist()
            )
            if rc != 0:
                error = (
                    f"write to {target_session} failed (rc={rc}) in batch {i + 1}/{len(batches)} "
                    f"({len(batch)} entries, {batch.nbytes} bytes); {done_bytes} of {plan.nbytes} bytes confirmed"
                )
                logger.warning(error)
                return TransferResult(
                    False, done_bytes, done_entries, i + 1, time.perf_counter() - start, error
                )
            done_bytes += batch.nbytes
            done_entries += len(batch)
        return TransferResult(True, done_bytes, done_entries, len(batches), time.perf_counter() - start)

    def probe(self, target_session: str) -> bool:
        """True when the peer answers a handshake probe."""
        engine = self._engine
        return engine is not None and engine.send_probe(target_session) == 0

    def close(self) -> None:
        """Unregister and destroy the engine (blocks about one second). Idempotent."""
        with self._lock:
            engine, self._engine = self._engine, None
            if engine is None:
                return
            for r in self._regions:
                engine.unregister_memory(r.base_ptr)
            self._regions = ()
        del engine
        logger.info("transfer engine %s closed", self._session_id)

    def __enter__(self) -> MooncakeEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _live(self):
        if self._engine is None:
            raise TransferError(f"transfer engine {self._session_id} is closed")
        return self._engine

    def _check_sources(self, plan: TransferPlan) -> None:
        """Mooncake does not check sources over TCP: every entry must lie in a registered region."""
        if len(plan) == 0:
            return
        regions = sorted(self._regions, key=lambda r: r.base_ptr)
        bases = np.array([r.base_ptr for r in regions], dtype=np.uint64)
        ends = np.array([r.end_ptr for r in regions], dtype=np.uint64)
        idx = np.searchsorted(bases, plan.src_addrs, side="right").astype(np.int64) - 1
        inside = idx >= 0
        inside[inside] &= plan.src_addrs[inside] + plan.lengths[inside] <= ends[idx[inside]]
        if not inside.all():
            k = int(np.flatnonzero(~inside)[0])
            raise ValueError(
                f"source entry {k} [{int(plan.src_addrs[k]):#x}, +{int(plan.lengths[k])}) "
                f"is outside the registered regions"
            )
