"""Programmatic dependent launch (kernels/triton_utils.py): what the decode path's kernels lower to for sm_90,
compiled without a GPU, and when the launch keywords turn it on."""

from __future__ import annotations

import re

import pytest
import torch

from tests.kernels._ptx import needs_nvidia_compiler, sm90_ptx

pytest.importorskip("triton", reason="triton is not installed")

BF16 = "*bf16"
# a memory access of another kernel's data: loads, stores, async copies, atomics
ACCESS = re.compile(r"\b(ld|st|atom|red)\.global|\bcp\.async\.")
NAMES = ["skinny_linear", "skinny_add_norm_out", "skinny_rms_in", "skinny_rms_first", "skinny_qkv",
         "skinny_qkv_rms_in", "skinny_qkv_rms_first", "skinny_qkv_qk_norm", "skinny_qkv_qk_defer", "add_rmsnorm",
         "add_rmsnorm_rows", "embed_rope", "qk_rope_store", "silu_mul", "decode_split", "decode_split_preload",
         "decode_split_qk_defer", "decode_merge"]


def _kernels():
    """(name, kernel, pointers, constexprs, fp32 scalars, options) of each kernel that takes `PDL`."""
    from pdpair.kernels.attention.decode import _decode_merge_kernel, _decode_split_kernel
    from pdpair.kernels.fused.add_rmsnorm import _add_rmsnorm_kernel
    from pdpair.kernels.fused.embed_rope import _embed_rope_kernel
    from pdpair.kernels.fused.qk_rope_store import _qk_rope_store_kernel
    from pdpair.kernels.fused.silu_mul import _silu_mul_kernel
    from pdpair.kernels.fused.skinny_linear import _skinny_linear_kernel
    from pdpair.kernels.fused.skinny_qkv import _skinny_qkv_kernel

    i32, f32 = "*i32", "*fp32"
    rope = dict(HEADS=9, KV_HEADS=3, HALF=32, PAGE_SIZE=16)
    skinny_ptrs = dict(x=BF16, w=BF16, bias=BF16, y=BF16, parts_in=f32, g_out=BF16, xg_out=BF16, parts_out=f32)
    qkv_ptrs = dict(x=BF16, w=BF16, bias=BF16, cos=f32, sin=f32, q_out=BF16, k_cache=BF16, v_cache=BF16, slots="*i64")
    return [
        ("skinny_linear", _skinny_linear_kernel, dict(x=BF16, w=BF16, bias=BF16, y=BF16),
         dict(HAS_BIAS=False, GATED=True, BLOCK_M=16, BLOCK_N=8, BLOCK_K=128), (), dict(num_warps=2, num_stages=5)),
        ("skinny_add_norm_out", _skinny_linear_kernel, skinny_ptrs,
         dict(HAS_BIAS=False, GATED=False, BLOCK_M=16, BLOCK_N=8, BLOCK_K=128, ACCUMULATE=True, NORM_OUT=True),
         ("eps_in",), dict(num_warps=2, num_stages=5)),
        ("skinny_rms_in", _skinny_linear_kernel, skinny_ptrs,
         dict(HAS_BIAS=False, GATED=True, BLOCK_M=16, BLOCK_N=8, BLOCK_K=128, RMS_PARTS=128), ("eps_in",),
         dict(num_warps=2, num_stages=5)),
        ("skinny_rms_first", _skinny_linear_kernel, skinny_ptrs,
         dict(HAS_BIAS=False, GATED=True, BLOCK_M=16, BLOCK_N=8, BLOCK_K=128, RMS_PARTS=128, RMS_FIRST=True),
         ("eps_in",), dict(num_warps=2, num_stages=5)),
        ("skinny_qkv", _skinny_qkv_kernel, qkv_ptrs,
         dict(rope, HAS_BIAS=False, BLOCK_M=16, BLOCK_P=8, BLOCK_K=128), (), dict(num_warps=2, num_stages=5)),
        ("skinny_qkv_rms_in", _skinny_qkv_kernel, qkv_ptrs | dict(parts_in=f32),
         dict(rope, HAS_BIAS=False, BLOCK_M=16, BLOCK_P=8, BLOCK_K=128, RMS_PARTS=64), ("eps_in",),
         dict(num_warps=2, num_stages=5)),
        ("skinny_qkv_rms_first", _skinny_qkv_kernel, qkv_ptrs | dict(parts_in=f32),
         dict(rope, HAS_BIAS=False, BLOCK_M=16, BLOCK_P=8, BLOCK_K=128, RMS_PARTS=64, RMS_FIRST=True), ("eps_in",),
         dict(num_warps=2, num_stages=5)),
        ("skinny_qkv_qk_norm", _skinny_qkv_kernel, qkv_ptrs | dict(qn_w=BF16, kn_w=BF16, raw=f32, counters=i32),
         dict(rope, HAS_BIAS=False, BLOCK_M=16, BLOCK_P=8, BLOCK_K=128, QK_NORM=True, BLOCK_HALF=32), ("eps_qk",),
         dict(num_warps=2, num_stages=5)),
        ("skinny_qkv_qk_defer", _skinny_qkv_kernel, qkv_ptrs | dict(qn_w=BF16, kn_w=BF16, raw=f32, counters=i32),
         dict(rope, HAS_BIAS=False, BLOCK_M=16, BLOCK_P=8, BLOCK_K=128, QK_NORM=True, QK_DEFER=True,
              BLOCK_HALF=32), ("eps_qk",), dict(num_warps=2, num_stages=5)),
        ("add_rmsnorm", _add_rmsnorm_kernel, dict(x=BF16, res=BF16, w=BF16, out=BF16),
         dict(HAS_ADD=True, BLOCK=1024), ("eps",), dict(num_warps=4)),
        ("add_rmsnorm_rows", _add_rmsnorm_kernel, dict(x=BF16, res=BF16, w=BF16, out=BF16, rows="*i64"),
         dict(HAS_ADD=True, BLOCK=1024, HAS_ROWS=True), ("eps",), dict(num_warps=4)),
        ("embed_rope", _embed_rope_kernel,
         dict(ids="*i64", positions="*i64", weight=BF16, inv_freq=f32, emb=BF16, cos=BF16, sin=BF16),
         dict(HALF=64, BLOCK_H=4096, BLOCK_F=64, LIBDEVICE=True), (), dict(num_warps=4)),
        ("qk_rope_store", _qk_rope_store_kernel,
         {n: BF16 for n in ("qkv", "q_w", "k_w", "q_out", "k_out", "v_out", "k_cache", "v_cache")}
         | dict(cos=f32, sin=f32, slots="*i64"),
         dict(rope, BLOCK_H=16, BLOCK_KVH=4, BLOCK_HALF=32, QK_NORM=True), ("eps",), dict(num_warps=4)),
        ("silu_mul", _silu_mul_kernel, dict(gate_up=BF16, out=BF16), dict(BLOCK=1024), (), dict(num_warps=4)),
        ("decode_split", _decode_split_kernel,
         dict(q=BF16, k_cache=BF16, v_cache=BF16, kv_indptr=i32, kv_indices=i32, mid_o=f32, mid_lse=f32, o=BF16,
              counters=i32),
         dict(PAGE_SIZE=16, GROUP=3, BLOCK_H=16, BLOCK_N=64, HEAD_DIM=64, BLOCK_D=64, NUM_SPLITS=8,
              FUSED_MERGE=False, BLOCK_S=8, BLOCK_G=4), ("qk_scale",), dict(num_warps=4, num_stages=2)),
        ("decode_split_preload", _decode_split_kernel,
         dict(q=BF16, k_cache=BF16, v_cache=BF16, kv_indptr=i32, kv_indices=i32, mid_o=f32, mid_lse=f32, o=BF16,
              counters=i32),
         dict(PAGE_SIZE=16, GROUP=4, BLOCK_H=16, BLOCK_N=64, HEAD_DIM=128, BLOCK_D=128, NUM_SPLITS=32,
              FUSED_MERGE=True, BLOCK_S=32, BLOCK_G=4, PRELOAD=True), ("qk_scale",), dict(num_warps=8, num_stages=2)),
        ("decode_split_qk_defer", _decode_split_kernel,
         dict(q=BF16, k_cache=BF16, v_cache=BF16, kv_indptr=i32, kv_indices=i32, mid_o=f32, mid_lse=f32, o=BF16,
              counters=i32, qk_parts=f32, qk_slots="*i64"),
         dict(PAGE_SIZE=16, GROUP=4, BLOCK_H=16, BLOCK_N=64, HEAD_DIM=128, BLOCK_D=128, NUM_SPLITS=32,
              FUSED_MERGE=True, BLOCK_S=32, BLOCK_G=4, PRELOAD=True, QK_DEFER=True, BLOCK_PP=8),
         ("qk_scale", "qk_eps"), dict(num_warps=8, num_stages=2)),
        ("decode_merge", _decode_merge_kernel, dict(mid_o=f32, mid_lse=f32, o=BF16),
         dict(NUM_SPLITS=8, BLOCK_S=8, HEAD_DIM=64, BLOCK_D=64), (), dict(num_warps=2)),
    ]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", range(len(NAMES)), ids=NAMES)
