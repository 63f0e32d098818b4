"""Batch-1 projections with the weight in flight across the launch edge (Hopper, Gluon + TMA).

At batch 1 a decode step of an 8B model is a chain of dependent launches, each a projection streaming tens of
MB of weight. `skinny_linear` pays about 2.5 us per projection over its bytes at the copy rate: under PDL its
programs can prefetch a block of weight to L2 before they wait for the kernel before, but the pipelined loads
into shared memory start only after the wait, together with the input vector's. Here each of about one program
per SM issues TMA copies of its first `RING - 1` weight steps (128 KB) into a shared-memory ring before the PDL
wait (the weight is no kernel's output), then fetches the input vector by TMA after it, so DRAM keeps streaming
while the kernel before drains. On a chain of 24 dependent o-shaped projections (`bench/persistent_gpu.py`,
docs/kernels.md) that took the edge from 2.4-2.6 to 1.0-1.4 us over the bytes.

The same arithmetic and rounding as the skinny kernels for the four forms the folded step
(`engine/models/fused.py`: `_folded_layers`) runs: the o and down projections adding into the residual stream
and leaving the next RMSNorm's input (`NormedRows`, `skinny_linear_add`), the gate/up projection taking a
`NormedRows` and writing `silu(gate) * up` (`skinny_linear`), and the qkv projection with rope and the K/V store
(`skinny_qkv_rope_store`: a tile is 8 rotary pairs of one head, two parts as gate and up are; a q/k norm only in
its deferred form). The sums over K run as fp32 FMAs per column and then a row sum, not as MMA tiles, so results
match the MMA kernels within bf16 rounding, not bit for bit. No biases (a model with them keeps the skinny
kernels). In the step at batch 1 (docs/kernels.md) Qwen3-8B went from 4.16 to 3.98 ms, Llama-3.1-8B from 4.04
to 3.82.
"""

from __future__ import annotations

import functools

import torch
from pdpair.kernels.fused.skinny_linear import NormedRows
from pdpair.kernels.triton_utils import interpreting, pdl_launch, triton

try:  # Gluon (Triton >= 3.5) with Hopper's TMA and mbarriers
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    HAS_GLUON = True
except ImportError:  # older Triton, or none: the skinny kernel runs
    HAS_GLUON = False

BOX_K = 256  # a TMA box spans at most 256 elements per dimension
RING_KB = 160  # shared memory for the weight ring; RING - 1 slots of it are in flight before the wait
SMEM_BYTES = 227 << 10  # shared memory a program may take on sm_90


