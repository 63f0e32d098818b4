"""DeepSeek-V3.2 attention rows of the GPU kernel benchmark (128 heads, latent 512 + rope 64, indexer 64 x 128,
top-k 2048, bf16, page 16, one layer's strided view of a two-layer pool).

MLA decode in GB/s of latent read against the copy ceiling; sparse MLA decode at 4k and 32k context (its time
must track top-k, not the context) beside dense MLA decode at 32k; the indexer's scores and top-k at 32k
(torch.topk beside the Triton radix select);
the prefill forms (indexer over an 8k row, sparse attention for a 4k chunk) in TFLOP/s.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pdpair.kernels.mla import indexer_scores, mla_decode, mla_decode_ref, row_topk, row_topk_ref, sparse_mla

HEADS, DL, DR, HI, DI, TOPK, PAGE = 128, 512, 64, 64, 128, 2048, 16
DEV = "cuda"


def _paged(bsz: int, ctx: int, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(layer 1's view of a shuffled [P, 2, PAGE, width] bf16 pool, kv_indptr, kv_indices) for bsz rows of ctx."""
    ppr = ctx // PAGE
    pool = torch.randn(bsz * ppr, 2, PAGE, width, device=DEV, dtype=torch.bfloat16)
    perm = torch.randperm(bsz * ppr, device=DEV).to(torch.int32).view(bsz, ppr)
    pos = torch.arange(ctx, device=DEV, dtype=torch.int32)
    kv_indices = (perm[:, pos // PAGE] * PAGE + pos % PAGE).reshape(-1)
    kv_indptr = torch.arange(0, (bsz + 1) * ctx, ctx, dtype=torch.int32, device=DEV)
    return pool[:, 1], kv_indptr, kv_indices


def _queries(t: int) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.randn(t, HEADS, DL, device=DEV, dtype=torch.bfloat16),
            torch.randn(t, HEADS, DR, device=DEV, dtype=torch.bfloat16))


def bench_mla_decode(ceiling: float, row: Callable[..., None], median_ms: Callable[..., float],
                     bsz: int = 64, ctx: int = 4096) -> dict:
    latent, kv_indptr, kv_indices = _paged(bsz, ctx, DL + DR)
    q_nope, q_rope = _queries(bsz)
    scale = (DL + DR) ** -0.5
    nbytes = bsz * ctx * (DL + DR) * 2
    configs = [dict(), dict(block_n=64), dict(block_n=16), dict(block_h=32), dict(block_h=64, block_n=16),
               dict(num_splits=8), dict(num_stages=3)]
    timed = []
    for cfg in configs:
        try:
            ms = median_ms(lambda cfg=cfg: mla_decode(q_nope, q_rope, latent, kv_indptr, kv_indices, scale, **cfg))
        except Exception as exc:  # a configuration that does not compile here (e.g. out of shared memory)
            print(f"    skip mla decode {cfg}: {type(exc).__name__}", flush=True)
            continue
        timed.append((ms, cfg))
        print(f"    mla decode {cfg or 'default'}: {ms * 1e3:8.1f} us  {nbytes / ms / 1e6:7.0f} GB/s", flush=True)
    ms, best = min(timed, key=lambda r: r[0])
    o = mla_decode(q_nope, q_rope, latent, kv_indptr, kv_indices, scale, **best)
    sub = torch.arange(0, bsz, 16, device=DEV)
    sub_indices = kv_indices.view(bsz, ctx)[sub].reshape(-1)
    sub_indptr = torch.arange(0, (len(sub) + 1) * ctx, ctx, dtype=torch.int32, device=DEV)
    ref = mla_decode_ref(q_nope[sub].float(), q_rope[sub].float(), latent.float(), sub_indptr, sub_indices, scale)
    err = float((o[sub].float() - ref).norm() / ref.norm())
    default_ms = timed[0][0] if not timed[0][1] else float("nan")
    gbs = nbytes / ms / 1e6
    row(f"MLA decode B{bsz} ctx{ctx} 128h 512+64 bf16 p16", f"{gbs:8.0f} GB/s",
        f"{ms * 1e3:.1f} us, {100 * gbs / ceiling:.0f}% of copy; default config {default_ms * 1e3:.1f} us; "
        f"rel err {err:.1e}; {best or 'default'}")
    return {"ms": ms, "gbs": gbs, "pct": gbs / ceiling, "default_ms": default_ms, "config": best, "rel_err": err}


def bench_sparse_decode(row: Callable[..., None], median_ms: Callable[..., float], bsz: int = 64,
                        short: int = 4096, long: int = 32768) -> dict:
    out = {}
    scale = (DL + DR) ** -0.5
    q_nope, q_rope = _queries(bsz)
    rows = torch.arange(bsz, dtype=torch.int32, device=DEV)
    for ctx in (short, long):
        latent, kv_indptr, kv_indices = _paged(bsz, ctx, DL + DR)
        sel = torch.rand(bsz, ctx, device=DEV).topk(TOPK, dim=1).indices.to(torch.int32)
        out[ctx] = median_ms(lambda lat=latent, p=kv_indptr, i=kv_indices, s=sel:
                                            sparse_mla(q_nope, q_rope, lat, p, i, rows, s, scale))
        if ctx == long:
            out["dense"] = median_ms(lambda lat=latent, p=kv_indptr, i=kv_indices:
                                              mla_decode(q_nope, q_rope, lat, p, i, scale))
        del latent, kv_indptr, kv_indices, sel
        torch.cuda.empty_cache()
    s_short, s_long, d_long = out[short], out[long], out["dense"]
    row(f"sparse MLA decode B{bsz} top-k {TOPK} ctx{short}", f"{s_short * 1e3:8.1f} us")
    row(f"sparse MLA decode B{bsz} top-k {TOPK} ctx{long}", f"{s_long * 1e3:8.1f} us",
        f"{s_long / s_short:.2f} x ctx{short} (time must track top-k)")
    row(f"dense MLA decode B{bsz} ctx{long}", f"{d_long * 1e3:8.1f} us", f"sparse is {d_long / s_long:.1f}x faster")
    return {"sparse_short_ms": s_short, "sparse_long_ms": s_long, "dense_long_ms": d_long,
            "long_over_short": s_long / s_short}


def bench_indexer(row: Callable[..., None], median_ms: Callable[..., float], bsz: int = 64,
                  ctx: int = 32768, prefill: tuple[int, int] = (4096, 8192)) -> dict:
    index_k, kv_indptr, kv_indices = _paged(bsz, ctx, DI)
    q = torch.randn(bsz, HI, DI, device=DEV, dtype=torch.bfloat16)
    w = torch.randn(bsz, HI, device=DEV) * (DI**-0.5 * HI**-0.5)
    rows = torch.arange(bsz, dtype=torch.int32, device=DEV)
    vis = torch.full((bsz,), ctx, dtype=torch.int32, device=DEV)
    score_ms = median_ms(lambda: indexer_scores(q, w, index_k, kv_indptr, kv_indices, rows, vis, ctx))
    scores = indexer_scores(q, w, index_k, kv_indptr, kv_indices, rows, vis, ctx)
    topk_ms = median_ms(lambda: row_topk_ref(scores, TOPK))
    radix_ms = median_ms(lambda: row_topk(scores, TOPK, vis))
    gbs = bsz * ctx * DI * 2 / score_ms / 1e6
    row(f"indexer scores B{bsz} ctx{ctx} 64h x 128", f"{gbs:8.0f} GB/s", f"{score_ms * 1e3:.1f} us of keys read")
    row(f"indexer top-{TOPK} torch.topk B{bsz} ctx{ctx}", f"{topk_ms * 1e3:8.1f} us", "indexer_topk default")
    row(f"indexer top-{TOPK} Triton radix select B{bsz} ctx{ctx}", f"{radix_ms * 1e3:8.1f} us",
        f"{topk_ms / radix_ms:.2f}x torch.topk (triton_topk=True)")
    # prefill: one row's last `t` tokens of an `n`-token context, causal
    t, n = prefill
    q_p = torch.randn(t, HI, DI, device=DEV, dtype=torch.bfloat16)
    w_p = torch.randn(t, HI, device=DEV) * (DI**-0.5 * HI**-0.5)
    rows_p = torch.zeros(t, dtype=torch.int32, device=DEV)
    vis_p = torch.arange(n - t + 1, n + 1, dtype=torch.int32, device=DEV)
    ms_p = median_ms(lambda: indexer_scores(q_p, w_p, index_k, kv_indptr, kv_indices, rows_p, vis_p, n),
                     warmup=5, rep=50)
    flops = 2 * HI * DI * float(vis_p.double().sum())
    row(f"indexer scores prefill {t} tokens over {n}", f"{flops / ms_p / 1e9:6.0f} TFLOP/s", f"{ms_p:.3f} ms")
    # sparse attention for the same chunk: every query over TOPK selected tokens
    latent, kv_indptr, kv_indices = _paged(1, n, DL + DR)
    q_nope, q_rope = _queries(t)
    sel = torch.rand(t, n, device=DEV).mul_(vis_p[:, None] > torch.arange(n, device=DEV)).topk(TOPK, dim=1)
    sel = sel.indices.to(torch.int32)
    flops_s = 2 * t * HEADS * TOPK * (DL + DR + DL)
    timed = []
    for cfg in (dict(), dict(block_h=32), dict(block_h=64, block_n=16)):
        try:
            ms = median_ms(lambda cfg=cfg: sparse_mla(q_nope, q_rope, latent, kv_indptr, kv_indices, rows_p, sel,
                                                      (DL + DR) ** -0.5, **cfg), warmup=5, rep=50)
        except Exception as exc:  # a configuration that does not compile here
            print(f"    skip sparse prefill {cfg}: {type(exc).__name__}", flush=True)
            continue
        timed.append((ms, cfg))
        print(f"    sparse prefill {cfg or 'default'}: {ms:.3f} ms  {flops_s / ms / 1e9:6.0f} TFLOP/s", flush=True)
    ms_s, best = min(timed, key=lambda r: r[0])
    row(f"sparse MLA prefill {t} tokens top-k {TOPK}", f"{flops_s / ms_s / 1e9:6.0f} TFLOP/s",
        f"{ms_s:.3f} ms; {best or 'default'}")
    return {"score_ms": score_ms, "score_gbs": gbs, "topk_ms": topk_ms, "radix_topk_ms": radix_ms, "prefill_score_ms": ms_p,
            "prefill_sparse_ms": ms_s}


def bench_mla(ceiling: float, row: Callable[..., None], median_ms: Callable[..., float]) -> dict:
    res = {"decode": bench_mla_decode(ceiling, row, median_ms)}
    torch.cuda.empty_cache()
    res["sparse_decode"] = bench_sparse_decode(row, median_ms)
    torch.cuda.empty_cache()
    res["indexer"] = bench_indexer(row, median_ms)
    torch.cuda.empty_cache()
    return res
