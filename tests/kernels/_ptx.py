"""Kernels compiled ahead of time for sm_90 with Triton's bundled toolchain: no GPU needed, so CPU tests can
hold what a kernel lowers to (atomics, cache modifiers, grid dependency control)."""

from __future__ import annotations

import pytest


def needs_nvidia_compiler() -> None:
    """Skip unless Triton's compiler with its nvidia backend is here (not the interpreter)."""
    from pdpair.kernels.triton_utils import interpreting

    try:
        from triton.backends import backends
    except ImportError:
        pytest.skip("triton is not installed")
    if interpreting() or "nvidia" not in backends:
        pytest.skip("needs Triton's compiler with its nvidia backend (not the interpreter)")


def sm90_ptx(kernel, pointers: dict[str, str], consts: dict, floats: tuple[str, ...] = (), **options) -> str:
    """PTX of `kernel` for sm_90: `pointers` maps pointer arguments to Triton types (`"*bf16"`), `consts` gives
    the constexprs (those left out take their defaults), `floats` names the fp32 scalars; other arguments are
    i32."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    consts = {p.name: p.default for p in kernel.params if p.is_constexpr and p.has_default} | consts
    names = kernel.arg_names
    sig = {n: pointers.get(n) or ("constexpr" if n in consts else "fp32" if n in floats else "i32") for n in names}
    src = ASTSource(kernel, sig, constexprs={(names.index(k),): v for k, v in consts.items()})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options).asm["ptx"]


def sm90_gluon_ptx(kernel, args: dict, consts: dict, **options) -> str:
    """`sm90_ptx` for a Gluon kernel: `args` maps its runtime arguments to example values (CPU tensors, TMA
    descriptors made from them, Python scalars), whose types form the signature."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    names = kernel.arg_names
    consts = {p.name: p.default for p in kernel.params if p.is_constexpr and p.has_default} | consts
    sig = {n: "constexpr" if n in consts else mangle_type(args[n]) for n in names}
    src = GluonASTSource(kernel, sig, {(names.index(k),): v for k, v in consts.items()})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options).asm["ptx"]