def test_pdl_kernel_waits_before_any_access_and_then_releases_the_next(case):
    """With `PDL` a kernel's first instructions are the grid dependency wait and the release of the next
    kernel, before any global load or store: a kernel launched early must not read the previous kernel's
    output (or overwrite what it still reads) before that kernel is done. Without `PDL`, neither appears."""
    needs_nvidia_compiler()
    name, kernel, pointers, consts, floats, options = _kernels()[case]
    assert name == NAMES[case]
    on = sm90_ptx(kernel, pointers, consts | {"PDL": True}, floats, **options)
    wait, release = on.find("griddepcontrol.wait"), on.find("griddepcontrol.launch_dependents")
    assert 0 <= wait < release, (name, wait, release)
    if name == "decode_split":  # its row's kv_indptr pair and first kv_indices block: the step's metadata
        early = [line.strip() for line in on[:wait].splitlines() if ACCESS.search(line)]
        assert early and all(re.fullmatch(r"(@%p\d+ )?ld\.global\.b32 \{ %r\d+ \}, \[ %rd\d+ \+ 0 \];", line)
                             for line in early), early
        on = on[wait:]
    if name in ("decode_split_preload", "decode_split_qk_defer"):  # and the first block's K/V: loads only
        early = [line.strip() for line in on[:wait].splitlines() if ACCESS.search(line)]
        assert all(re.match(r"(@%p\d+ )?ld\.global\.", line) for line in early), early
        assert any(".b16 " in line for line in early), early  # bf16 K/V elements, not only the 32-bit indices
        on = on[wait:]
    first = ACCESS.search(on)
    assert first is not None and first.start() > on.find("griddepcontrol.launch_dependents"), (
        name, first and first.group(0))
    off = sm90_ptx(kernel, pointers, consts | {"PDL": False}, floats, **options)
    assert "griddepcontrol" not in off, name


