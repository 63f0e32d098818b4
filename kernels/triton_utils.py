"""Lazy Triton import: kernel modules import on a box without Triton; launching one then says what to install.

Also the programmatic dependent launch (PDL) switch of the decode path's kernels (`pdl_launch`, `pdl_prologue`).

FP fusion (a * b + c compiled to one FMA) stays on: the kernels' numerics and speed were measured with it, Triton's
default through 3.9, which 3.10 turns off. `TRITON_DEFAULT_FP_FUSION` is set to 1 at import unless the
environment already sets it (a user's 0 still wins).
"""

import functools
import os

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
    try:  # grid dependency control (sm_90+); Triton before 3.3 has none
        from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
    except ImportError:
        gdc_launch_dependents = gdc_wait = None
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
    gdc_launch_dependents = gdc_wait = None


def interpreting() -> bool:
    """True when kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


PDL_ENV = "PDPAIR_PDL"  # "0": launch the decode path's kernels without PDL
PDL_MAX_ROWS = 16  # launches over more rows (tokens, decode rows) go without PDL


@functools.cache
def _pdl_capable(device_index: int) -> bool:
    import torch

    return torch.cuda.get_device_capability(device_index)[0] >= 9


def pdl_launch(t, rows: int) -> dict:
    """Launch keywords for a kernel taking a `PDL` constexpr, on the device of tensor `t`, over `rows` rows.

    With programmatic dependent launch (sm_90+, CUDA graphs keep it) a kernel's programs are placed on the
    SMs as soon as every program of the kernel before it in the stream has started, instead of after that
    kernel has drained; each waits in `pdl_prologue` until the previous kernel's writes are visible. A decode step at batch 1 is a chain of
    ~300 kernels of a few microseconds each, so the launch gaps are a large part of it: on an H200 PDL took
    the SmolLM2-shape step at batch 1 from 0.878 to 0.683 ms and an 8B model's from 4.429 to 4.328 ms. At
    batch 64 it cost 3.5% on the SmolLM2 shape (1.974 vs 2.05 ms; no change on the 8B shape), so it is only
    for launches over at most `PDL_MAX_ROWS` rows. Off on the CPU interpreter, before sm_90, with a Triton
    without grid dependency control, and with `PDPAIR_PDL=0`.
    """
    on = (rows <= PDL_MAX_ROWS and gdc_wait is not None and t.is_cuda and not interpreting()
          and os.environ.get(PDL_ENV, "1") != "0" and _pdl_capable(t.device.index or 0))
    return {"PDL": True, "launch_pdl": True} if on else {"PDL": False}


if HAS_TRITON:
    @triton.jit
    def pdl_prologue(PDL: tl.constexpr):
        """First statement of a PDL kernel, before any load of another kernel's output and before any store:
        wait until the previous kernel in the stream has finished and its writes are visible, then let the
        next kernel launch. Every PDL kernel waits, so a chain of them stays ordered: kernel C, released by
        B, waits for B, which finished only after waiting for A."""
        pdl_wait(PDL)
        pdl_release(PDL)

    @triton.jit
    def pdl_wait(PDL: tl.constexpr):
        """`pdl_prologue`'s wait alone, for a kernel that releases the next one later (`pdl_release`): the next
        kernel's programs are then placed on the SMs later, when they no longer compete with this kernel's."""
        if PDL:
            gdc_wait()

    @triton.jit
    def pdl_release(PDL: tl.constexpr):
        """Let the next kernel launch (after `pdl_wait`; the chain stays ordered as under `pdl_prologue`)."""
        if PDL:
            gdc_launch_dependents()

    @triton.jit
    def prefetch_l2(ptrs, mask):
        """Start moving the lines at `ptrs` (where `mask`) into L2 without waiting for them: a PDL kernel
        issues this for its weight (no kernel's output) before `pdl_prologue`, so the first loads after the
        wait hit L2 instead of paying the DRAM latency while the pipeline fills."""
        tl.inline_asm_elementwise(
            "{ .reg .pred p; setp.ne.b32 p, $2, 0; @p prefetch.global.L2 [$1]; mov.b32 $0, 0; }",
            "=r,l,r", [ptrs.to(tl.int64, bitcast=True), mask.to(tl.int32)], dtype=tl.int32, is_pure=False, pack=1)
else:
    pdl_prologue = pdl_wait = pdl_release = prefetch_l2 = None


__all__ = ["HAS_TRITON", "PDL_ENV", "PDL_MAX_ROWS", "interpreting", "pdl_launch", "pdl_prologue", "pdl_release",
           "pdl_wait", "prefetch_l2", "tl", "triton"]
