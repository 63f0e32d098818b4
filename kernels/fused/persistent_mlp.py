"""A batch-1 decode layer's o projection and MLP in one persistent launch (Hopper, Gluon + TMA).

At batch 1 each projection of an 8B model streams tens of MB, and the launch-per-op step pays about 2.3 us per
projection over its bytes at the copy rate: the next projection can start only once its input vector is
complete, and fetching that vector queues behind the weight stream. Three persistent forms were measured on a
chain of o-shaped projections (`bench/persistent_gpu.py`, docs/kernels.md "A persistent launch for the o
projection and the MLP"); the one that beat the launch chain is this one. Each of `NPROG` programs streams its
column tiles of the three weights, in order, through a ring of shared-memory slots filled by TMA copies that
run `RING - 1` steps ahead of the step consumed, so the next projection's weights are in flight while a
program waits at the grid barrier that ends the one before. After the barrier the program fetches the input
vector by TMA too (one mbarrier, not a load per block), then multiplies from shared memory.

One launch replaces three (`_folded_layers` in engine/models/fused.py, at batch 1):

1. the o projection: `residual += o W_o^T` (the projection rounded, one fp32 add rounded once);
2. grid barrier; every program reads the whole new residual, takes its RMSNorm (`rstd` in fp32, the same value
   in every program) and scales it by the post-attention norm weight, rounded (`NormedRows.xg`'s rounding);
   the gate/up projection then writes `silu(gate) * up` with `skinny_linear`'s gated rounding;
3. grid barrier; the down projection: `residual += act W_down^T`, leaving the next layer's `NormedRows`
   (rows times the next norm weight, sums of squares per 16-column tile) for the qkv launch after it.

The sums over K run in a different order from the MMA kernels' (fp32 FMAs per column, then a row sum), so the
results match the launch path within bf16 rounding, not bit for bit. The arrival counter returns to zero at the
end of every launch (the last program to leave resets it), so one workspace serves every layer and every graph
replay; all `NPROG` programs must be resident at once, which `supported` checks (one per SM, about 190 KB of
shared memory each) and which holds while the decode stream is the only one computing on the GPU.
"""

from __future__ import annotations

import functools

import torch
from pdpair.kernels.fused.skinny_linear import NormedRows
from pdpair.kernels.triton_utils import interpreting

try:  # Gluon (Triton >= 3.5) with Hopper's TMA and mbarriers
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    HAS_GLUON = True
except ImportError:  # older Triton, or none: the launch-per-op path runs
    HAS_GLUON = False

NPROG = 128  # programs, one per SM; every width must split into NPROG tiles of BLOCK_N
BLOCK_N = 16  # output columns per tile
STEP_K = 512  # weight columns per ring step (two 256-column TMA boxes; the gate/up step: four)
BOX_K = 256  # a TMA box spans at most 256 elements per dimension
RING = 5  # ring slots of one gate/up step (32 KB) each
MAX_SPINS = 1 << 22  # a barrier poll gives up after this many (programs not all resident) and flags it


