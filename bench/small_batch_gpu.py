"""A decode step's small-batch kernels on a GPU, each beside its reference measured in the same run.

- linear: the Triton skinny linear (`kernels/fused/skinny_linear.py`, its default launch config) against
  cuBLAS (`F.linear`) for the projections of the SmolLM2, Llama-3.1-8B and Qwen3-8B shapes at 1-16 rows, in
  microseconds per call inside a CUDA graph (launch cost included, as a decode graph pays it) and in weight
  GB/s against the read bandwidth of a 2 GiB sum; the gate/up projection also with SiLU-and-mul folded
  into its epilogue, against cuBLAS + `silu_and_mul`; the qkv projection also with rope and the K/V store
  folded into its epilogue (`kernels/fused/skinny_qkv.py`; Qwen3-8B's with its q/k norm too), against skinny
  qkv + `qk_rope_store` (the two launches it replaces). `--sweep` tries every launch config per shape and prints
  the best. Weights smaller than three times the L2 cache are cycled over enough copies that each call reads
  its weight from DRAM, as a decode step does (one weight per layer between two reads of it).
- decode attention: split-KV decode at batch 1-8, context 2,048, against the KV bytes / copy bandwidth, for
  each split count, block size and warp count (`--sweep`) and at the default; each row times the one-launch
  merge (`fused_merge=True`: the last split program of a kv head merges) beside the two-launch form (split
  kernel + merge kernel, the default) at the same splits.

    python bench/small_batch_gpu.py                 # about a minute on an H200
    python bench/small_batch_gpu.py --sweep         # tuning run: every config, a few minutes
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pdpair.kernels.attention import decode_attention, decode_workspace  # noqa: E402
from pdpair.kernels.attention.decode import default_num_splits  # noqa: E402
from pdpair.kernels.fused import qk_rope_store, silu_and_mul  # noqa: E402
from pdpair.kernels.fused.skinny_linear import skinny_config, skinny_linear  # noqa: E402
from pdpair.kernels.fused.skinny_qkv import (  # noqa: E402
    qk_norm_workspace,
    skinny_qkv_config,
    skinny_qkv_rope_store,
)

# (name, N, K) of each shape's projections; "down" also runs with SiLU-and-mul folded in
SHAPES = {
    "smollm2": [("qkv", 960, 576), ("o", 576, 576), ("gate_up", 3072, 576), ("down", 576, 1536)],
    "llama3-8b": [("qkv", 6144, 4096), ("o", 4096, 4096), ("gate_up", 28672, 4096), ("down", 4096, 14336),
                  ("lm_head", 128256, 4096)],
    "qwen3-8b": [("qkv", 6144, 4096), ("o", 4096, 4096), ("gate_up", 24576, 4096), ("down", 4096, 12288),
                 ("lm_head", 151936, 4096)],
}
# (heads, kv heads, head_dim, q/k norm)
ATTN = {"smollm2": (9, 3, 64, False), "llama3-8b": (32, 8, 128, False), "qwen3-8b": (32, 8, 128, True)}
ROWS: list[dict] = []


def graph_us(fn, calls: int = 40, reps: int = 15) -> float:
    """Microseconds per `fn()` inside one CUDA graph of `calls` back-to-back calls (median of `reps` replays)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / calls)
    times.sort()
    return times[len(times) // 2]


def rotated(fn, weights: list[torch.Tensor]):
    """`fn(w)` over `weights` in turn, one per call: a graph of these calls reads each weight from DRAM."""
    turn = [0]

    def call():
        fn(weights[turn[0] % len(weights)])
        turn[0] += 1
    return call


def weight_copies(w: torch.Tensor) -> list[torch.Tensor]:
    """`w` and enough copies of it that together they are three times the L2 cache."""
    l2 = torch.cuda.get_device_properties(w.device).L2_cache_size
    return [w] + [w.clone() for _ in range(-(-3 * l2 // (w.numel() * w.element_size())) - 1)]


def read_bandwidth() -> float:
    """GB/s of reading 2 GiB once (a sum over it): the weight stream's reference."""
    n = 2 << 30
    src = torch.empty(n // 2, dtype=torch.bfloat16, device="cuda").normal_()
    out = torch.empty((), dtype=torch.float32, device="cuda")
    us = graph_us(lambda: torch.sum(src, dim=0, dtype=torch.float32, out=out), calls=5, reps=10)
    return n / us / 1e3


def emit(**r) -> None:
    ROWS.append(r)
    print("| " + " | ".join(str(v) for v in r.values()) + " |", flush=True)


SWEEP: list[dict] = []


def sweep_configs():
    for bn, bk, warps, stages in itertools.product((8, 16, 32), (128, 256, 512), (2, 4), (2, 3, 4, 5)):
        yield {"BLOCK_N": bn, "BLOCK_K": bk, "num_warps": warps, "num_stages": stages}


def bench_qkv_rope(shape: str, x: torch.Tensor, ws: list[torch.Tensor], read_gbs: float) -> None:
    """The qkv projection with (q/k norm,) rope and the K/V store in its epilogue against skinny qkv +
    `qk_rope_store`."""
    heads, kvh, d, qk_norm = ATTN[shape]
    m, (n, k) = x.shape[0], ws[0].shape
    k_cache = torch.zeros(64, 16, kvh, d, dtype=x.dtype, device=x.device)
    v_cache = torch.zeros_like(k_cache)
    slots = torch.arange(m, device=x.device) * 7
    angles = torch.rand(m, d // 2, device=x.device) * 6.28
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    caches = (k_cache, v_cache, slots)
    norm_w = (1 + 0.1 * torch.randn(2, d, device=x.device)).to(x.dtype) if qk_norm else None
    norm = {} if norm_w is None else {"qk_norm": (norm_w[0], norm_w[1], 1e-6),
                                      "workspace": qk_norm_workspace(heads, kvh, d, x.device)}
    ref = graph_us(rotated(lambda w: qk_rope_store(skinny_linear(x, w), cos, sin, heads, kvh, *caches,
                                                   *(() if norm_w is None else (norm_w[0], norm_w[1]))), ws))
    us = graph_us(rotated(lambda w: skinny_qkv_rope_store(x, w, None, cos, sin, heads, kvh, *caches, **norm), ws))
    c = skinny_qkv_config(n, k, d)
    gbs = n * k * 2 / us / 1e3
    emit(shape=shape, proj="qkv+norm+rope+store" if qk_norm else "qkv+rope+store", rows=m, cublas_us=round(ref, 2), skinny_us=round(us, 2),
         ratio=round(us / ref, 3), gbs=round(gbs), pct=f"{gbs / read_gbs:.0%}",
         config=f"pairs {c['BLOCK_N'] // 2}x{c['BLOCK_K']} w{c['num_warps']} s{c['num_stages']}"
         " vs skinny qkv + qk_rope_store")


def bench_linear(shapes: list[str], rows_list: list[int], read_gbs: float, sweep: bool) -> None:
    print("| shape | proj | rows | cuBLAS us | skinny us | skinny / cuBLAS | skinny GB/s | % of read bw | config |")
    gen = torch.Generator(device="cuda").manual_seed(0)
    for shape in shapes:
        for name, n, k in SHAPES[shape]:
            w = (0.02 * torch.randn(n, k, device="cuda", generator=gen)).to(torch.bfloat16)
            ws = weight_copies(w)
            for m in rows_list:
                x = torch.randn(m, k, device="cuda", generator=gen).to(torch.bfloat16)
                ref_us = graph_us(rotated(lambda w, x=x: F.linear(x, w), ws))
                cfg = skinny_config(n, k)
                if sweep:
                    tried = []
                    for c in sweep_configs():
                        try:
                            us = graph_us(rotated(lambda w, x=x, c=c: skinny_linear(x, w, config=c), ws), calls=20,
                                          reps=7)
                        except Exception:  # noqa: BLE001, S112 - a config that does not fit is skipped
                            continue
                        tried.append((us, c))
                        SWEEP.append({"shape": shape, "proj": name, "n": n, "k": k, "rows": m, "us": us, **c})
                    tried.sort(key=lambda t: t[0])
                    for us, c in tried[:3]:
                        print(f"    {shape} {name} m={m}: {us:.2f} us {c}", flush=True)
                us = graph_us(rotated(lambda w, x=x: skinny_linear(x, w), ws))
                gbs = n * k * 2 / us / 1e3
                emit(shape=shape, proj=name, rows=m, cublas_us=round(ref_us, 2), skinny_us=round(us, 2),
                     ratio=round(us / ref_us, 3), gbs=round(gbs), pct=f"{gbs / read_gbs:.0%}",
                     config=f"{cfg['BLOCK_N']}x{cfg['BLOCK_K']} w{cfg['num_warps']} s{cfg['num_stages']}")
                if name == "qkv" and shape in ATTN:
                    bench_qkv_rope(shape, x, ws, read_gbs)
                if name == "gate_up":
                    ref2 = graph_us(lambda x=x, w=w: silu_and_mul(F.linear(x, w)))
                    us2 = graph_us(lambda x=x, w=w: skinny_linear(x, w, gated=True))
                    c2 = skinny_config(n, k, gated=True)
                    emit(shape=shape, proj="gate_up+silu_mul", rows=m, cublas_us=round(ref2, 2),
                         skinny_us=round(us2, 2), ratio=round(us2 / ref2, 3), gbs=round(n * k * 2 / us2 / 1e3),
                         pct=f"{n * k * 2 / us2 / 1e3 / read_gbs:.0%}",
                         config=f"gated {c2['BLOCK_N']}x{c2['BLOCK_K']} w{c2['num_warps']} s{c2['num_stages']}"
                         " vs cuBLAS + silu_and_mul")


def bench_attention(shapes: list[str], batches: list[int], read_gbs: float, sweep: bool, ctx: int = 2048) -> None:
    print("| shape | batch | splits | block_n | warps | us one launch | us split + merge | one / two | KV GB/s (one) "
          "| % of read bw | max |one - two| / max |two| |")
    page = 16
    for shape in shapes:
        if shape not in ATTN:
            continue
        heads, kvh, d = ATTN[shape]
        for bsz in batches:
            pages = bsz * ctx // page
            k = torch.randn(pages, page, kvh, d, device="cuda").to(torch.bfloat16)
            v = torch.randn_like(k)
            q = torch.randn(bsz, heads, d, device="cuda").to(torch.bfloat16)
            indptr = torch.arange(0, bsz + 1, device="cuda", dtype=torch.int32) * ctx
            indices = torch.randperm(pages * page, device="cuda")[: bsz * ctx].to(torch.int32)
            kv_bytes = 2 * bsz * ctx * kvh * d * 2
            default = default_num_splits(bsz, kvh)
            splits = sorted({default} | ({8, 16, 32, 64, 128} if sweep else set()))
            blocks = (16, 32, 64) if sweep else (64,)
            warps = (4, 8) if sweep else (4,)
            for s, bn, nw in itertools.product(splits, blocks, warps):
                ws = decode_workspace(bsz, heads, d, s, "cuda", kvh)
                o = torch.empty_like(q)
                args = (q, k, v, indptr, indices)
                us = {fused: graph_us(lambda a=args, s=s, bn=bn, nw=nw, ws=ws, o=o, f=fused: decode_attention(
                    *a, o=o, num_splits=s, workspace=ws, block_n=bn, num_warps=nw, fused_merge=f))
                    for fused in (True, False)}
                one, two = (decode_attention(*args, num_splits=s, workspace=ws, block_n=bn, num_warps=nw,
                                             fused_merge=f).float() for f in (True, False))
                diff = float((one - two).abs().max() / two.abs().max())  # summation order only: bf16 ulps
                gbs = kv_bytes / us[True] / 1e3
                emit(shape=shape, batch=bsz, splits=f"{s}{' (default)' if s == default else ''}", block_n=bn, warps=nw,
                     us_one=round(us[True], 2), us_two=round(us[False], 2), ratio=round(us[True] / us[False], 3),
                     gbs=round(gbs), pct=f"{gbs / read_gbs:.0%}", one_vs_two=f"{diff:.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=sorted(SHAPES))
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 4, 8, 16], help="rows (decode batch) per linear")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="decode attention batch sizes")
    ap.add_argument("--only", choices=["linear", "attention"], help="one section only")
    ap.add_argument("--sweep", action="store_true", help="try every launch config (tuning run)")
    ap.add_argument("--json", type=Path, help="write every row here")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("small_batch_gpu: no CUDA device, nothing to measure")
        return
    read_gbs = read_bandwidth()
    print(f"reference: reading 2 GiB runs at {read_gbs:.0f} GB/s")
    if args.only in (None, "linear"):
        bench_linear(args.shapes, args.rows, read_gbs, args.sweep)
    if args.only in (None, "attention"):
        bench_attention(args.shapes, args.batches, read_gbs, args.sweep)
    if args.json:
        args.json.write_text(json.dumps({"read_gbs": read_gbs, "rows": ROWS, "sweep": SWEEP}, indent=1))


if __name__ == "__main__":
    main()