@pytest.mark.timeout(300)
def test_late_release_follows_the_k_loop():
    """`skinny_linear_add(release_late=True)`: the wait still comes before any access of another kernel's data,
    and the release of the next kernel after the K loop's last MMA (its programs are placed once this kernel's
    loops are done); without PDL, neither appears."""
    needs_nvidia_compiler()
    from pdpair.kernels.fused.skinny_linear import _skinny_linear_kernel

    pointers = dict(x=BF16, w=BF16, bias=BF16, y=BF16, parts_in="*fp32", g_out=BF16, xg_out=BF16, parts_out="*fp32")
    consts = dict(HAS_BIAS=False, GATED=False, BLOCK_M=16, BLOCK_N=8, BLOCK_K=128, ACCUMULATE=True, NORM_OUT=True,
                  RELEASE_LATE=True)
    on = sm90_ptx(_skinny_linear_kernel, pointers, consts | {"PDL": True}, ("eps_in",), num_warps=2, num_stages=5)
    wait, release = on.find("griddepcontrol.wait"), on.find("griddepcontrol.launch_dependents")
    first = ACCESS.search(on)
    assert 0 <= wait < first.start() < release, (wait, first.start(), release)
    mmas = [m.start() for m in re.finditer(r"\bw?mma\.", on)]
    assert mmas and max(mmas) < release, (len(mmas), release)
    assert on.count("griddepcontrol.launch_dependents") == 1
    off = sm90_ptx(_skinny_linear_kernel, pointers, consts | {"PDL": False}, ("eps_in",), num_warps=2, num_stages=5)
    assert "griddepcontrol" not in off