def config(n: int, k: int, gated: bool, sms: int, qkv: bool = False, block_n: int = 0, block_k: int = 512,
           ring_kb: int = RING_KB, warps: int = 4) -> dict | None:
    """Launch shape for a weight of `n` output columns (gated: `n` gate and `n` up rows) over `k`, or None when
    it does not split evenly or fit: 32 rows a tile (16 gate + 16 up), 512-column steps, a ring of as many steps
    as `ring_kb` KB hold (and at least two beside the input vector in `SMEM_BYTES`), and the fewest tiles per
    program that keep the programs within the SMs. The keywords override the defaults (`bench/engine_gpu.py --configs tma-o:...`). The qkv form (`qkv`, with `gated` and
    `n` the weight's rotary pairs) takes 8 pairs a tile: its 48 heads of an 8B model then split into 384 tiles."""
    block_n = block_n or (8 if qkv else 16 if gated else 32)
    if n % block_n or k % block_k or block_k % BOX_K:
        return None
    tiles = n // block_n
    per = next(t for t in range(1, tiles + 1) if tiles % t == 0 and tiles // t <= sms)
    step = (2 if gated else 1) * block_n * block_k * 2
    ring = min(ring_kb << 10, SMEM_BYTES - 2 * k - 1024) // step  # the input vector and the mbarriers beside it
    if ring < 2:
        return None
    return {"BLOCK_N": block_n, "BLOCK_K": block_k, "TILES": per, "RING": ring, "programs": tiles // per,
            "num_warps": warps}


@functools.cache
def _sm90(index: int) -> tuple[bool, int]:
    props = torch.cuda.get_device_properties(index)
    return props.major >= 9, props.multi_processor_count


def _gpu(x: torch.Tensor) -> tuple[bool, int]:
    """Whether `x`'s GPU is Hopper or newer, and its SM count."""
    return _sm90(x.device.index if x.device.index is not None else torch.cuda.current_device())


def supported(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gated: bool = False) -> bool:
    """Whether `tma_linear` takes this projection: one row, bf16 or fp16, no bias, contiguous operands, a Hopper
    or newer GPU with Gluon, and widths that split into whole tiles and steps."""
    if not (HAS_GLUON and x.is_cuda and not interpreting() and x.shape[0] == 1 and bias is None
            and x.dtype in (torch.bfloat16, torch.float16) and weight.dtype == x.dtype
            and x.is_contiguous() and weight.is_contiguous() and x.data_ptr() % 16 == 0):
        return False
    hopper, sms = _gpu(x)
    n = weight.shape[0] // 2 if gated else weight.shape[0]
    return hopper and x.shape[1] % BOX_K == 0 and config(n, weight.shape[1], gated, sms) is not None


if HAS_GLUON:
    _BOX_K = gl.constexpr(BOX_K)
    # a TMA copy global -> shared completing on an mbarrier (`async_copy_global_to_shared` until Triton 3.7)
    _tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
    # a CTA-wide barrier (`thread_barrier` until Triton 3.7)
    _cta_barrier = getattr(gl, "thread_barrier", None) or gl.barrier

    @gluon.jit
    def _asm(instr: gl.constexpr):
        gl.inline_asm_elementwise(instr + " // $0", "=r", [], dtype=gl.int32, is_pure=False, pack=1)

    @gluon.jit
    def _tile_rows(tile, N: gl.constexpr, BLOCK_N: gl.constexpr, HALF: gl.constexpr):
        """A tile's first weight row and where its second part starts: gated, the up rows N further; in the qkv
        form (HALF > 0), BLOCK_N rotary pairs of one head (HALF // BLOCK_N tiles a head), the second halves
        HALF rows further."""
        if HALF > 0:
            row = (tile // (HALF // BLOCK_N)) * (2 * HALF) + (tile % (HALF // BLOCK_N)) * BLOCK_N
            return row, row + HALF
        else:
            return tile * BLOCK_N, N + tile * BLOCK_N

    @gluon.jit
    def _issue(w_desc, ring, ready, g, pid, nprog, N: gl.constexpr, KB: gl.constexpr, BLOCK_N: gl.constexpr,
               BOXES: gl.constexpr, RING: gl.constexpr, PARTS: gl.constexpr, HALF: gl.constexpr):
        """TMA copies of this program's weight step `g` (its tile g // KB, column block g % KB; with two parts
        the second part's rows too, `_tile_rows`) into ring slot `g % RING`."""
        slot = g % RING
        row, row2 = _tile_rows(pid + (g // KB) * nprog, N, BLOCK_N, HALF)
        col = (g % KB) * (BOXES * _BOX_K)
        bar = ready.index(slot)
        mbarrier.expect(bar, PARTS * BOXES * BLOCK_N * _BOX_K * w_desc.dtype.primitive_bitwidth // 8)
        for b in gl.static_range(BOXES):
            _tma_load(w_desc, [row, col + b * _BOX_K], bar, ring.index(slot * PARTS * BOXES + b))
            if PARTS == 2:
                _tma_load(w_desc, [row2, col + b * _BOX_K], bar, ring.index(slot * PARTS * BOXES + BOXES + b))

    @gluon.jit
    def _dot_step(acc, ring, xs, first, kb, BOXES: gl.constexpr, layout: gl.constexpr):
        """`acc += W block * x block` over one step's boxes, from ring slot index `first`."""
        for b in gl.static_range(BOXES):
            acc += (ring.index(first + b).load(layout).to(gl.float32)
                    * xs.index(kb * BOXES + b).load(layout).to(gl.float32))
        return acc

    @gluon.jit
    def _rope_epilogue(x1, x2, tile, offs, q_out, rope, HALF: gl.constexpr, BLOCK_N: gl.constexpr,
                       HEADS: gl.constexpr, KV_HEADS: gl.constexpr, PAGE_SIZE: gl.constexpr,
                       QK_DEFER: gl.constexpr):
        """`skinny_qkv`'s epilogue for one row on a tile's pairs (fp32 values of the output dtype): with QK_DEFER
        a q/k head's sums of squares to the workspace (`QKScale`) and its columns times the norm weight; rope
        for q and k heads (fp32, rounded once); q to its output, k and v to the caches at the row's slot."""
        cos, sin, slots, k_cache, v_cache, s_kp, s_ks, s_kh, s_vp, s_vs, s_vh, qn_w, kn_w, raw = rope
        dtype: gl.constexpr = q_out.dtype.element_ty
        per_head: gl.constexpr = HALF // BLOCK_N
        head = tile // per_head
        offs_j = (tile % per_head) * BLOCK_N + offs
        if QK_DEFER:
            if head < HEADS + KV_HEADS:
                if head < HEADS:
                    norm_w = qn_w
                else:
                    norm_w = kn_w
                gl.store(raw + tile, gl.sum(x1 * x1 + x2 * x2, axis=0))  # parts[0, head * per_head + j]
                x1 = x1 * gl.load(norm_w + offs_j).to(gl.float32)
                x2 = x2 * gl.load(norm_w + HALF + offs_j).to(gl.float32)
        if head < HEADS + KV_HEADS:  # v heads: no rope
            c = gl.load(cos + offs_j).to(gl.float32)
            s = gl.load(sin + offs_j).to(gl.float32)
            x1, x2 = x1 * c - x2 * s, x2 * c + x1 * s
        r1 = x1.to(dtype)
        r2 = x2.to(dtype)
        if head < HEADS:
            gl.store(q_out + head * (2 * HALF) + offs_j, r1)
            gl.store(q_out + head * (2 * HALF) + HALF + offs_j, r2)
        else:
            slot = gl.load(slots).to(gl.int64)
            if slot >= 0:  # a CUDA-graph padding row (slot -1) stores nothing
                page = slot // PAGE_SIZE
                off = slot % PAGE_SIZE
                if head < HEADS + KV_HEADS:
                    dst = k_cache + page * s_kp + off * s_ks + (head - HEADS) * s_kh
                else:
                    dst = v_cache + page * s_vp + off * s_vs + (head - HEADS - KV_HEADS) * s_vh
                gl.store(dst + offs_j, r1)
                gl.store(dst + HALF + offs_j, r2)

    @gluon.jit
    def _tma_linear_kernel(x_desc, w_desc, y, parts_in, n_parts_in, eps_in, g_out, xg_out, parts_out, rope,
                           N: gl.constexpr, K: gl.constexpr, TILES: gl.constexpr, BLOCK_N: gl.constexpr,
                           BLOCK_K: gl.constexpr, RING: gl.constexpr, GATED: gl.constexpr,
                           RMS_PARTS: gl.constexpr, ACCUMULATE: gl.constexpr, NORM_OUT: gl.constexpr,
                           PDL: gl.constexpr, HALF: gl.constexpr = 0, HEADS: gl.constexpr = 0,
                           KV_HEADS: gl.constexpr = 0, PAGE_SIZE: gl.constexpr = 0, QK_DEFER: gl.constexpr = False):
        """One row through `w_desc`'s weight: `y = x W^T` (rounded as `skinny_linear`), gated (`silu(gate) *
        up`), added into `y` (ACCUMULATE) and leaving `NormedRows` (NORM_OUT); or, with HALF > 0, the qkv form
        (`_rope_epilogue`; `y` is q, `rope` the epilogue's operands). RMS_PARTS: x is a `NormedRows`' xg."""
        pid = gl.program_id(0)
        nprog = gl.num_programs(0)
        BOXES: gl.constexpr = BLOCK_K // _BOX_K
        PARTS: gl.constexpr = 2 if (GATED or HALF > 0) else 1
        KB: gl.constexpr = K // BLOCK_K
        TOTAL: gl.constexpr = TILES * KB
        dtype: gl.constexpr = w_desc.dtype
        blocked: gl.constexpr = gl.BlockedLayout([1, 8], [1, 32], [gl.num_warps(), 1], [1, 0])
        rows_l: gl.constexpr = gl.SliceLayout(1, blocked)
        flat: gl.constexpr = gl.BlockedLayout([1], [32], [gl.num_warps()], [0])
        ring = gl.allocate_shared_memory(dtype, [RING * PARTS * BOXES, BLOCK_N, _BOX_K], w_desc.layout)
        xs = gl.allocate_shared_memory(dtype, [K // _BOX_K, 1, _BOX_K], x_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [RING, 1], mbarrier.MBarrierLayout())
        x_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        for s in gl.static_range(RING):
            mbarrier.init(ready.index(s), count=1)
        mbarrier.init(x_ready, count=1)
        for s in gl.static_range(RING - 1):  # the weight is no kernel's output: it streams before the wait
            if s < TOTAL:
                _issue(w_desc, ring, ready, s, pid, nprog, N, KB, BLOCK_N, BOXES, RING, PARTS, HALF)
        if PDL:  # the kernel before has finished and its writes (x, the residual, the parts) are visible
            _asm("griddepcontrol.wait;")
            _asm("griddepcontrol.launch_dependents;")
        mbarrier.expect(x_ready, K * dtype.primitive_bitwidth // 8)
        for r in gl.static_range(K // _BOX_K):
            _tma_load(x_desc, [r, 0], x_ready, xs.index(r))
        rstd = 1.0
        if RMS_PARTS > 0:  # x holds rows times their norm weight (`NormedRows`): the row's factor, summed in order
            offs_p = gl.arange(0, RMS_PARTS, layout=flat)
            ss = gl.sum(gl.load(parts_in + offs_p, mask=offs_p < n_parts_in, other=0.0), axis=0)
            rstd = gl.rsqrt(ss / K + eps_in)
        offs_n = gl.arange(0, BLOCK_N, layout=rows_l)
        acc = gl.zeros([BLOCK_N, _BOX_K], gl.float32, blocked)
        acc_up = gl.zeros([BLOCK_N, _BOX_K], gl.float32, blocked)
        mbarrier.wait(x_ready, 0)
        for g in range(TOTAL):
            kb = g % KB
            _cta_barrier()  # every thread is done with step g - 1's slot, which the copy below refills
            if g + RING - 1 < TOTAL:
                _issue(w_desc, ring, ready, g + RING - 1, pid, nprog, N, KB, BLOCK_N, BOXES, RING, PARTS, HALF)
            slot = g % RING
            mbarrier.wait(ready.index(slot), (g // RING) & 1)
            acc = _dot_step(acc, ring, xs, slot * PARTS * BOXES, kb, BOXES, blocked)
            if PARTS == 2:
                acc_up = _dot_step(acc_up, ring, xs, slot * PARTS * BOXES + BOXES, kb, BOXES, blocked)
            if kb == KB - 1:  # the tile's epilogue, rounded where skinny_linear rounds
                tile = pid + (g // KB) * nprog
                out = (gl.sum(acc, axis=1) * rstd).to(dtype)
                if HALF > 0:
                    _rope_epilogue(out.to(gl.float32), (gl.sum(acc_up, axis=1) * rstd).to(dtype).to(gl.float32),
                                   tile, offs_n, y, rope, HALF, BLOCK_N, HEADS, KV_HEADS, PAGE_SIZE, QK_DEFER)
                else:
                    cols = tile * BLOCK_N + offs_n
                    if GATED:
                        gate = out.to(gl.float32)
                        act = (gate / (1.0 + gl.exp(-gate))).to(dtype).to(gl.float32)
                        out = (act * (gl.sum(acc_up, axis=1) * rstd).to(dtype).to(gl.float32)).to(dtype)
                    if ACCUMULATE:  # the residual add: one fp32 add of the rounded projection, rounded once
                        out = (gl.load(y + cols).to(gl.float32) + out.to(gl.float32)).to(dtype)
                    gl.store(y + cols, out)
                    if NORM_OUT:  # the next RMSNorm's inputs: this tile's sum of squares, the row times its weight
                        h = out.to(gl.float32)
                        gl.store(parts_out + tile, gl.sum(h * h, axis=0))
                        gl.store(xg_out + cols, (h * gl.load(g_out + cols).to(gl.float32)).to(dtype))
                acc = gl.zeros([BLOCK_N, _BOX_K], gl.float32, blocked)
                acc_up = gl.zeros([BLOCK_N, _BOX_K], gl.float32, blocked)


@functools.cache
def _smem_layout():
    return gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=16, rank=2)


_WEIGHT_DESCS: dict = {}


def _weight_desc(w: torch.Tensor, block_n: int):
    """A weight's TMA descriptor, made once per weight tensor (its storage, shape and box)."""
    key = (w.data_ptr(), tuple(w.shape), w.dtype, w.device, block_n)
    d = _WEIGHT_DESCS.get(key)
    if d is None:
        d = _WEIGHT_DESCS[key] = TensorDescriptor.from_tensor(w, [block_n, BOX_K], _smem_layout())
    return d


def _launch(x: torch.Tensor, weight: torch.Tensor, y: torch.Tensor, gated: bool, rms: NormedRows | None,
            accumulate: bool, norm_out: tuple | None) -> None:
    k = x.shape[1]
    n = y.shape[1]
    _, sms = _gpu(x)
    cfg = config(n, k, gated, sms)
    assert cfg is not None, (n, k, gated)
    g_out, xg_out, parts_out = norm_out or (weight, y, y)  # unused without NORM_OUT
    if norm_out is not None:
        assert parts_out.shape == (1, n // cfg["BLOCK_N"]) and parts_out.dtype == torch.float32, parts_out.shape
    _run(x, weight, y, cfg, rms, g_out, xg_out, parts_out, (y,), N=n, GATED=gated, ACCUMULATE=accumulate,
         NORM_OUT=norm_out is not None)


def _run(x: torch.Tensor, weight: torch.Tensor, y: torch.Tensor, cfg: dict, rms: NormedRows | None, g_out, xg_out,
         parts_out, rope: tuple, **consts) -> None:
    parts_in = rms.parts if rms is not None else y
    _tma_linear_kernel[(cfg["programs"],)](
        TensorDescriptor.from_tensor(x.view(-1, BOX_K), [1, BOX_K], _smem_layout()),
        _weight_desc(weight, cfg["BLOCK_N"]), y, parts_in, parts_in.shape[-1], rms.eps if rms is not None else 0.0,
        g_out, xg_out, parts_out, rope, K=x.shape[1], TILES=cfg["TILES"], BLOCK_N=cfg["BLOCK_N"],
        BLOCK_K=cfg["BLOCK_K"], RING=cfg["RING"],
        RMS_PARTS=triton.next_power_of_2(rms.parts.shape[1]) if rms is not None else 0, num_warps=cfg["num_warps"],
        **consts, **pdl_launch(x, 1))


def tma_linear(x: torch.Tensor, weight: torch.Tensor, *, gated: bool = False,
               rms: NormedRows | None = None) -> torch.Tensor:
    """`skinny_linear(x, weight, gated=..., rms=...)` for one row (`supported`), no bias."""
    assert supported(x, weight, None, gated), (x.shape, weight.shape, x.dtype, gated)
    if rms is not None:
        assert x is rms.xg and rms.parts.shape[0] == 1 and rms.parts.dtype == torch.float32, rms.parts.shape
    n = weight.shape[0] // 2 if gated else weight.shape[0]
    out = torch.empty((1, n), dtype=x.dtype, device=x.device)
    _launch(x, weight, out, gated, rms, False, None)
    return out


def tma_linear_add(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor, *,
                   norm: tuple[torch.Tensor, float] | None = None) -> NormedRows | None:
    """`skinny_linear_add(x, weight, None, residual, norm=..., release_late=True)` for one row (`supported`):
    `residual += x @ weight^T`, and with `norm` the next RMSNorm's input, summed by its consumer first."""
    assert supported(x, weight, None), (x.shape, weight.shape, x.dtype)
    n = weight.shape[0]
    assert residual.shape == (1, n) and residual.is_contiguous() and residual.dtype == x.dtype, residual.shape
    normed = None
    if norm is not None:
        assert norm[0].shape == (n,) and norm[0].is_contiguous(), (norm[0].shape, n)
        _, sms = _gpu(x)
        tiles = n // config(n, x.shape[1], False, sms)["BLOCK_N"]
        normed = NormedRows(torch.empty_like(residual), torch.empty((1, tiles), dtype=torch.float32,
                                                                    device=x.device), norm[1], first=True)
    _launch(x, weight, residual, False, None, True, None if normed is None else (norm[0], normed.xg, normed.parts))
    return normed


def qkv_supported(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, head_dim: int,
                  qk_norm: bool, defer_norm: bool) -> bool:
    """Whether `tma_qkv_rope_store` takes this qkv projection: as `supported` (one row, no bias, ...), heads whose
    half splits into whole pair tiles, and no q/k norm or a deferred one (the heads' meeting is not built here)."""
    if (qk_norm and not defer_norm) or head_dim % 2 or not supported(x, weight, bias, gated=True):
        return False
    _, sms = _gpu(x)
    cfg = config(weight.shape[0] // 2, x.shape[1], True, sms, qkv=True)
    return cfg is not None and (head_dim // 2) % cfg["BLOCK_N"] == 0


def tma_qkv_rope_store(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int,
                       kv_heads: int, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor, *,
                       rms: NormedRows | None = None,
                       qk_norm: tuple[torch.Tensor, torch.Tensor, float] | None = None,
                       workspace=None) -> tuple[torch.Tensor, object]:
    """`skinny_qkv_rope_store(..., defer_norm=True)` for one row (`qkv_supported`), no bias: returns the rotated q
    `[1, heads, D]` and, with `qk_norm`, the deferred norm (`QKScale`) for decode attention; k and v go to the
    caches at `slots[0]` (skipped when negative)."""
    from pdpair.kernels.fused.skinny_qkv import QKScale, qk_norm_workspace

    d = k_cache.shape[-1]
    n = weight.shape[0]
    assert n == (heads + 2 * kv_heads) * d and qkv_supported(x, weight, None, d, qk_norm is not None, True), (
        x.shape, weight.shape, heads, kv_heads, d)
    assert cos.shape == sin.shape == (1, d // 2) and cos.stride(-1) == sin.stride(-1) == 1, (cos.shape, sin.shape)
    assert k_cache.shape == v_cache.shape and k_cache.shape[2:] == (kv_heads, d) and k_cache.stride(-1) == 1
    assert v_cache.stride(-1) == 1 and slots.shape == (1,) and k_cache.dtype == x.dtype, (slots.shape, k_cache.dtype)
    if rms is not None:
        assert x is rms.xg and rms.parts.shape[0] == 1 and rms.parts.dtype == torch.float32, rms.parts.shape
    _, sms = _gpu(x)
    cfg = config(n // 2, x.shape[1], True, sms, qkv=True)
    q = torch.empty((1, heads, d), dtype=x.dtype, device=x.device)
    scale = None
    qn_w = kn_w = raw = q
    if qk_norm is not None:
        qn_w, kn_w, eps = qk_norm
        assert qn_w.shape == kn_w.shape == (d,) and qn_w.dtype == kn_w.dtype == x.dtype, (qn_w.shape, kn_w.shape)
        ws = workspace or qk_norm_workspace(heads, kv_heads, d, x.device)
        assert ws.raw.dtype == torch.float32 and ws.raw.shape[1] >= (heads + kv_heads) * d, ws.raw.shape
        raw = ws.raw
        scale = QKScale(ws.raw, d // 2 // cfg["BLOCK_N"], eps, slots)
    rope = (cos, sin, slots, k_cache, v_cache, k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), qn_w, kn_w, raw)
    _run(x, weight, q, cfg, rms, q, q, q, rope, N=n // 2, GATED=False, ACCUMULATE=False, NORM_OUT=False,
         HALF=d // 2, HEADS=heads, KV_HEADS=kv_heads, PAGE_SIZE=k_cache.shape[1], QK_DEFER=qk_norm is not None)
    return q, scale
