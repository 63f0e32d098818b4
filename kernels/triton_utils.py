"""Lazy Triton import: kernel modules import on a box without Triton; launching one then says what to install."""

import os

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # a CPU box without Triton: the torch twins still work
    HAS_TRITON = False

    _HINT = "Triton is not installed: `pip install 'pdpair[triton]'` (or use the torch attention backend)"

    class _MissingKernel:
        def __init__(self, fn):
            self.fn = fn

        def __getitem__(self, grid):
            raise ImportError(f"{self.fn.__name__}: {_HINT}")

    class _TritonStub:
        @staticmethod
        def jit(fn=None, **_kwargs):
            return _MissingKernel(fn) if fn is not None else _MissingKernel

        @staticmethod
        def cdiv(a: int, b: int) -> int:
            return -(-a // b)

        @staticmethod
        def next_power_of_2(n: int) -> int:
            return 1 << max(n - 1, 0).bit_length()

    class _LanguageStub:
        constexpr = object

    triton = _TritonStub()
    tl = _LanguageStub()


def interpreting() -> bool:
    """True when kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


__all__ = ["HAS_TRITON", "interpreting", "tl", "triton"]
