"""Attention kernel benchmark (GPU): copy ceiling, split-KV decode, MLA/DSA, extend vs SDPA, model decode tokens/s.

    python bench/kernels.py [--sweep] [--model-dir DIR] [--json OUT.json]
    python bench/kernels.py --no-model --only decode --contexts 512 4096      # quick look

Prints one table and writes it to bench/out/kernels.md and .json, with kernels_decode_context.png (decode
GB/s and % of the copy ceiling against context length). Decode is reported in GB/s of KV read and as a fraction of a device-to-device copy's
bandwidth (bytes read + written) measured in the same run; extend in TFLOP/s of causal attention next to
torch's scaled_dot_product_attention on the same shapes as contiguous tensors. Times are
`triton.testing.do_bench` medians.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ helpers when run from a checkout

from _ceilings import copy_gbs
from _report import Panel, Report, Series, add_out_arg, progress
from pdpair.kernels.attention import (
    decode_attention,
    decode_attention_ref,
    decode_workspace,
    extend_attention,
)

ROWS: list[tuple[str, str, str]] = []


def row(name: str, value: str, note: str = "") -> None:
    ROWS.append((name, value, note))
    print(f"  {name:<48} {value:>14}  {note}", flush=True)


def median_ms(fn, warmup: int = 25, rep: int = 200) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def bench_copy() -> float:
    gbs = copy_gbs()  # 4 GiB after a second of copies, as bench/engine_gpu.py measures its floors
    row("D2D copy (read + write)", f"{gbs:8.0f} GB/s", "ceiling")
    return gbs


def _decode_inputs(bsz=64, ctx=4096, heads=32, kv_heads=8, head_dim=128, page=16, layers=2):
    pages_per_row = ctx // page
    num_pages = bsz * pages_per_row
    pool = torch.randn(num_pages, layers, 2, page, kv_heads, head_dim, dtype=torch.bfloat16, device="cuda")
    perm = torch.randperm(num_pages, device="cuda").to(torch.int32)
    pos = torch.arange(ctx, device="cuda", dtype=torch.int32)
    rows = [perm[b * pages_per_row + pos // page] * page + pos % page for b in range(bsz)]
    kv_indices = torch.cat(rows)
    kv_indptr = torch.arange(0, (bsz + 1) * ctx, ctx, dtype=torch.int32, device="cuda")
    q = torch.randn(bsz, heads, head_dim, dtype=torch.bfloat16, device="cuda")
    layer = layers - 1  # the last layer: with several, a strided view inside the item like the engine's
    return q, pool[:, layer, 0], pool[:, layer, 1], kv_indptr, kv_indices


def bench_decode(ceiling: float, sweep: bool) -> dict:
    bsz, ctx, heads, kv_heads, head_dim = 64, 4096, 32, 8, 128
    q, kc, vc, kv_indptr, kv_indices = _decode_inputs(bsz, ctx, heads, kv_heads, head_dim)
    kv_bytes = bsz * ctx * kv_heads * head_dim * 2 * 2
    configs = [dict(block_n=64, num_warps=4, num_stages=2, num_splits=None)]
    if sweep:
        configs = [dict(block_n=bn, num_warps=w, num_stages=s, num_splits=sp)
                   for bn, w, s, sp in itertools.product((64, 128), (4, 8), (2, 3), (None, 4))]
    results = []
    for cfg in configs:
        splits = cfg["num_splits"]
        from pdpair.kernels.attention import default_num_splits

        ns = splits or default_num_splits(bsz, kv_heads)
        ws = decode_workspace(bsz, heads, head_dim, ns, "cuda", kv_heads)
        o = torch.empty_like(q)
        kw = dict(cfg, num_splits=ns)

        def fn(kw=kw, ws=ws, o=o):
            decode_attention(q, kc, vc, kv_indptr, kv_indices, o=o, workspace=ws, **kw)

        try:
            ms = median_ms(fn)
        except Exception as exc:  # a config that does not compile (e.g. out of shared memory)
            print(f"    skip {kw}: {type(exc).__name__}", flush=True)
            continue
        results.append((ms, kw))
        print(f"    decode {kw}: {ms * 1e3:8.1f} us  {kv_bytes / ms / 1e6:7.0f} GB/s", flush=True)
    ms, best = min(results, key=lambda r: r[0])
    # correctness of the timed configuration on a few rows against the fp32 twin
    o = decode_attention(q, kc, vc, kv_indptr, kv_indices, **best)
    sub = torch.arange(0, bsz, 9, device="cuda")
    ref = decode_attention_ref(q[sub].float(), kc.float(), vc.float(),
                               torch.arange(0, (len(sub) + 1) * ctx, ctx, dtype=torch.int32, device="cuda"),
                               torch.cat([kv_indices[int(i) * ctx : (int(i) + 1) * ctx] for i in sub]))
    err = float((o[sub].float() - ref).norm() / ref.norm())
    gbs = kv_bytes / ms / 1e6
    row(f"decode B{bsz} ctx{ctx} {heads}q/{kv_heads}kv d{head_dim} bf16 p16", f"{gbs:8.0f} GB/s",
        f"{ms * 1e3:.1f} us, {100 * gbs / ceiling:.0f}% of copy; rel err {err:.1e}; {best}")
    return {"ms": ms, "gbs": gbs, "pct": gbs / ceiling, "config": best, "rel_err": err}


def bench_swa_decode(bsz: int = 64, ctx: int = 32768, window: int = 4096) -> dict:
    """Decode at a 32k context: every key (full attention) vs a sliding window of 4k keys read through
    window-clipped kv_indices (what the engine builds for a `swa` layer). Time must track the window."""
    heads, kv_heads, head_dim, page = 32, 8, 128, 16
    q, kc, vc, kv_indptr, kv_indices = _decode_inputs(bsz, ctx, heads, kv_heads, head_dim, page, layers=1)
    start = (ctx - window) // page * page  # page of the first key the query sees, as the engine lists it
    win_indices = kv_indices.view(bsz, ctx)[:, start:].reshape(-1).contiguous()
    win_indptr = torch.arange(0, (bsz + 1) * (ctx - start), ctx - start, dtype=torch.int32, device="cuda")
    from pdpair.kernels.attention import default_num_splits

    ns = default_num_splits(bsz, kv_heads)
    ws = decode_workspace(bsz, heads, head_dim, ns, "cuda", kv_heads)
    o = torch.empty_like(q)
    full_ms = median_ms(lambda: decode_attention(q, kc, vc, kv_indptr, kv_indices, o=o, workspace=ws, num_splits=ns))
    swa_ms = median_ms(lambda: decode_attention(q, kc, vc, win_indptr, win_indices, o=o, workspace=ws,
                                                num_splits=ns, window=window))
    # the clipped read equals a masked full scan
    got = decode_attention(q, kc, vc, win_indptr, win_indices, window=window).float()
    ref = decode_attention(q, kc, vc, kv_indptr, kv_indices, window=window).float()
    err = float((got - ref).norm() / ref.norm())
    row(f"decode B{bsz} ctx{ctx} full attention", f"{full_ms * 1e3:8.1f} us")
    row(f"decode B{bsz} ctx{ctx} window {window} (swa)", f"{swa_ms * 1e3:8.1f} us",
        f"{swa_ms / full_ms:.3f} x full (window/ctx = {window / ctx:.3f}); vs masked full scan rel err {err:.1e}")
    return {"full_ms": full_ms, "swa_ms": swa_ms, "ratio": swa_ms / full_ms, "rel_err": err}


def bench_decode_contexts(ceiling: float, contexts: list[int], bsz: int = 64) -> dict[int, float]:
    """Decode GB/s of KV read at each context length (default launch configuration, batch `bsz`)."""
    from pdpair.kernels.attention import default_num_splits

    heads, kv_heads, head_dim = 32, 8, 128
    out = {}
    for ctx in progress(contexts, desc="decode vs context", unit="ctx"):
        q, kc, vc, kv_indptr, kv_indices = _decode_inputs(bsz, ctx, heads, kv_heads, head_dim)
        ws = decode_workspace(bsz, heads, head_dim, default_num_splits(bsz, kv_heads), "cuda", kv_heads)
        o = torch.empty_like(q)
        ms = median_ms(lambda q=q, kc=kc, vc=vc, ip=kv_indptr, ix=kv_indices, o=o, ws=ws:
                       decode_attention(q, kc, vc, ip, ix, o=o, workspace=ws))
        out[ctx] = bsz * ctx * kv_heads * head_dim * 2 * 2 / ms / 1e6
        row(f"decode B{bsz} ctx{ctx} {heads}q/{kv_heads}kv d{head_dim} bf16 p16", f"{out[ctx]:8.0f} GB/s",
            f"{ms * 1e3:.1f} us, {100 * out[ctx] / ceiling:.0f}% of copy; default config")
        del q, kc, vc, kv_indptr, kv_indices, ws, o
        torch.cuda.empty_cache()
    return out


def bench_extend(sweep: bool) -> dict:
    bsz, n, heads, kv_heads, head_dim = 8, 4096, 32, 8, 128
    t = bsz * n
    q = torch.randn(t, heads, head_dim, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(t, kv_heads, head_dim, dtype=torch.bfloat16, device="cuda")
    v = torch.randn(t, kv_heads, head_dim, dtype=torch.bfloat16, device="cuda")
    qo = torch.arange(0, (bsz + 1) * n, n, dtype=torch.int32, device="cuda")
    seq = torch.full((bsz,), n, dtype=torch.int32, device="cuda")
    kv_indptr = torch.zeros(bsz + 1, dtype=torch.int32, device="cuda")
    kv_indices = torch.zeros(1, dtype=torch.int32, device="cuda")
    cache = torch.zeros(1, 16, kv_heads, head_dim, dtype=torch.bfloat16, device="cuda")
    flops = 4 * bsz * heads * head_dim * (n * (n + 1) / 2)  # QK^T and PV over the causal triangle

    # SDPA on the same shapes as contiguous [B, H, N, D] tensors (K/V expanded to all heads)
    qs = q.view(bsz, n, heads, head_dim).transpose(1, 2).contiguous()
    ks = k.view(bsz, n, kv_heads, head_dim).repeat_interleave(heads // kv_heads, 2).transpose(1, 2).contiguous()
    vs = v.view(bsz, n, kv_heads, head_dim).repeat_interleave(heads // kv_heads, 2).transpose(1, 2).contiguous()
    sdpa = torch.nn.functional.scaled_dot_product_attention
    sdpa_ms = median_ms(lambda: sdpa(qs, ks, vs, is_causal=True))
    ref = sdpa(qs, ks, vs, is_causal=True).transpose(1, 2).reshape(t, heads, head_dim)
    per_backend = {}
    from torch.nn.attention import SDPBackend, sdpa_kernel

    for name in ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION"):
        try:
            with sdpa_kernel([getattr(SDPBackend, name)]):
                per_backend[name] = median_ms(lambda: sdpa(qs, ks, vs, is_causal=True))
        except Exception as exc:  # a backend this build or GPU lacks
            print(f"    SDPA {name}: unavailable ({type(exc).__name__})", flush=True)

    configs = [dict(has_prefix=False)]  # the launcher's defaults
    if sweep:
        configs += [dict(block_m=bm, block_n=bn, num_warps=w, num_stages=st, use_tma=tma, has_prefix=False)
                    for bm, bn, w, st, tma in [
                        (128, 128, 8, 2, True), (128, 64, 8, 3, True), (64, 64, 4, 3, True),
                        (128, 128, 8, 3, False), (128, 64, 8, 3, False)]]
        configs.append(dict(has_prefix=True))  # the same defaults with the (empty) prefix loop compiled in
    results = []
    for cfg in configs:
        o = torch.empty_like(q)

        def fn(cfg=cfg, o=o):
            extend_attention(q, k, v, cache, cache, qo, seq, kv_indptr, kv_indices, n, o=o, **cfg)

        try:
            ms = median_ms(fn)
        except Exception as exc:
            print(f"    skip {cfg}: {type(exc).__name__}", flush=True)
            continue
        results.append((ms, cfg))
        print(f"    extend {cfg}: {ms:7.3f} ms  {flops / ms / 1e9:6.0f} TFLOP/s", flush=True)
    ms, best = min(results, key=lambda r: r[0])
    o = extend_attention(q, k, v, cache, cache, qo, seq, kv_indptr, kv_indices, n, **best)
    err = float((o.float() - ref.float()).norm() / ref.float().norm())
    tf, sdpa_tf = flops / ms / 1e9, flops / sdpa_ms / 1e9
    row("SDPA causal 8x4096 32q heads d128 bf16", f"{sdpa_tf:6.0f} TFLOP/s",
        f"{sdpa_ms:.3f} ms, torch's default choice (K/V expanded to 32 heads)")
    for name, b_ms in per_backend.items():
        row(f"  SDPA forced to {name}", f"{flops / b_ms / 1e9:6.0f} TFLOP/s", f"{b_ms:.3f} ms")
    row("extend causal 8x4096 32q/8kv d128 bf16", f"{tf:6.0f} TFLOP/s",
        f"{ms:.3f} ms, {sdpa_ms / ms:.2f}x SDPA; rel err vs SDPA {err:.1e}; {best}")
    return {"ms": ms, "tflops": tf, "sdpa_ms": sdpa_ms, "sdpa_tflops": sdpa_tf, "sdpa_backends_ms": per_backend,
            "config": best, "rel_err": err}


def bench_extend_prefix(bsz: int = 8, prefix: int = 3584, new: int = 512) -> dict:
    """A chunked-prefill step: `new` tokens per row over a `prefix`-token paged prefix (page 16, shuffled)."""
    heads, kv_heads, head_dim = 32, 8, 128
    _, kc, vc, _, kv_indices = _decode_inputs(bsz, prefix, heads, kv_heads, head_dim)
    t = bsz * new
    q = torch.randn(t, heads, head_dim, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(t, kv_heads, head_dim, dtype=torch.bfloat16, device="cuda")
    v = torch.randn(t, kv_heads, head_dim, dtype=torch.bfloat16, device="cuda")
    qo = torch.arange(0, (bsz + 1) * new, new, dtype=torch.int32, device="cuda")
    seq = torch.full((bsz,), prefix + new, dtype=torch.int32, device="cuda")
    kv_indptr = torch.arange(0, (bsz + 1) * prefix, prefix, dtype=torch.int32, device="cuda")
    flops = 4 * bsz * heads * head_dim * (new * prefix + new * (new + 1) / 2)
    ms = median_ms(lambda: extend_attention(q, k, v, kc, vc, qo, seq, kv_indptr, kv_indices, new))
    row(f"extend chunk {bsz}x{new} over {prefix} paged prefix", f"{flops / ms / 1e9:6.0f} TFLOP/s",
        f"{ms:.3f} ms; prefix K/V gathered through kv_indices")
    return {"ms": ms, "tflops": flops / ms / 1e9}


def bench_model(model_dir: str | None, context: int = 1024) -> dict:
    """Decode forward steps of the embedded model's shape (seeded weights): torch backend, triton eager,
    triton under CUDA graphs. tokens/s = batch / step time (model forward only; sampling and scheduling
    excluded)."""
    from pdpair.engine import Engine
    from pdpair.engine.loader import load_model

    from tests.kernels._attention_engine_fixtures import (
        decode_batch,
        decode_graphs,
        eager_logits,
        fill_kv_random,
        make_seeded_model_dir,
    )

    if model_dir is None:
        model_dir = str(make_seeded_model_dir(Path(tempfile.mkdtemp(prefix="smollm2_shape_"))))
    lm = load_model(model_dir, device="cuda", dtype="bfloat16")
    out = {}
    for backend in ("torch", "triton"):
        eng = Engine.from_loaded(lm, device="cuda", max_pages=64 * context // 16 + 64, attention_backend=backend,
                                 max_running_requests=64, disable_cuda_graph=True)  # graphs captured below
        fill_kv_random(eng)
        graphs = decode_graphs(eng, 64, buckets=(1, 64)) if backend == "triton" else None
        for bsz in (1, 64):
            batch, release = decode_batch(eng, [context] * bsz)
            modes = [("eager", lambda b=batch, e=eng: eager_logits(e, b))]
            if graphs is not None:
                modes.append(("CUDA graph", lambda b=batch, g=graphs: g.replay(b)))
            for mode, fn in modes:
                ms = median_ms(fn, rep=300)
                tps = bsz / ms * 1e3
                out[f"{backend}_{mode}_b{bsz}"] = tps
                row(f"model decode step b{bsz} ctx{context} {backend} {mode}", f"{tps:8.0f} tok/s",
                    f"{ms * 1e3:.0f} us/step; SmolLM2-135M shape, seeded bf16 weights")
            release()
        del eng, graphs
        torch.cuda.empty_cache()
    return out


def bench_generate(model_dir: str | None, new_tokens: int = 128, prompt_len: int = 32) -> dict:
    """End to end through `Engine.generate` (scheduler, sampling, host syncs included), triton backend,
    CUDA graphs on and off: decode tokens/s = generated tokens / wall time (short prompts)."""
    import dataclasses
    import time

    from pdpair.engine import Engine, EngineConfig, SamplingParams
    from pdpair.engine.loader import load_model

    from tests.kernels._attention_engine_fixtures import make_seeded_model_dir

    if "disable_cuda_graph" not in {f.name for f in dataclasses.fields(EngineConfig)}:
        print("    engine has no CUDA-graph switch: generate rows skipped", flush=True)
        return {}
    if model_dir is None:
        model_dir = str(make_seeded_model_dir(Path(tempfile.mkdtemp(prefix="smollm2_shape_"))))
    lm = load_model(model_dir, device="cuda", dtype="bfloat16")
    gen = torch.Generator().manual_seed(0)
    out = {}
    for disable in (True, False):
        eng = Engine.from_loaded(lm, device="cuda", max_pages=8192, attention_backend="triton",
                                 max_running_requests=64, disable_cuda_graph=disable)
        for bsz in (1, 64):
            prompts = [torch.randint(3, 49152, (prompt_len,), generator=gen).tolist() for _ in range(bsz)]
            sp = SamplingParams(max_new_tokens=new_tokens, temperature=0.0, ignore_eos=True)
            eng.generate(prompts[:1], SamplingParams(max_new_tokens=4, temperature=0.0))  # warm up
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            res = eng.generate(prompts, sp)
            torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            n = sum(len(r.token_ids) for r in res)
            mode = "eager" if disable else "CUDA graphs"
            out[f"b{bsz}_{'eager' if disable else 'graphs'}"] = n / dt
            row(f"engine.generate b{bsz} triton {mode}", f"{n / dt:8.0f} tok/s",
                f"{n} tokens in {dt:.2f} s incl. {prompt_len}-token prefill; scheduler + sampling included")
        del eng
        torch.cuda.empty_cache()
    return out


def write_report(res: dict, out_dir: Path) -> None:
    """The ROWS table (bench/out/kernels.md/.json) and the decode-vs-context plot."""
    report = Report("kernels", out_dir)
    report.table(f"kernels: {res['device']}, torch {torch.__version__}", ["what", "value", "note"],
                 [list(r) for r in ROWS], extra={"results": res})
    by_ctx = res.get("decode_vs_context_gbs")
    if by_ctx:
        ctxs = list(by_ctx)
        report.lines("kernels_decode_context", [
            Panel("split-KV decode, batch 64, bf16", "context (tokens)", "GB/s of KV read",
                  [Series("decode", ctxs, list(by_ctx.values())),
                   Series("D2D copy ceiling", [ctxs[0], ctxs[-1]], [res["copy_gbs"]] * 2, "--")],
                  logx=True, xticks=ctxs),
            Panel("share of the copy ceiling", "context (tokens)", "%",
                  [Series("decode", ctxs, [100 * g / res["copy_gbs"] for g in by_ctx.values()])],
                  logx=True, xticks=ctxs)], f"decode attention kernel on {res['device']}")
    report.done()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", action="store_true", help="try block sizes / warps / stages, report the best")
    ap.add_argument("--model-dir", help="HF directory for the model rows (default: seeded SmolLM2-135M shape)")
    ap.add_argument("--no-model", action="store_true", help="kernels only")
    ap.add_argument("--only", choices=("decode", "extend", "mla"), help="one kernel family only (tuning runs)")
    ap.add_argument("--json", help="also write the numbers here (bench/out/kernels.json is always written)")
    ap.add_argument("--contexts", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192, 16384],
                    help="context lengths of the decode-vs-context rows and plot")
    add_out_arg(ap)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/kernels.py needs a CUDA device")
    torch.manual_seed(0)
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    res = {"device": torch.cuda.get_device_name()}
    res["copy_gbs"] = bench_copy()
    if args.only in (None, "decode"):
        res["decode"] = bench_decode(res["copy_gbs"], args.sweep)
        res["decode_vs_context_gbs"] = bench_decode_contexts(res["copy_gbs"], args.contexts)
        torch.cuda.empty_cache()
        res["swa_decode"] = bench_swa_decode()
        from bench.mamba_rows import bench_mamba

        torch.cuda.empty_cache()
        res["mamba"] = bench_mamba(res["copy_gbs"], row, median_ms)
    if args.only in (None, "decode", "mla"):
        from bench.mla_rows import bench_mla

        torch.cuda.empty_cache()
        res["mla"] = bench_mla(res["copy_gbs"], row, median_ms)
    torch.cuda.empty_cache()
    if args.only in (None, "extend"):
        res["extend"] = bench_extend(args.sweep)
        res["extend_prefix"] = bench_extend_prefix()
    if not args.no_model and args.only is None:
        torch.cuda.empty_cache()
        res["model"] = bench_model(args.model_dir)
        res["generate"] = bench_generate(args.model_dir)
    write_report(res, args.out_dir)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str))


if __name__ == "__main__":
    main()
