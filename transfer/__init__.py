from .coalesce import contiguous_runs, group_concurrent_contiguous
from .engine import DEFAULT_BATCH_ENTRIES, TransferEngine, TransferError, TransferResult, transfer_timeout_s
from .layout import LayoutMismatch, MemoryLayout, MemoryRegion, check_compatible
from .mooncake_engine import MooncakeEngine
from .pages import (
    dsa_pages,
    kv_pages,
    kv_to_page_indices,
    mamba_slot,
    num_pages,
    registered_pages,
    state_seq_len,
    swa_window,
    swa_window_pages,
)
from .plan import InvalidPages, ProtocolError, TransferPlan, build_plan
from .quarantine import Quarantine, default_hold_seconds
from .worker import TransferWorkers

__all__ = [
    "DEFAULT_BATCH_ENTRIES",
    "InvalidPages",
    "LayoutMismatch",
    "MemoryLayout",
    "MemoryRegion",
    "MooncakeEngine",
    "ProtocolError",
    "Quarantine",
    "TransferEngine",
    "TransferError",
    "TransferPlan",
    "TransferResult",
    "TransferWorkers",
    "build_plan",
    "check_compatible",
    "contiguous_runs",
    "default_hold_seconds",
    "dsa_pages",
    "group_concurrent_contiguous",
    "kv_pages",
    "kv_to_page_indices",
    "mamba_slot",
    "num_pages",
    "registered_pages",
    "state_seq_len",
    "swa_window",
    "swa_window_pages",
    "transfer_timeout_s",
]