def supported(rows: int, hidden: int, q_size: int, inter: int, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether `persistent_mlp` runs this layer: one row, bf16, Hopper or newer with Gluon, at least NPROG SMs
    with room for one program each, and widths that split into NPROG tiles and whole ring steps."""
    if not (HAS_GLUON and rows == 1 and dtype == torch.bfloat16 and device.type == "cuda" and not interpreting()):
        return False
    if hidden % (BLOCK_N * NPROG) or inter % (BLOCK_N * NPROG) or q_size % STEP_K or hidden % STEP_K:
        return False
    return _device_fits(device.index if device.index is not None else torch.cuda.current_device(),
                        max(hidden, q_size, inter))


@functools.cache
def _device_fits(index: int, widest: int) -> bool:
    props = torch.cuda.get_device_properties(index)
    smem = getattr(props, "shared_memory_per_block_optin", 0)
    need = RING * 2 * STEP_K * BLOCK_N * 2 + widest * 2 + 1024
    return props.major >= 9 and props.multi_processor_count >= NPROG and smem >= need


def workspace(device: torch.device) -> torch.Tensor:
    """The launch's counters (arrivals, exits; int32, zero at rest) and its failure flag."""
    return torch.zeros(4, dtype=torch.int32, device=device)


if HAS_GLUON:
    # the constants above as the kernels see them
    _NPROG, _BLOCK_N, _STEP_K = gl.constexpr(NPROG), gl.constexpr(BLOCK_N), gl.constexpr(STEP_K)
    _BOX_K, _RING, _MAX_SPINS = gl.constexpr(BOX_K), gl.constexpr(RING), gl.constexpr(MAX_SPINS)

    @gluon.jit
    def _asm(instr: gl.constexpr):
        gl.inline_asm_elementwise(instr + " // $0", "=r", [], dtype=gl.int32, is_pure=False, pack=1)

    @gluon.jit
    def _grid_wait(ctr, target, err):
        """Wait until `target` programs have arrived (one thread polls with acquire loads), then order this
        program's TMA reads of what they wrote after it."""
        seen = gl.atomic_add(ctr, 0, sem="acquire", scope="gpu")
        n = 0
        while (seen < target) & (n < _MAX_SPINS):
            seen = gl.atomic_add(ctr, 0, sem="acquire", scope="gpu")
            n += 1
        if n >= _MAX_SPINS:
            gl.atomic_max(err, 1)
        _asm("fence.proxy.async.global;")
        gl.thread_barrier()

    @gluon.jit
    def _arrive(ctr):
        """This program's stores are done: one release add (after a CTA barrier, so it covers every thread's)."""
        gl.thread_barrier()
        gl.atomic_add(ctr, 1, sem="release", scope="gpu")

    @gluon.jit
    def _fetch_x(desc, xs, x_ready, parity, WIDTH: gl.constexpr):
        """The input vector (`WIDTH` elements, viewed `[WIDTH / 256, 256]` by `desc`) into `xs` by TMA (after the
        threads' own reads and writes of `xs`: a proxy fence orders them before the copy's writes)."""
        fence_async_shared()
        mbarrier.expect(x_ready, WIDTH * 2)
        for r in gl.static_range(WIDTH // _BOX_K):
            tma.async_copy_global_to_shared(desc, [r, 0], x_ready, xs.index(r))
        mbarrier.wait(x_ready, parity)

    @gluon.jit
    def _issue(wo_desc, wgu_desc, wd_desc, ring, ready, g, pid, INTER: gl.constexpr, TA: gl.constexpr,
               TB: gl.constexpr, KA: gl.constexpr, KB: gl.constexpr, KC: gl.constexpr, TOTAL: gl.constexpr):
        """TMA copies of this program's weight step `g` into slot `g % _RING` (past the end: the last step again,
        so that every slot takes one copy per round and its mbarrier's parity stays in step)."""
        BOXES: gl.constexpr = _STEP_K // _BOX_K
        SA: gl.constexpr = TA * KA
        SB: gl.constexpr = TB * KB
        slot = g % _RING
        base = slot * 2 * BOXES
        g = gl.minimum(TOTAL - 1, g)
        bar = ready.index(slot)
        if g < SA:
            row = (pid + (g // KA) * _NPROG) * _BLOCK_N
            col = (g % KA) * _STEP_K
            mbarrier.expect(bar, _STEP_K * _BLOCK_N * 2)
            for b in gl.static_range(BOXES):
                tma.async_copy_global_to_shared(wo_desc, [row, col + b * _BOX_K], bar, ring.index(base + b))
        elif g < SA + SB:
            row = (pid + ((g - SA) // KB) * _NPROG) * _BLOCK_N
            col = ((g - SA) % KB) * _STEP_K
            mbarrier.expect(bar, 2 * _STEP_K * _BLOCK_N * 2)
            for b in gl.static_range(BOXES):
                tma.async_copy_global_to_shared(wgu_desc, [row, col + b * _BOX_K], bar, ring.index(base + b))
                tma.async_copy_global_to_shared(wgu_desc, [INTER + row, col + b * _BOX_K], bar,
                                                ring.index(base + BOXES + b))
        else:
            row = (pid + ((g - SA - SB) // KC) * _NPROG) * _BLOCK_N
            col = ((g - SA - SB) % KC) * _STEP_K
            mbarrier.expect(bar, _STEP_K * _BLOCK_N * 2)
            for b in gl.static_range(BOXES):
                tma.async_copy_global_to_shared(wd_desc, [row, col + b * _BOX_K], bar, ring.index(base + b))

    @gluon.jit
    def _dot_step(acc, ring, xs, first, kb, layout: gl.constexpr):
        """`acc += W block * x block` over one step's boxes from ring slot index `first`."""
        BOXES: gl.constexpr = _STEP_K // _BOX_K
        for b in gl.static_range(BOXES):
            acc += (ring.index(first + b).load(layout).to(gl.float32)
                    * xs.index(kb * BOXES + b).load(layout).to(gl.float32))
        return acc

    @gluon.jit
    def _persistent_mlp_kernel(resid, act, xg, parts, g_post, g_next, ctr, err, eps_post,
                               wo_desc, wgu_desc, wd_desc, xo_desc, xh_desc, xa_desc,
                               HIDDEN: gl.constexpr, QSIZE: gl.constexpr, INTER: gl.constexpr, WIDEST: gl.constexpr,
                               NORM_NEXT: gl.constexpr, PDL: gl.constexpr):
        pid = gl.program_id(0)
        BOXES: gl.constexpr = _STEP_K // _BOX_K
        TA: gl.constexpr = HIDDEN // (_BLOCK_N * _NPROG)
        TB: gl.constexpr = INTER // (_BLOCK_N * _NPROG)
        KA: gl.constexpr = QSIZE // _STEP_K
        KB: gl.constexpr = HIDDEN // _STEP_K
        KC: gl.constexpr = INTER // _STEP_K
        SA: gl.constexpr = TA * KA
        SB: gl.constexpr = TB * KB
        TOTAL: gl.constexpr = SA + SB + TA * KC
        blocked: gl.constexpr = gl.BlockedLayout([1, 8], [1, 32], [gl.num_warps(), 1], [1, 0])
        rows_l: gl.constexpr = gl.SliceLayout(1, blocked)
        cols_l: gl.constexpr = gl.SliceLayout(0, blocked)
        ring = gl.allocate_shared_memory(gl.bfloat16, [_RING * 2 * BOXES, _BLOCK_N, _BOX_K], wo_desc.layout)
        xs = gl.allocate_shared_memory(gl.bfloat16, [WIDEST // _BOX_K, 1, _BOX_K], xo_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [_RING, 1], mbarrier.MBarrierLayout())
        x_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        for s in gl.static_range(_RING):
            mbarrier.init(ready.index(s), count=1)
        mbarrier.init(x_ready, count=1)
        offs_n = gl.arange(0, _BLOCK_N, layout=rows_l)
        x_row = gl.expand_dims(gl.arange(0, _BOX_K, layout=cols_l), 0)
        for s in gl.static_range(_RING - 1):  # weights are no kernel's output: they stream before the PDL wait
            _issue(wo_desc, wgu_desc, wd_desc, ring, ready, s, pid, INTER, TA, TB, KA, KB, KC, TOTAL)
        if PDL:  # the previous kernel's writes (o, the residual) are visible from here on
            _asm("griddepcontrol.wait;")
        _fetch_x(xo_desc, xs, x_ready, 0, QSIZE)
        acc = gl.zeros([_BLOCK_N, _BOX_K], gl.float32, blocked)
        acc_up = gl.zeros([_BLOCK_N, _BOX_K], gl.float32, blocked)
        rstd = 0.0
        for g in range(TOTAL):
            gl.thread_barrier()  # every thread is done with step g - 1's slot, which the copy below refills
            _issue(wo_desc, wgu_desc, wd_desc, ring, ready, g + _RING - 1, pid, INTER, TA, TB, KA, KB, KC, TOTAL)
            if g == SA:  # the o projection is complete everywhere: its residual, normed, is the MLP's input
                _grid_wait(ctr, _NPROG, err)
                _fetch_x(xh_desc, xs, x_ready, 1, HIDDEN)
                ss = gl.zeros([1, _BOX_K], gl.float32, blocked)
                for r in gl.static_range(HIDDEN // _BOX_K):
                    h = xs.index(r).load(blocked).to(gl.float32)
                    ss += h * h
                rstd = gl.rsqrt(gl.sum(gl.sum(ss, axis=1), axis=0) / HIDDEN + eps_post)
                for r in gl.static_range(HIDDEN // _BOX_K):
                    h = xs.index(r).load(blocked).to(gl.float32)
                    w = gl.load(g_post + r * _BOX_K + x_row).to(gl.float32)
                    xs.index(r).store((h * w).to(gl.bfloat16))
                gl.thread_barrier()
            elif g == SA + SB:  # the gate/up projection is complete everywhere
                _grid_wait(ctr, 2 * _NPROG, err)
                _fetch_x(xa_desc, xs, x_ready, 0, INTER)
            slot = g % _RING
            mbarrier.wait(ready.index(slot), (g // _RING) & 1)
            first = slot * 2 * BOXES
            if g < SA:
                kb = g % KA
                acc = _dot_step(acc, ring, xs, first, kb, blocked)
                if kb == KA - 1:
                    cols = (pid + (g // KA) * _NPROG) * _BLOCK_N + offs_n
                    out = gl.sum(acc, axis=1).to(gl.bfloat16).to(gl.float32)
                    prior = gl.load(resid + cols).to(gl.float32)
                    gl.store(resid + cols, (prior + out).to(gl.bfloat16))
                    acc = gl.zeros([_BLOCK_N, _BOX_K], gl.float32, blocked)
                    if g == SA - 1:
                        _arrive(ctr)
            elif g < SA + SB:
                kb = (g - SA) % KB
                acc = _dot_step(acc, ring, xs, first, kb, blocked)
                acc_up = _dot_step(acc_up, ring, xs, first + BOXES, kb, blocked)
                if kb == KB - 1:
                    cols = (pid + ((g - SA) // KB) * _NPROG) * _BLOCK_N + offs_n
                    gate = (gl.sum(acc, axis=1) * rstd).to(gl.bfloat16).to(gl.float32)
                    up = (gl.sum(acc_up, axis=1) * rstd).to(gl.bfloat16).to(gl.float32)
                    a = (gate / (1.0 + gl.exp(-gate))).to(gl.bfloat16).to(gl.float32)
                    gl.store(act + cols, (a * up).to(gl.bfloat16))
                    acc = gl.zeros([_BLOCK_N, _BOX_K], gl.float32, blocked)
                    acc_up = gl.zeros([_BLOCK_N, _BOX_K], gl.float32, blocked)
                    if g == SA + SB - 1:
                        _arrive(ctr)
            else:
                kb = (g - SA - SB) % KC
                acc = _dot_step(acc, ring, xs, first, kb, blocked)
                if kb == KC - 1:
                    tile = pid + ((g - SA - SB) // KC) * _NPROG
                    cols = tile * _BLOCK_N + offs_n
                    out = gl.sum(acc, axis=1).to(gl.bfloat16).to(gl.float32)
                    h = (gl.load(resid + cols).to(gl.float32) + out).to(gl.bfloat16)
                    gl.store(resid + cols, h)
                    if NORM_NEXT:
                        hf = h.to(gl.float32)
                        gl.store(parts + tile, gl.sum(hf * hf, axis=0))
                        gl.store(xg + cols, (hf * gl.load(g_next + cols).to(gl.float32)).to(gl.bfloat16))
                    acc = gl.zeros([_BLOCK_N, _BOX_K], gl.float32, blocked)
        for s in gl.static_range(_RING - 1):  # the copies issued past the end land before the program leaves
            mbarrier.wait(ready.index((TOTAL + s) % _RING), ((TOTAL + s) // _RING) & 1)
        gl.thread_barrier()
        left = gl.atomic_add(ctr + 1, 1, sem="acq_rel", scope="gpu")
        if left == _NPROG - 1:  # the last program out: every other one is past both barriers
            gl.store(ctr, 0)
            gl.store(ctr + 1, 0)


@functools.cache
def _smem_layout():
    return gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=16, rank=2)


def _desc(t: torch.Tensor, block: list[int]):
    return TensorDescriptor.from_tensor(t, block, _smem_layout())


_WEIGHT_DESCS: dict = {}


def _weight_desc(w: torch.Tensor):
    """A weight's TMA descriptor, made once per weight tensor (its storage and shape)."""
    key = (w.data_ptr(), tuple(w.shape), w.device)
    d = _WEIGHT_DESCS.get(key)
    if d is None:
        d = _WEIGHT_DESCS[key] = _desc(w, [BLOCK_N, BOX_K])
    return d


def persistent_mlp(o: torch.Tensor, w_o: torch.Tensor, residual: torch.Tensor, post: tuple[torch.Tensor, float],
                   w_gate_up: torch.Tensor, w_down: torch.Tensor, next_norm: tuple[torch.Tensor, float] | None,
                   ws: torch.Tensor, pdl: bool = True) -> NormedRows | None:
    """One batch-1 row through a layer's o projection and SwiGLU MLP: `residual` (`[1, H]`) is updated in place
    to `residual + o W_o^T` and then `+ down(silu(gate) * up)` of that sum's RMSNorm (`post`: weight, eps);
    returns the next layer's `NormedRows` (for `next_norm`) or None. No biases. `ws`: `workspace`."""
    h, q = residual.shape[1], o.shape[1]
    inter = w_down.shape[1]
    assert supported(o.shape[0], h, q, inter, o.dtype, o.device), (o.shape, residual.shape, w_down.shape)
    assert w_o.shape == (h, q) and w_gate_up.shape == (2 * inter, h) and w_down.shape == (h, inter)
    for t in (o, w_o, residual, w_gate_up, w_down):
        assert t.is_contiguous() and t.dtype == torch.bfloat16, (t.shape, t.stride(), t.dtype)
    act = torch.empty(inter, dtype=o.dtype, device=o.device)
    normed = None
    if next_norm is not None:
        normed = NormedRows(torch.empty_like(residual), torch.empty((1, h // BLOCK_N), dtype=torch.float32,
                                                                    device=o.device), next_norm[1], first=True)
    xg, parts = (normed.xg, normed.parts) if normed is not None else (residual, residual)
    g_next = next_norm[0] if next_norm is not None else post[0]
    _persistent_mlp_kernel[(NPROG,)](
        residual, act, xg, parts, post[0], g_next, ws, ws[2:], float(post[1]),
        _weight_desc(w_o), _weight_desc(w_gate_up), _weight_desc(w_down),
        _desc(o.view(-1, BOX_K), [1, BOX_K]), _desc(residual.view(-1, BOX_K), [1, BOX_K]),
        _desc(act.view(-1, BOX_K), [1, BOX_K]),
        HIDDEN=h, QSIZE=q, INTER=inter, WIDEST=max(h, q, inter), NORM_NEXT=next_norm is not None, PDL=pdl,
        num_warps=4, launch_pdl=pdl)
    return normed


def persistent_mlp_ref(o: torch.Tensor, w_o: torch.Tensor, residual: torch.Tensor,
                       post: tuple[torch.Tensor, float], w_gate_up: torch.Tensor, w_down: torch.Tensor,
                       next_norm: tuple[torch.Tensor, float] | None) -> torch.Tensor | None:
    """Torch twin: the unfused arithmetic (residual adds, `add_rmsnorm_ref`, F.linear, SiLU-and-mul) in place on
    `residual`; returns the next norm's output (what the next qkv projection sees) or None."""
    from pdpair.kernels.fused.add_rmsnorm import add_rmsnorm_ref
    from pdpair.kernels.fused.skinny_linear import skinny_linear_add_ref, skinny_linear_ref

    h = skinny_linear_add_ref(o, w_o, None, residual, post)
    act = skinny_linear_ref(h, w_gate_up, None, gated=True)
    skinny_linear_add_ref(act, w_down, None, residual)
    return None if next_norm is None else add_rmsnorm_ref(None, residual.clone(), next_norm[0], next_norm[1])