@pytest.mark.timeout(300)
@pytest.mark.parametrize("gated", [False, True])
def test_skinny_prefetch_touches_only_the_weight_before_the_wait(gated):
    """A small weight's first K blocks are prefetched to L2 before the wait (one address per 128-byte line of
    each program row: PREFETCH_K / 64 per row, twice for a gated weight's gate and up rows); nothing else is
    read or written before it."""
    needs_nvidia_compiler()
    from pdpair.kernels.fused.skinny_linear import _skinny_linear_kernel

    consts = dict(HAS_BIAS=False, GATED=gated, BLOCK_M=16, BLOCK_N=8, BLOCK_K=128, PDL=True, PREFETCH_K=256)
    ptx = sm90_ptx(_skinny_linear_kernel, dict(x=BF16, w=BF16, bias=BF16, y=BF16), consts, num_warps=2,
                   num_stages=5)
    wait = ptx.find("griddepcontrol.wait")
    before = ptx[:wait]
    lines = 8 * (256 // 64) * (2 if gated else 1)  # rows x lines per row x (gate, up)
    per_thread = before.count("prefetch.global.L2")
    assert per_thread * 64 >= lines and per_thread >= 1, (per_thread, lines)  # 2 warps: 64 threads share them
    assert ACCESS.search(before) is None, ACCESS.search(before).group(0)
    no_prefetch = sm90_ptx(_skinny_linear_kernel, dict(x=BF16, w=BF16, bias=BF16, y=BF16),
                           consts | {"PREFETCH_K": 0}, num_warps=2, num_stages=5)
    assert "prefetch.global" not in no_prefetch


def test_launch_keywords_turn_pdl_on_only_where_it_can_run(monkeypatch):
    """On a CPU tensor (the interpreter's, or no GPU), over more than PDL_MAX_ROWS rows and with PDPAIR_PDL=0
    the kernels get `PDL=False` and no `launch_pdl`; the skinny kernels then prefetch nothing either (a
    prefetch only pays before a wait). On an sm_90+ GPU a small launch gets both, and a small weight its
    prefetch."""
    from pdpair.kernels import triton_utils
    from pdpair.kernels.fused.skinny_linear import (
        PREFETCH_BLOCKS,
        PREFETCH_MAX_BYTES,
        PREFETCH_MIN_K,
        launch_extras,
    )
    from pdpair.kernels.triton_utils import PDL_ENV, PDL_MAX_ROWS, pdl_launch

    w = torch.zeros(64, 64, dtype=torch.bfloat16)
    assert pdl_launch(w, 1) == {"PDL": False} and launch_extras(w, 1, 128) == {"PDL": False}
    # the same decisions as on an sm_90 device, for a tensor that says it is on one
    fake = type("CudaTensor", (), {"is_cuda": True, "device": torch.device("cuda", 0), "numel": w.numel,
                                   "element_size": w.element_size})()
    monkeypatch.setattr(triton_utils, "_pdl_capable", lambda index: True)
    monkeypatch.setattr(triton_utils, "interpreting", lambda: False)
    if triton_utils.gdc_wait is None:
        pytest.skip("this Triton has no grid dependency control")
    assert pdl_launch(fake, PDL_MAX_ROWS) == {"PDL": True, "launch_pdl": True}
    want_k = max(PREFETCH_BLOCKS * 128, PREFETCH_MIN_K)
    assert launch_extras(fake, 1, 128) == {"PDL": True, "launch_pdl": True, "PREFETCH_K": want_k}
    assert pdl_launch(fake, PDL_MAX_ROWS + 1) == {"PDL": False}
    big = type("CudaTensor", (), {"is_cuda": True, "device": torch.device("cuda", 0),
                                  "numel": lambda self: PREFETCH_MAX_BYTES, "element_size": lambda self: 2})()
    assert launch_extras(big, 1, 128) == {"PDL": True, "launch_pdl": True}  # over the prefetch limit
    monkeypatch.setattr(triton_utils, "_pdl_capable", lambda index: False)
    assert pdl_launch(fake, 1) == {"PDL": False}  # before sm_90
    monkeypatch.setattr(triton_utils, "_pdl_capable", lambda index: True)
    monkeypatch.setenv(PDL_ENV, "0")
    assert pdl_launch(fake, 1) == {"PDL": False}
