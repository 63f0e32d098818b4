"""Launch edges against persistent forms: what a batch-1 chain of dependent projections costs, on a GPU.

A decode step at batch 1 of an 8B shape is a chain of dependent launches, each a projection streaming its
weight; every projection costs about 2.3 us over its bytes at the copy rate (docs/kernels.md, "What limits
batch 1 at the 8B shapes"). This script times the same chain of projections in several forms, each beside its
weight bytes at the copy rate, measured in the same run, with the output of each form against the first's:

- `launches`: the decode path's skinny projections (`kernels/fused/skinny_linear.py`, default configs, PDL
  and L2 prefetch as in the step), one launch per projection, in one CUDA graph; also with PDL off;
- `persistent` (Triton): one launch running every projection; each program takes column tiles of a projection
  in turn (the same inner loop: 16-row MMA tile, pipelined K loads), then meets the others at a grid barrier
  (one release add per program, one polling thread); with an L2 prefetch of its next tile before the barrier,
  or as its last tile starts (`early`);
- `ring` (Gluon, `o` chain): one flat loop over the program's weight blocks of every projection, copied by
  cp.async into a shared-memory ring ahead of the block consumed, so the next projection's weights are in
  flight during the barrier; x to shared memory by loads after it;
- `tma` (Gluon, `o` chain): the same ring filled by TMA copies (an mbarrier per slot). The last field of a
  config picks what is timed: 0 the chain (x by loads), 1 without the barrier, 2 without the barrier and with x
  read once (the weight stream alone), 3 the chain with x fetched by TMA too (the form a whole layer's o
  projection and MLP then ran in, in the decode step: docs/kernels.md);
- `tma launches` (Gluon, `o` chain): one launch per projection again, with PDL, each program issuing the TMA
  copies of its first ring slots of weight before the PDL wait and fetching x by TMA after it: the form the
  decode step runs at batch 1 (`kernels/fused/tma_linear.py`, which this form's kernel is the plain case of).

Chains (batch 1, bf16, weights seeded; the chain's weights several times the L2 cache, so each is read from
DRAM): `o` is Qwen3-8B's o projection (4096 x 4096) repeated, `mlp` its gate/up (24,576 x 4,096, SiLU-and-mul
in the epilogue) and down (4,096 x 12,288) projections in turn.

    python bench/persistent_gpu.py                # under a minute on an H200
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pdpair.kernels.fused.skinny_linear import skinny_linear  # noqa: E402
from pdpair.kernels.triton_utils import PDL_ENV, pdl_launch, prefetch_l2, tl, triton  # noqa: E402
from triton.experimental import gluon  # noqa: E402
from triton.experimental.gluon import language as gl  # noqa: E402
from triton.experimental.gluon.language.nvidia.ampere import async_copy  # noqa: E402
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma  # noqa: E402
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor  # noqa: E402

from bench._ceilings import copy_gbs  # noqa: E402
from bench.small_batch_gpu import graph_us  # noqa: E402

MAX_SPINS = tl.constexpr(1 << 20)  # a barrier gives up (and flags it) after this many polls: programs not all resident


@triton.jit
def _grid_sync(bar, target, err):
    """Every program's stores before it are visible to every program after it (bar.sync, then one release
    add per program; one thread polls with acquire loads, then bar.sync)."""
    tl.debug_barrier()
    tl.atomic_add(bar, 1, sem="release", scope="gpu")
    seen = tl.atomic_add(bar, 0, sem="acquire", scope="gpu")
    n = 0
    while (seen < target) & (n < MAX_SPINS):
        seen = tl.atomic_add(bar, 0, sem="acquire", scope="gpu")
        n += 1
    if n >= MAX_SPINS:
        tl.atomic_max(err, 1)
    tl.debug_barrier()


@triton.jit
def _prefetch_tile(w, N, K, pid, BLOCK_N: tl.constexpr, PREFETCH_K: tl.constexpr, GATED: tl.constexpr, on=True):
    """L2 prefetch of the first PREFETCH_K columns of this program's first tile of a projection (if `on`)."""
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_l = tl.arange(0, PREFETCH_K // 64) * 64
    ptrs = w + rows[:, None].to(tl.int64) * K + offs_l[None, :]
    mask = (rows < N)[:, None] & (offs_l < K)[None, :] & on
    prefetch_l2(ptrs, mask)
    if GATED:
        prefetch_l2(ptrs + N.to(tl.int64) * K, mask)


@triton.jit
def _project(w, x, y, N, K, pid, nprog, GATED: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
             STAGES: tl.constexpr, next_w, next_n, next_k, has_next, NEXT_GATED: tl.constexpr,
             EARLY_K: tl.constexpr):
    """`y[:N] = W[:N] x` (GATED: `silu(W[:N] x) * W[N:2N] x`) for one row `x [K]`, over this program's column
    tiles; `x` is read past L1 (another SM wrote it since this one last read the address). EARLY_K > 0: the
    first EARLY_K columns of this program's tile of the next projection (`next_w`, if `has_next`) are
    prefetched to L2 as its last tile here starts (or at once, if it has none), so they stream while this
    projection drains."""
    offs_m = tl.arange(0, 16)
    row0 = offs_m[:, None] == 0
    offs_k = tl.arange(0, BLOCK_K)
    x_ptrs = x + offs_m[:, None] * K + offs_k[None, :]  # rows 1-15 of the MMA tile: masked, never read
    n_tiles = tl.cdiv(N, BLOCK_N)
    if EARLY_K > 0:
        if pid >= n_tiles:
            _prefetch_tile(next_w, next_n, next_k, pid, BLOCK_N, EARLY_K, NEXT_GATED, has_next)
    for t in range(pid, n_tiles, nprog):
        if EARLY_K > 0:
            if t + nprog >= n_tiles:
                _prefetch_tile(next_w, next_n, next_k, pid, BLOCK_N, EARLY_K, NEXT_GATED, has_next)
        offs_n = t * BLOCK_N + tl.arange(0, BLOCK_N)
        w_ptrs = w + offs_n[:, None].to(tl.int64) * K + offs_k[None, :]
        acc = tl.zeros([16, BLOCK_N], tl.float32)
        acc_up = tl.zeros([16, BLOCK_N], tl.float32)
        for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
            xb = tl.load(x_ptrs + k0, mask=row0, other=0.0, cache_modifier=".cg")
            acc += tl.dot(xb, tl.trans(tl.load(w_ptrs + k0)))
            if GATED:
                acc_up += tl.dot(xb, tl.trans(tl.load(w_ptrs + N.to(tl.int64) * K + k0)))
        out = acc.to(y.dtype.element_ty)
        if GATED:
            gate = out.to(tl.float32)
            act = (gate / (1.0 + tl.exp(-gate))).to(y.dtype.element_ty).to(tl.float32)
            out = (act * acc_up.to(y.dtype.element_ty).to(tl.float32)).to(y.dtype.element_ty)
        tl.store(y + offs_m[:, None] * N + offs_n[None, :], out, mask=row0 & (offs_n < N)[None, :])


@triton.jit
def _chain_kernel(x, h, w_a, w_b, bar, err, LAYERS, N_A, K_A, N_B, K_B, stride_la, stride_lb,
                  MLP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr,
                  PREFETCH_K: tl.constexpr, EARLY_K: tl.constexpr):
    """`o` chain (MLP False): x <- W_a[l] x for each layer, ping-ponging between x[0:K] and x[K:2K].
    `mlp` chain: h <- silu-and-mul(W_a[l] x), x <- W_b[l] h. PREFETCH_K: L2 prefetch of the next tile before
    each barrier; EARLY_K: the same, issued as the program's last tile of the projection before starts."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    meets = 0
    for layer in range(LAYERS):
        wa = w_a + layer * stride_la
        more = layer + 1 < LAYERS
        if MLP:
            wb = w_b + layer * stride_lb
            _project(wa, x, h, N_A, K_A, pid, nprog, True, BLOCK_N, BLOCK_K, STAGES, wb, N_B, K_B, True, False,
                     EARLY_K)
            if PREFETCH_K > 0:
                _prefetch_tile(wb, N_B, K_B, pid, BLOCK_N, PREFETCH_K, False)
            meets += 1
            _grid_sync(bar, meets * nprog, err)
            _project(wb, h, x, N_B, K_B, pid, nprog, False, BLOCK_N, BLOCK_K, STAGES, wa + stride_la, N_A, K_A,
                     more, True, EARLY_K)
        else:
            src = x + (layer % 2) * K_A
            _project(wa, src, x + ((layer + 1) % 2) * K_A, N_A, K_A, pid, nprog, False, BLOCK_N, BLOCK_K, STAGES,
                     wa + stride_la, N_A, K_A, more, False, EARLY_K)
        if more:
            if PREFETCH_K > 0:
                _prefetch_tile(wa + stride_la, N_A, K_A, pid, BLOCK_N, PREFETCH_K, MLP)
            meets += 1
            _grid_sync(bar, meets * nprog, err)


@gluon.jit
def _grid_wait(ctr, target, err):
    """Wait until `target` programs have arrived (one thread polls with acquire loads; a poll count past
    MAX_SPINS flags `err`), then order this program's TMA reads of what they wrote after it."""
    seen = gl.atomic_add(ctr, 0, sem="acquire", scope="gpu")
    n = 0
    while (seen < target) & (n < MAX_SPINS):
        seen = gl.atomic_add(ctr, 0, sem="acquire", scope="gpu")
        n += 1
    if n >= MAX_SPINS:
        gl.atomic_max(err, 1)
    gl.inline_asm_elementwise("fence.proxy.async.global; // $0", "=r", [], dtype=gl.int32, is_pure=False, pack=1)
    gl.thread_barrier()


@gluon.jit
def _arrive(ctr):
    """This program's stores are done: one release add (after a CTA barrier, so it covers every thread's)."""
    gl.thread_barrier()
    gl.atomic_add(ctr, 1, sem="release", scope="gpu")


@gluon.jit
def _gl_chain_kernel(x, w, bar, err, PHASES, stride_l, N: gl.constexpr, K: gl.constexpr, TILES: gl.constexpr,
                     BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, RING: gl.constexpr, SYNC: gl.constexpr = True):
    """The `o` chain with the weight stream decoupled from the barriers: one flat loop over this program's weight
    blocks of every projection (TILES column tiles of BLOCK_N rows per projection, K / BLOCK_K blocks each),
    copied with cp.async into a ring of RING shared-memory slots RING - 1 blocks ahead of the one consumed. The
    blocks of projection p + 1 are therefore in flight while the program waits at the barrier that ends
    projection p; only the FMAs wait for it. x (ping-pong, `[2, K]`) goes to shared memory once per
    projection, after the barrier. SYNC False leaves the barrier out (a wrong result, timed for the stream
    alone)."""
    pid = gl.program_id(0)
    nprog = gl.num_programs(0)
    KB: gl.constexpr = K // BLOCK_K
    blocked: gl.constexpr = gl.BlockedLayout([1, 8], [1, 32], [gl.num_warps(), 1], [1, 0])
    rows_l: gl.constexpr = gl.SliceLayout(1, blocked)
    cols_l: gl.constexpr = gl.SliceLayout(0, blocked)
    ring = gl.allocate_shared_memory(gl.bfloat16, [RING, BLOCK_N, BLOCK_K], gl.SwizzledSharedLayout(1, 1, 1, [1, 0]))
    xs = gl.allocate_shared_memory(gl.bfloat16, [KB, 1, BLOCK_K], gl.SwizzledSharedLayout(1, 1, 1, [1, 0]))
    offs_n = gl.arange(0, BLOCK_N, layout=rows_l)
    offs_k = gl.arange(0, BLOCK_K, layout=cols_l)
    tile = gl.expand_dims(offs_n, 1) * K + gl.expand_dims(offs_k, 0)
    x_row = gl.expand_dims(offs_k, 0)
    total = PHASES * TILES * KB
    for s in gl.static_range(RING - 1):
        g = gl.minimum(total - 1, s)
        row0 = (pid + ((g // KB) % TILES) * nprog) * BLOCK_N
        src = w + (g // (KB * TILES)).to(gl.int64) * stride_l + row0 * K + (g % KB) * BLOCK_K + tile
        async_copy.async_copy_global_to_shared(ring.index(s), src)
        async_copy.commit_group()
    acc = gl.zeros([BLOCK_N, BLOCK_K], gl.float32, blocked)
    for g in range(total):
        kb = g % KB
        jt = (g // KB) % TILES
        p = g // (KB * TILES)
        async_copy.wait_group(RING - 2)
        gl.thread_barrier()  # block g landed for every thread; every thread is done with block g - 1's slot
        gn = gl.minimum(total - 1, g + RING - 1)
        row_n = (pid + ((gn // KB) % TILES) * nprog) * BLOCK_N
        src = w + (gn // (KB * TILES)).to(gl.int64) * stride_l + row_n * K + (gn % KB) * BLOCK_K + tile
        async_copy.async_copy_global_to_shared(ring.index((g + RING - 1) % RING), src)
        async_copy.commit_group()
        if (kb == 0) & (jt == 0):  # a projection starts: wait for the last one everywhere, then take its x
            if (p > 0) & SYNC:
                _grid_wait(bar, p * nprog, err)
            for r in gl.static_range(KB):
                xs.index(r).store(gl.load(x + (p % 2) * K + r * BLOCK_K + x_row, cache_modifier=".cg"))
            gl.thread_barrier()
        wb = ring.index(g % RING).load(blocked).to(gl.float32)
        acc += wb * xs.index(kb).load(blocked).to(gl.float32)  # [1, BLOCK_K] against [BLOCK_N, BLOCK_K]
        if kb == KB - 1:
            row0 = (pid + jt * nprog) * BLOCK_N
            gl.store(x + ((p + 1) % 2) * K + row0 + offs_n, gl.sum(acc, axis=1).to(gl.bfloat16))
            acc = gl.zeros([BLOCK_N, BLOCK_K], gl.float32, blocked)
            if (jt == TILES - 1) & (p + 1 < PHASES) & SYNC:
                _arrive(bar)
    async_copy.wait_group(0)


@gluon.jit
def _tma_issue(w_desc, ring, ready, g, total, pid, nprog, N: gl.constexpr, KB: gl.constexpr, TILES: gl.constexpr,
               BLOCK_N: gl.constexpr, BOX_K: gl.constexpr, BOXES: gl.constexpr, RING: gl.constexpr):
    """Start the TMA copies (BOXES boxes of BOX_K columns) of this program's weight step `g` into slot
    `g % RING` (past the end, the last step again, so every slot keeps one copy per round)."""
    slot = g % RING
    g = gl.minimum(total - 1, g)
    row = (g // (KB * TILES)) * N + (pid + ((g // KB) % TILES) * nprog) * BLOCK_N
    mbarrier.expect(ready.index(slot), BOXES * BLOCK_N * BOX_K * 2)
    for b in gl.static_range(BOXES):
        tma.async_copy_global_to_shared(w_desc, [row, ((g % KB) * BOXES + b) * BOX_K], ready.index(slot),
                                        ring.index(slot * BOXES + b))


@gluon.jit
def _gl_tma_chain_kernel(x, w_desc, x_desc, bar, err, PHASES, N: gl.constexpr, K: gl.constexpr,
                         TILES: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, RING: gl.constexpr,
                         SYNC: gl.constexpr = True, X_ONCE: gl.constexpr = False, X_TMA: gl.constexpr = False):
    """`_gl_chain_kernel` with the weight moved by TMA: a step of BLOCK_K columns is BLOCK_K / 256 bulk copies
    (a TMA box spans at most 256 columns) completing on one mbarrier per ring slot, instead of per-thread
    cp.async. X_ONCE (with SYNC False): x goes to shared memory for the first projection only, which times the
    weight stream with no per-projection stall at all. X_TMA: x comes in by K / 256 TMA copies (`x_desc`, x viewed as
    `[2 * K / 256, 256]`) completing on one mbarrier, instead of K / 256 loads and stores."""
    pid = gl.program_id(0)
    nprog = gl.num_programs(0)
    BOX_K: gl.constexpr = w_desc.block_type.shape[1]
    BOXES: gl.constexpr = BLOCK_K // BOX_K
    KB: gl.constexpr = K // BLOCK_K
    blocked: gl.constexpr = gl.BlockedLayout([1, 8], [1, 32], [gl.num_warps(), 1], [1, 0])
    rows_l: gl.constexpr = gl.SliceLayout(1, blocked)
    cols_l: gl.constexpr = gl.SliceLayout(0, blocked)
    ring = gl.allocate_shared_memory(gl.bfloat16, [RING * BOXES, BLOCK_N, BOX_K], w_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [RING, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(RING):
        mbarrier.init(ready.index(s), count=1)
    if X_TMA:
        xs = gl.allocate_shared_memory(gl.bfloat16, [K // BOX_K, 1, BOX_K], x_desc.layout)
    else:
        xs = gl.allocate_shared_memory(gl.bfloat16, [K // BOX_K, 1, BOX_K], gl.SwizzledSharedLayout(1, 1, 1, [1, 0]))
    x_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    mbarrier.init(x_ready, count=1)
    x_waits = 0
    offs_n = gl.arange(0, BLOCK_N, layout=rows_l)
    x_row = gl.expand_dims(gl.arange(0, BOX_K, layout=cols_l), 0)
    total = PHASES * TILES * KB
    for s in gl.static_range(RING - 1):
        _tma_issue(w_desc, ring, ready, s, total, pid, nprog, N, KB, TILES, BLOCK_N, BOX_K, BOXES, RING)
    acc = gl.zeros([BLOCK_N, BOX_K], gl.float32, blocked)
    for g in range(total):
        kb = g % KB
        jt = (g // KB) % TILES
        p = g // (KB * TILES)
        gl.thread_barrier()  # every thread is done with step g - 1's slot
        _tma_issue(w_desc, ring, ready, g + RING - 1, total, pid, nprog, N, KB, TILES, BLOCK_N, BOX_K, BOXES, RING)
        if (kb == 0) & (jt == 0) & ((p == 0) | (not X_ONCE)):
            if (p > 0) & SYNC:
                _grid_wait(bar, p * nprog, err)
            if X_TMA:
                mbarrier.expect(x_ready, K * 2)
                for r in gl.static_range(K // BOX_K):
                    tma.async_copy_global_to_shared(x_desc, [(p % 2) * (K // BOX_K) + r, 0], x_ready, xs.index(r))
                mbarrier.wait(x_ready, x_waits & 1)
                x_waits += 1
            else:
                for r in gl.static_range(K // BOX_K):
                    xs.index(r).store(gl.load(x + (p % 2) * K + r * BOX_K + x_row, cache_modifier=".cg"))
                gl.thread_barrier()
        slot = g % RING
        mbarrier.wait(ready.index(slot), (g // RING) & 1)
        for b in gl.static_range(BOXES):
            acc += (ring.index(slot * BOXES + b).load(blocked).to(gl.float32)
                    * xs.index(kb * BOXES + b).load(blocked).to(gl.float32))
        if kb == KB - 1:
            row0 = (pid + jt * nprog) * BLOCK_N
            gl.store(x + ((p + 1) % 2) * K + row0 + offs_n, gl.sum(acc, axis=1).to(gl.bfloat16))
            acc = gl.zeros([BLOCK_N, BOX_K], gl.float32, blocked)
            if (jt == TILES - 1) & (p + 1 < PHASES) & SYNC:
                _arrive(bar)
    for s in gl.static_range(RING - 1):  # the copies issued past the end land before the program exits
        g = total + s
        mbarrier.wait(ready.index(g % RING), (g // RING) & 1)


@gluon.jit
def _gl_tma_linear_kernel(x_desc, w_desc, y, x_row0, w_row0, N: gl.constexpr, K: gl.constexpr,
                          TILES: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, RING: gl.constexpr,
                          PDL: gl.constexpr, RELEASE_LATE: gl.constexpr = False):
    """One projection `y = W x` at batch 1 as its own launch, with the weight moved by TMA and the input vector
    too: the copies of the program's first RING - 1 weight steps are issued before the PDL wait (the weight is
    no kernel's output), so they stream while the kernel before drains; only x (K / 256 TMA copies from row
    `x_row0` of `x_desc`) waits for it. A program takes TILES column tiles of BLOCK_N rows (rows `w_row0 + ...`
    of `w_desc`), K / BLOCK_K steps each, through a ring of RING slots; it releases the next launch at its
    wait, or with RELEASE_LATE once its last weight copy is issued."""
    pid = gl.program_id(0)
    nprog = gl.num_programs(0)
    BOX_K: gl.constexpr = w_desc.block_type.shape[1]
    BOXES: gl.constexpr = BLOCK_K // BOX_K
    KB: gl.constexpr = K // BLOCK_K
    TOTAL: gl.constexpr = TILES * KB
    blocked: gl.constexpr = gl.BlockedLayout([1, 8], [1, 32], [gl.num_warps(), 1], [1, 0])
    rows_l: gl.constexpr = gl.SliceLayout(1, blocked)
    ring = gl.allocate_shared_memory(gl.bfloat16, [RING * BOXES, BLOCK_N, BOX_K], w_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [RING, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(RING):
        mbarrier.init(ready.index(s), count=1)
    xs = gl.allocate_shared_memory(gl.bfloat16, [K // BOX_K, 1, BOX_K], x_desc.layout)
    x_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    mbarrier.init(x_ready, count=1)
    for s in gl.static_range(RING - 1):
        if s < TOTAL:
            _tma_step(w_desc, ring, ready, s, w_row0, pid, nprog, KB, TILES, BLOCK_N, BOX_K, BOXES, RING)
    if PDL:
        gl.inline_asm_elementwise("griddepcontrol.wait; // $0", "=r", [], dtype=gl.int32, is_pure=False, pack=1)
        if not RELEASE_LATE:
            gl.inline_asm_elementwise("griddepcontrol.launch_dependents; // $0", "=r", [], dtype=gl.int32,
                                      is_pure=False, pack=1)
    mbarrier.expect(x_ready, K * 2)
    for r in gl.static_range(K // BOX_K):
        tma.async_copy_global_to_shared(x_desc, [x_row0 + r, 0], x_ready, xs.index(r))
    offs_n = gl.arange(0, BLOCK_N, layout=rows_l)
    acc = gl.zeros([BLOCK_N, BOX_K], gl.float32, blocked)
    mbarrier.wait(x_ready, 0)
    for g in range(TOTAL):
        kb = g % KB
        gl.thread_barrier()  # every thread is done with step g - 1's slot
        if g + RING - 1 < TOTAL:
            _tma_step(w_desc, ring, ready, g + RING - 1, w_row0, pid, nprog, KB, TILES, BLOCK_N, BOX_K, BOXES,
                      RING)
        if PDL and RELEASE_LATE:
            if g + RING == TOTAL:
                gl.inline_asm_elementwise("griddepcontrol.launch_dependents; // $0", "=r", [], dtype=gl.int32,
                                          is_pure=False, pack=1)
        slot = g % RING
        mbarrier.wait(ready.index(slot), (g // RING) & 1)
        for b in gl.static_range(BOXES):
            acc += (ring.index(slot * BOXES + b).load(blocked).to(gl.float32)
                    * xs.index(kb * BOXES + b).load(blocked).to(gl.float32))
        if kb == KB - 1:
            gl.store(y + (pid + (g // KB) * nprog) * BLOCK_N + offs_n, gl.sum(acc, axis=1).to(gl.bfloat16))
            acc = gl.zeros([BLOCK_N, BOX_K], gl.float32, blocked)


@gluon.jit
def _tma_step(w_desc, ring, ready, g, w_row0, pid, nprog, KB: gl.constexpr, TILES: gl.constexpr,
              BLOCK_N: gl.constexpr, BOX_K: gl.constexpr, BOXES: gl.constexpr, RING: gl.constexpr):
    """`_gl_tma_linear_kernel`'s copies of weight step `g` (tile g // KB, columns of block g % KB) into slot
    `g % RING`."""
    slot = g % RING
    row = w_row0 + (pid + (g // KB) * nprog) * BLOCK_N
    mbarrier.expect(ready.index(slot), BOXES * BLOCK_N * BOX_K * 2)
    for b in gl.static_range(BOXES):
        tma.async_copy_global_to_shared(w_desc, [row, ((g % KB) * BOXES + b) * BOX_K], ready.index(slot),
                                        ring.index(slot * BOXES + b))


class Chain:
    def __init__(self, kind: str, layers: int):
        gen = torch.Generator(device="cuda").manual_seed(0)
        self.kind, self.layers = kind, layers
        if kind == "o":
            self.a = torch.randn(layers, 4096, 4096, device="cuda", generator=gen).mul_(4096 ** -0.5).bfloat16()
            self.b = self.a[:1]
        else:
            self.a = torch.randn(layers, 2 * 12288, 4096, device="cuda", generator=gen).mul_(4096 ** -0.5).bfloat16()
            # x 1.7: silu(gate) * up has about a third of the variance of its inputs; this keeps x's scale
            self.b = torch.randn(layers, 4096, 12288, device="cuda", generator=gen).mul_(1.7 * 12288 ** -0.5).bfloat16()
        self.x0 = torch.randn(4096, device="cuda", generator=gen).bfloat16()
        self.bytes = self.a.numel() * 2 + (self.b.numel() * 2 if kind == "mlp" else 0)
        self.phases = layers * (2 if kind == "mlp" else 1)

    def launches(self) -> tuple:
        x = self.x0.clone()[None]
        outs = [x]

        def run():
            cur = x
            for layer in range(self.layers):
                if self.kind == "o":
                    cur = skinny_linear(cur, self.a[layer])
                else:
                    cur = skinny_linear(skinny_linear(cur, self.a[layer], gated=True), self.b[layer])
            outs[0] = cur
        return run, outs

    @staticmethod
    def _state() -> tuple:
        """x (ping-pong, `[2 * 4096]`), the arrival counter and the failure flag."""
        return (torch.zeros(2 * 4096, dtype=torch.bfloat16, device="cuda"),
                torch.zeros(1, dtype=torch.int32, device="cuda"), torch.zeros(1, dtype=torch.int32, device="cuda"))

    def persistent(self, progs_per_sm: int, block_n: int, block_k: int, stages: int, prefetch_k: int,
                   warps: int, early: bool = False) -> tuple:
        x, bar, err = self._state()
        h = torch.zeros(12288, dtype=torch.bfloat16, device="cuda")
        grid = (torch.cuda.get_device_properties(0).multi_processor_count * progs_per_sm,)
        mlp = self.kind == "mlp"
        n_a, k_a = (12288, 4096) if mlp else (4096, 4096)
        n_b, k_b = (4096, 12288) if mlp else (4096, 4096)

        def launch(g, layers):
            return _chain_kernel[g](x, h, self.a, self.b, bar, err, layers, n_a, k_a, n_b, k_b,
                                    self.a.stride(0), self.b.stride(0), MLP=mlp, BLOCK_N=block_n, BLOCK_K=block_k,
                                    STAGES=stages, PREFETCH_K=0 if early else prefetch_k,
                                    EARLY_K=prefetch_k if early else 0, num_warps=warps, num_stages=1)

        k = launch((1,), 1)  # compile on one program, then check that the grid fits on the SMs at once
        torch.cuda.synchronize()
        props = torch.cuda.get_device_properties(0)
        smem = getattr(props, "shared_memory_per_multiprocessor", 233472)
        fits = (k.n_regs * 32 * warps * progs_per_sm <= props.regs_per_multiprocessor
                and (k.metadata.shared + 1024) * progs_per_sm <= smem)
        if not fits:
            raise RuntimeError(f"{progs_per_sm} programs per SM do not fit: {k.n_regs} registers x {warps} warps, "
                               f"{k.metadata.shared} bytes of shared memory each")

        def run():
            bar.zero_()
            x[:4096].copy_(self.x0)
            launch(grid, self.layers)
        out_at = 0 if mlp else (self.layers % 2) * 4096
        return run, (x, out_at, bar, err, grid[0])

    def ring(self, tiles: int, block_n: int, block_k: int, slots: int, warps: int, sync: bool = True,
             x_once: bool = False, x_tma: bool = False) -> tuple:
        """The `o` chain through `_gl_chain_kernel`."""
        assert self.kind == "o"
        x, bar, err = self._state()
        grid = (4096 // block_n // tiles,)
        assert grid[0] <= 2 * torch.cuda.get_device_properties(0).multi_processor_count and not (x_once or x_tma)

        def run():
            bar.zero_()
            x[:4096].copy_(self.x0)
            _gl_chain_kernel[grid](x, self.a, bar, err, self.layers, self.a.stride(0), N=4096, K=4096, TILES=tiles,
                                   BLOCK_N=block_n, BLOCK_K=block_k, RING=slots, SYNC=sync, num_warps=warps)
        return run, (x, (self.layers % 2) * 4096, bar, err, grid[0])

    def _descs(self, x: torch.Tensor, block_n: int, block_k: int) -> tuple:
        """TMA descriptors of the stacked weights (boxes of `block_n` rows, at most 256 columns) and of x (rows of
        256)."""
        layout = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=16, rank=2)
        return (TensorDescriptor.from_tensor(self.a.view(-1, 4096), [block_n, min(block_k, 256)], layout),
                TensorDescriptor.from_tensor(x.view(-1, 256), [1, 256], layout))

    def tma(self, tiles: int, block_n: int, block_k: int, slots: int, warps: int, sync: bool = True,
            x_once: bool = False, x_tma: bool = False) -> tuple:
        """The `o` chain through `_gl_tma_chain_kernel`."""
        assert self.kind == "o"
        x, bar, err = self._state()
        grid = (4096 // block_n // tiles,)
        desc, x_desc = self._descs(x, block_n, block_k)

        def run():
            bar.zero_()
            x[:4096].copy_(self.x0)
            _gl_tma_chain_kernel[grid](x, desc, x_desc, bar, err, self.layers, N=4096, K=4096, TILES=tiles,
                                       BLOCK_N=block_n, BLOCK_K=block_k, RING=slots, SYNC=sync, X_ONCE=x_once,
                                       X_TMA=x_tma, num_warps=warps)
        return run, (x, (self.layers % 2) * 4096, bar, err, grid[0])

    def tma_launches(self, tiles: int, block_n: int, block_k: int, slots: int, warps: int,
                     release_late: bool = False) -> tuple:
        """The `o` chain as one `_gl_tma_linear_kernel` launch per projection (PDL as the skinny launches)."""
        assert self.kind == "o"
        x, bar, err = self._state()
        grid = (4096 // block_n // tiles,)
        desc, x_desc = self._descs(x, block_n, block_k)
        pdl = pdl_launch(x, 1)

        def run():
            x[:4096].copy_(self.x0)
            for layer in range(self.layers):
                src, dst = layer % 2, (layer + 1) % 2
                _gl_tma_linear_kernel[grid](x_desc, desc, x[dst * 4096:], src * 16, layer * 4096, N=4096, K=4096,
                                            TILES=tiles, BLOCK_N=block_n, BLOCK_K=block_k, RING=slots,
                                            PDL=pdl["PDL"], RELEASE_LATE=release_late, num_warps=warps,
                                            **({"launch_pdl": True} if pdl["PDL"] else {}))
        return run, (x, (self.layers % 2) * 4096, bar, err, grid[0])


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return round(((out - ref).abs().max() / ref.abs().max()).item(), 4)


def _timed(row, label: str, run, state: tuple, want: int, ref: torch.Tensor) -> bool:
    """One persistent form: run it once and check its barrier count (`want` arrivals, no poll gave up), then time
    it in a graph and put its row, with its output against `ref`. False (and a line saying why) on a failure."""
    x, at, bar, err = state
    try:
        run()
        torch.cuda.synchronize()
    except Exception as e:  # a launch failure: the context is lost, later rows will say so too
        print(f"| {label}: {str(e).splitlines()[0][:150]} | | | | | |")
        return False
    if err.item() or bar.item() != want:
        print(f"| {label}: barrier failed (count {bar.item()} of {want}, err {err.item()}) | | | | | |")
        return False
    row(label, graph_us(run, calls=1, reps=20) / 1e3, _rel(x[at:at + 4096].float(), ref))
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chains", nargs="+", default=["o", "mlp"], choices=["o", "mlp"])
    ap.add_argument("--layers", type=int, default=0, help="projections' layers per chain (default: o 24, mlp 8)")
    ap.add_argument("--configs", nargs="*", default=["2,16,256,4,2", "1,32,256,4,4"],
                    help="persistent forms: programs per SM, BLOCK_N, BLOCK_K, stages, warps")
    ap.add_argument("--prefetch", nargs="*", type=int, default=[256, 1024],
                    help="columns of its next tile a program prefetches to L2 before each barrier (powers of 2; "
                         "each also issued early: as the program's last tile of the projection before starts; "
                         "a row without prefetch always runs)")
    ap.add_argument("--ring", nargs="*", default=["1,16,1024,3,4", "1,16,1024,3,4,1"],
                    help="`o` chain through the cp.async ring (`_gl_chain_kernel`): tiles per program, BLOCK_N, "
                         "BLOCK_K, ring slots, warps[, 1: without the barrier]")
    ap.add_argument("--tma", nargs="*", default=["2,16,1024,4,4", "2,16,1024,4,4,1", "2,16,1024,4,4,2",
                                                  "2,16,1024,4,4,3", "2,16,512,4,4,3", "1,16,512,6,4,3"],
                    help="`o` chain through the TMA ring (`_gl_tma_chain_kernel`), as --ring (a step of BLOCK_K "
                         "columns is BLOCK_K / 256 TMA boxes), the last field: 0 the chain, 1 without the barrier, "
                         "2 without it and with x read once, 3 the chain with x by TMA")
    ap.add_argument("--tma-launches", nargs="*",
                    default=["1,32,512,5,4", "1,32,512,3,4", "1,32,1024,2,4", "1,32,512,5,4,1", "1,16,512,4,4"],
                    help="`o` chain as one launch per projection (`_gl_tma_linear_kernel`: ring filled before the "
                         "PDL wait, x by TMA after it): tiles per program, BLOCK_N, BLOCK_K, ring slots, warps[, 1: "
                         "release the next launch after the last weight copy, not at the wait]")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()

    torch.backends.cuda.matmul.allow_tf32 = False
    copy = copy_gbs()
    print(f"copy rate {copy:,.0f} GB/s; {torch.cuda.get_device_name()}\n")
    print("| chain | form | ms | floor ms | x floor | us per edge over the floor | max rel. diff |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for kind in args.chains:
        chain = Chain(kind, args.layers or (24 if kind == "o" else 8))
        floor = chain.bytes / copy / 1e6

        def row(form, ms, diff, kind=kind, floor=floor, phases=chain.phases):
            r = {"chain": kind, "form": form, "ms": round(ms, 4), "floor_ms": round(floor, 4),
                 "x_floor": round(ms / floor, 3), "edge_us": round((ms - floor) * 1e3 / phases, 2),
                 "max_rel_diff": diff}
            rows.append(r)
            print("| " + " | ".join(str(v) for v in r.values()) + " |", flush=True)

        run, outs = chain.launches()
        ref = None
        for pdl in ("1", "0"):
            os.environ[PDL_ENV] = pdl
            ms = graph_us(run, calls=1, reps=20) / 1e3
            if ref is None:
                ref = outs[0][0].float()
            row("launches, PDL" if pdl == "1" else "launches, no PDL", ms, _rel(outs[0][0].float(), ref))
        os.environ[PDL_ENV] = "1"
        for cfg in args.configs:
            p, bn, bk, st, wp = (int(v) for v in cfg.split(","))
            for pre, early in [(0, False)] + [(n, e) for n in args.prefetch if n for e in (False, True)]:
                try:
                    run, (x, at, bar, err, nprog) = chain.persistent(p, bn, bk, st, pre, wp, early)
                except Exception as e:  # out of shared memory, or not resident at once
                    print(f"| {kind} | persistent {cfg}: {str(e).splitlines()[0][:150]} | | | | | |")
                    break
                label = f"persistent {p}/SM BN{bn} BK{bk} S{st} W{wp}"
                if pre:
                    label += f" + L2 prefetch {pre}" + (", early" if early else "")
                if not _timed(row, label, run, (x, at, bar, err), nprog * (chain.phases - 1), ref):
                    break
        forms = [("ring", c) for c in args.ring] + [("tma", c) for c in args.tma] if kind == "o" else []
        for form, cfg in forms:
            tiles, bn, bk, slots, wp, *mode = (int(v) for v in cfg.split(","))
            sync, x_once = not (mode and mode[0] in (1, 2)), bool(mode and mode[0] == 2)
            x_tma = bool(mode and mode[0] == 3)
            try:
                run, (x, at, bar, err, nprog) = getattr(chain, form)(tiles, bn, bk, slots, wp, sync, x_once, x_tma)
            except Exception as e:
                print(f"| {kind} | {form} {cfg}: {str(e).splitlines()[0][:150]} | | | | | |")
                continue
            label = f"{form} {nprog} programs, {tiles} tile(s) BN{bn} BK{bk}, {slots} slots, W{wp}" + (
                ", x by TMA" if x_tma else "" if sync else ", no barrier, x once (the stream alone)" if x_once
                else ", no barrier")
            _timed(row, label, run, (x, at, bar, err), nprog * (chain.phases - 1) if sync else 0, ref)
        for cfg in args.tma_launches if kind == "o" else []:
            tiles, bn, bk, slots, wp, *late = (int(v) for v in cfg.split(","))
            try:
                run, (x, at, bar, err, nprog) = chain.tma_launches(tiles, bn, bk, slots, wp, bool(late and late[0]))
            except Exception as e:
                print(f"| {kind} | tma launches {cfg}: {str(e).splitlines()[0][:150]} | | | | | |")
                continue
            label = f"tma launches {nprog} programs, {tiles} tile(s) BN{bn} BK{bk}, {slots} slots, W{wp}" + (
                ", released late" if late and late[0] else "")
            _timed(row, label, run, (x, at, bar, err), 0, ref)
        del chain
        torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps({"copy_gbs": copy, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
