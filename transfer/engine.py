"""The transfer-engine interface: what a node needs to move items, and the typed outcome."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .layout import MemoryRegion
from .plan import TransferPlan

__all__ = [
    "DEFAULT_BATCH_ENTRIES",
    "TransferEngine",
    "TransferError",
    "TransferResult",
    "transfer_timeout_s",
]

PROTOCOLS = ("tcp", "rdma", "nvlink_intra")  # nvlink_intra: GPU to GPU in one host through CUDA IPC
DEFAULT_BATCH_ENTRIES = 1024  # entries per engine call: measured safe (~2,048 can break a peer)


class TransferError(RuntimeError):
    """A transfer (or engine setup) failed; ``peer`` and ``nbytes`` say where and how much had landed."""

    def __init__(self, message: str, peer: str = "", nbytes: int = 0) -> None:
        super().__init__(message)
        self.peer, self.nbytes = peer, nbytes

    def __reduce__(self):
        return type(self), (str(self), self.peer, self.nbytes)


@dataclass(frozen=True)
class TransferResult:
    """Outcome of one write. ``nbytes`` counts bytes confirmed written (whole batches)."""

    ok: bool
    nbytes: int
    entries: int
    batches: int
    seconds: float
    error: str | None = None
    cancelled: bool = False  # failed only because unsent batches were dropped; no write failed

    @property
    def needs_quarantine(self) -> bool:
        """A write failed: it may still land later, so its items (both ends) must wait out the timeout."""
        return not self.ok and not self.cancelled

    def raise_for_error(self, peer: str = "") -> None:
        if not self.ok:
            raise TransferError(self.error or "transfer failed", peer, self.nbytes)


@runtime_checkable
class TransferEngine(Protocol):
    """What the nodes need from a transfer engine, and nothing more."""

    @property
    def session_id(self) -> str: ...

    def register(self, regions: list[MemoryRegion]) -> None: ...

    def write(self, target_session: str, plan: TransferPlan) -> TransferResult: ...

    def probe(self, target_session: str) -> bool: ...

    def close(self) -> None: ...


def transfer_timeout_s() -> float:
    """Mooncake's transfer timeout (``MC_TRANSFER_TIMEOUT``, default 30 s): a failed
    write may still land up to this long after it was issued."""
    raw = os.environ.get("MC_TRANSFER_TIMEOUT", "30")
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"MC_TRANSFER_TIMEOUT must be a number of seconds, got {raw!r}") from None
