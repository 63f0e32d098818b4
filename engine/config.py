"""The runtime's knobs: one frozen dataclass, every "auto" value resolved before it is built."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
from pdpair.engine.debug.config import DumpConfig

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BACKENDS = ("torch", "triton")
# Fraction of free device memory the KV pool may take when `max_pages` is not given.
DEFAULT_MEM_FRACTION = float(os.environ.get("PDPAIR_MEM_FRACTION", "0.5"))


@dataclass(frozen=True)
class EngineConfig:
    """Resolved runtime configuration (no "auto" or None left)."""

    device: str = "cpu"
    dtype: str = "float32"
    page_size: int = 16
    max_pages: int = 1024
    chunk_size: int = 512
    max_running_requests: int = 256
    attention_backend: str = "torch"
    seed: int = 0
    disable_cuda_graph: bool = False  # CUDA graphs for decode (CUDA devices with a backend that supports them)
    fused_ops: bool = True  # fused norm/rope/activation kernels (CUDA, triton backend, no dumping): fewer launches
    extend_sdpa: bool = True  # triton backend: prefill chunks without a cached prefix through torch SDPA (cuDNN)
    dump: DumpConfig | None = None  # tensor dumps for pdpair-compare (off: None); dumping runs decode eagerly
    prefix_cache: bool = False  # keep finished requests' pages in a radix cache and reuse matching prefixes
    # decode: launch step k before reading step k-1's tokens, so the host work overlaps the device's (engines
    # built with `overlap_schedule=None` turn it on for CUDA; on CPU torch ops are synchronous: nothing to gain)
    overlap_schedule: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.attention_backend not in BACKENDS:
            raise ValueError(f"attention_backend must be one of {BACKENDS}, got {self.attention_backend!r}")
        for name in ("page_size", "max_pages", "chunk_size", "max_running_requests"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"EngineConfig.{name} must be a positive int, got {value!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


def dtype_name(dtype: torch.dtype) -> str:
    """"float32" / "bfloat16" / "float16" for a torch dtype the pools support."""
    for name, value in DTYPES.items():
        if value == dtype:
            return name
    raise ValueError(f"unsupported dtype {dtype}; supported: {sorted(DTYPES)}")


def resolve_backend(name: str, device: str) -> str:
    """"auto" → triton on CUDA when its backend module imports, else torch."""
    if name != "auto":
        return name
    if device.startswith("cuda"):
        try:
            import pdpair.engine.attention.triton_backend  # noqa: F401
        except ImportError as exc:
            logger.info("triton attention backend unavailable (%s); using torch", exc)
        else:
            return "triton"
    return "torch"


def resolve_max_pages(device: str, page_bytes: int, mem_fraction: float = DEFAULT_MEM_FRACTION) -> int:
    """Pages that fit in `mem_fraction` of the device's free memory (CPU: available RAM, capped at 4 GiB)."""
    if not 0 < mem_fraction <= 1:
        raise ValueError(f"memory fraction must be in (0, 1], got {mem_fraction}")
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        budget = free * mem_fraction
    else:
        budget = min(_available_ram() * mem_fraction, 4 << 30)
    pages = int(budget // page_bytes)
    if pages <= 0:
        raise ValueError(f"not enough memory for one KV page of {page_bytes} bytes on {device}")
    return pages


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30
