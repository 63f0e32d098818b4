"""Fused-kernel cases (inputs, kernel, twin) shared by the interpreter tests and the GPU tests.

Each case draws fresh random inputs, poisons nothing it does not compare, and returns the worst relative
error of the kernel against its twin (the twin run on float64 copies of the inputs, except where noted) plus
exact checks that need no tolerance.
"""

from __future__ import annotations

import torch

from tests.kernels._attention_fixtures import rel_err


def add_rmsnorm_case(dtype, rows: int, cols: int, device: str = "cpu", seed: int = 0) -> dict:
    from pdpair.kernels.fused import add_rmsnorm, add_rmsnorm_ref

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=gen).to(device=device, dtype=dtype)
    res = (3 * torch.randn(rows, cols + 8, generator=gen)).to(device=device, dtype=dtype)[:, :cols]  # strided rows
    w = (1 + 0.5 * torch.randn(cols, generator=gen)).to(device=device, dtype=dtype)
    res_k, res_r = res.clone(), res.clone()
    out = add_rmsnorm(x, res_k, w, 1e-5)
    ref = add_rmsnorm_ref(x, res_r, w, 1e-5)
    same_dtype = add_rmsnorm_ref(x.double(), res.double().clone(), w.double(), 1e-5)
    plain = add_rmsnorm(None, res_k.clone(), w, 1e-5)  # no add: the norm of the residual as it is
    # only some rows, out of order (a forward's last norm over its logits rows): those rows of the full result,
    # and the residual updated at those rows only
    pick = torch.tensor(sorted({rows - 1, 0}, reverse=True), device=device)
    res_p = res.clone()
    picked = add_rmsnorm(x, res_p, w, 1e-5, rows=pick.cpu())  # host indices, as tensor indexing takes them
    others = torch.ones(rows, dtype=torch.bool, device=device)
    others[pick] = False
    return {"out": rel_err(out, ref), "out64": rel_err(out, same_dtype), "residual": rel_err(res_k, res_r),
            "plain": rel_err(plain, add_rmsnorm_ref(None, res_r.clone(), w, 1e-5)),
            "residual_exact": torch.equal(res_k, res_r),
            "rows_exact": torch.equal(picked, out[pick]) and torch.equal(res_p[pick], res_k[pick])
            and torch.equal(res_p[others], res[others])}


def embed_rope_case(dtype, tokens: int, device: str = "cpu", seed: int = 0) -> dict:
    """`embed_rope` against its twin (`embed_tokens` and `RotaryEmbedding.cos_sin`'s arithmetic): Llama-3.1's
    scaled frequencies, positions up to 8k (large angles) and 0."""
    from pdpair.engine.model_config import RopeScaling
    from pdpair.engine.models.layers import rope_inv_freq
    from pdpair.kernels.fused import embed_rope, embed_rope_ref

    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(1000, 96, generator=gen).to(device=device, dtype=dtype)
    inv_freq = rope_inv_freq(128, 500000.0, RopeScaling("llama3", 8.0, 1.0, 4.0, 8192)).to(device)
    ids = torch.randint(0, 1000, (tokens,), generator=gen).to(device)
    positions = torch.randint(0, 8192, (tokens,), generator=gen)
    positions[0] = 0
    positions = positions.to(device)
    emb, cos, sin = embed_rope(ids, positions, weight, inv_freq)
    r_emb, r_cos, r_sin = embed_rope_ref(ids, positions, weight, inv_freq)
    return {"emb_exact": torch.equal(emb, r_emb), "cos": rel_err(cos, r_cos), "sin": rel_err(sin, r_sin),
            "cos_exact": torch.equal(cos, r_cos), "sin_exact": torch.equal(sin, r_sin),
            "dtype": cos.dtype == sin.dtype == dtype and tuple(cos.shape) == (tokens, 64)}


def silu_mul_case(dtype, rows: int, cols: int, device: str = "cpu", seed: int = 0) -> dict:
    from pdpair.kernels.fused import silu_and_mul, silu_and_mul_ref

    gen = torch.Generator().manual_seed(seed)
    gu = (2 * torch.randn(rows, 2 * cols, generator=gen)).to(device=device, dtype=dtype)
    out = silu_and_mul(gu)
    return {"out": rel_err(out, silu_and_mul_ref(gu)), "out64": rel_err(out, silu_and_mul_ref(gu.double())),
            "shape": tuple(out.shape) == (rows, cols)}


def skinny_linear_case(dtype, rows: int, n: int, k: int, gated: bool = False, bias: bool = False,
                       config: dict | None = None, device: str = "cpu", seed: int = 0,
                       out_dtype: torch.dtype | None = None) -> dict:
    """The skinny linear against `F.linear` (then the unfused SiLU-and-mul with `gated`, the weight then being
    `[2n, k]`) in the same dtype and in float64; the input's rows are strided, and the output's columns past
    `n` must stay untouched. With `out_dtype` (fp32: the LM head's logits) the output is that dtype, and
    `rounded` says whether every value is one of the input dtype's (rounded as `F.linear(...).float()`)."""
    from pdpair.kernels.fused.skinny_linear import skinny_linear, skinny_linear_ref

    gen = torch.Generator().manual_seed(seed)
    nw = 2 * n if gated else n
    x = torch.randn(rows, k + 24, generator=gen).to(device=device, dtype=dtype)[:, :k]  # strided rows
    w = (2 * torch.randn(nw, k, generator=gen) / k**0.5).to(device=device, dtype=dtype)
    b = torch.randn(nw, generator=gen).to(device=device, dtype=dtype) if bias else None
    wide = torch.full((rows, n + 8), 7.0, dtype=out_dtype or dtype, device=device)
    out = skinny_linear(x, w, b, gated=gated, out=wide[:, :n], config=config)
    ref = skinny_linear_ref(x, w, b, gated=gated)
    ref64 = skinny_linear_ref(x.double(), w.double(), None if b is None else b.double(), gated=gated)
    return {"out": rel_err(out, ref), "out64": rel_err(out, ref64), "shape": tuple(out.shape) == (rows, n),
            "tail_untouched": bool((wide[:, n:] == 7.0).all()), "dtype": str(out.dtype),
            "rounded": bool((out == out.to(dtype).to(out.dtype)).all())}


def folded_norm_case(dtype, rows: int, k: int, hidden: int, n: int, consumer: str, bias: bool = False,
                     device: str = "cpu", seed: int = 0, configs: tuple[dict | None, dict | None] = (None, None),
                     head_dim: int = 32, kv_heads: int = 1, release_late: bool = False) -> dict:
    """An RMSNorm folded across two projections: `skinny_linear_add` adds `x [rows, k] W1^T` into a random
    residual `[rows, hidden]` and leaves the next norm's input, which the consumer (`"linear"`, `"gated"`
    (W2 `[2n, hidden]`), or `"qkv"`: the qkv projection with rope and K/V store, n = its q heads) finishes.
    Against the unfused twin chain (residual add, `add_rmsnorm_ref`, F.linear...) in the same dtype and in
    float64: the residual, the consumer's output; also the bare add without a norm. `release_late`: the
    producer as a wide model's fold runs it, its consumer summing the norm's parts before its loop."""
    from pdpair.kernels.fused.skinny_linear import (
        skinny_linear,
        skinny_linear_add,
        skinny_linear_add_ref,
        skinny_linear_ref,
    )
    from pdpair.kernels.fused.skinny_qkv import skinny_qkv_rope_store, skinny_qkv_rope_store_ref

    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=gen)).to(device=device, dtype=dtype)

    x = rnd(rows, k + 24)[:, :k]  # strided rows
    w1, b1 = rnd(hidden, k, scale=2 / k**0.5), rnd(hidden) if bias else None
    residual = rnd(rows, hidden, scale=3.0)
    g = (1 + 0.5 * torch.randn(hidden, generator=gen)).to(device=device, dtype=dtype)
    n2 = (n + 2 * kv_heads) * head_dim if consumer == "qkv" else 2 * n if consumer == "gated" else n
    w2, b2 = rnd(n2, hidden, scale=2 / hidden**0.5), rnd(n2) if bias else None
    res_k, res_r, res_64 = residual.clone(), residual.clone(), residual.double()
    rms = skinny_linear_add(x, w1, b1, res_k, norm=(g, 1e-5), config=configs[0], release_late=release_late)
    h_r = skinny_linear_add_ref(x, w1, b1, res_r, (g, 1e-5))
    h_64 = skinny_linear_add_ref(x.double(), w1.double(), None if b1 is None else b1.double(), res_64,
                                 (g.double(), 1e-5))

    def d64(t):
        return None if t is None else t.double()

    if consumer == "qkv":
        cos, sin, _, pool, slots = _rope_pool_slots(gen, rows, kv_heads, head_dim, 4, dtype, device)
        pools = [pool.clone() for _ in range(2)] + [pool.double()]
        y, _ = skinny_qkv_rope_store(rms.xg, w2, b2, cos, sin, n, kv_heads, pools[0][:, 1, 0], pools[0][:, 1, 1],
                                     slots, config=configs[1], rms=rms)
        y_r, y_64 = (skinny_qkv_rope_store_ref(h, w, b, c, s_, n, kv_heads, p[:, 1, 0], p[:, 1, 1], slots)
                     for h, w, b, c, s_, p in ((h_r, w2, b2, cos, sin, pools[1]),
                                               (h_64, w2.double(), d64(b2), cos.double(), sin.double(), pools[2])))
        extra = {"k_cache": rel_err(pools[0][:, 1].float(), pools[1][:, 1].float())}
    else:
        gated = consumer == "gated"
        y = skinny_linear(rms.xg, w2, b2, gated=gated, config=configs[1], rms=rms)
        y_r = skinny_linear_ref(h_r, w2, b2, gated=gated)
        y_64 = skinny_linear_ref(h_64, w2.double(), d64(b2), gated=gated)
        extra = {}
    plain_k, plain_r = residual.clone(), residual.clone()
    none = skinny_linear_add(x, w1, b1, plain_k, config=configs[0])
    skinny_linear_add_ref(x, w1, b1, plain_r)
    return {"residual": rel_err(res_k, res_r), "residual64": rel_err(res_k, res_64), "out": rel_err(y, y_r),
            "out64": rel_err(y, y_64), "plain_add": rel_err(plain_k, plain_r), "no_norm": none is None,
            "first": rms.first,
            "parts": tuple(rms.parts.shape)} | extra


def _rope_pool_slots(gen, tokens: int, kv_heads: int, head_dim: int, page_size: int, dtype, device):
    """Random positions' rope angles `[tokens, head_dim / 2]`, a random two-layer item-major pool
    `[pages, 2, 2, page_size, kv_heads, head_dim]` with three spare pages, and a distinct slot per token; with
    more than 2 tokens, token 1 is a CUDA-graph padding row (slot -1: computed, not stored)."""
    pos = torch.randint(0, 4096, (tokens,), generator=gen).float()
    inv = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    freqs = pos[:, None] * inv[None, :]
    cos, sin = freqs.cos().to(device=device, dtype=dtype), freqs.sin().to(device=device, dtype=dtype)
    pages = -(-tokens // page_size) + 3
    pool = torch.randn(pages, 2, 2, page_size, kv_heads, head_dim, generator=gen).to(device=device, dtype=dtype)
    slots = torch.randperm(pages * page_size, generator=gen)[:tokens].to(device)
    if tokens > 2:
        slots[1] = -1
    return cos, sin, pages, pool, slots


def qk_rope_store_case(dtype, tokens: int, heads: int, kv_heads: int, head_dim: int, qk_norm: bool,
                       page_size: int = 16, device: str = "cpu", seed: int = 0) -> dict:
    from pdpair.kernels.fused import qk_rope_store, qk_rope_store_ref

    gen = torch.Generator().manual_seed(seed)
    width = (heads + 2 * kv_heads) * head_dim
    qkv = torch.randn(tokens, width + 16, generator=gen).to(device=device, dtype=dtype)[:, :width]  # strided rows
    cos, sin, pages, pool, slots = _rope_pool_slots(gen, tokens, kv_heads, head_dim, page_size, dtype, device)
    qw = kw = None
    if qk_norm:
        qw = (1 + 0.3 * torch.randn(head_dim, generator=gen)).to(device=device, dtype=dtype)
        kw = (1 + 0.3 * torch.randn(head_dim, generator=gen)).to(device=device, dtype=dtype)
    pool_k, pool_r, pool_64 = pool.clone(), pool.clone(), pool.double()
    q, k, v = qk_rope_store(qkv, cos, sin, heads, kv_heads, pool_k[:, 1, 0], pool_k[:, 1, 1], slots, qw, kw, 1e-6)
    qr, kr, vr = qk_rope_store_ref(qkv, cos, sin, heads, kv_heads, pool_r[:, 1, 0], pool_r[:, 1, 1], slots, qw, kw,
                                   1e-6)
    q6, k6, _ = qk_rope_store_ref(qkv.double(), cos.double(), sin.double(), heads, kv_heads, pool_64[:, 1, 0],
                                  pool_64[:, 1, 1], slots, None if qw is None else qw.double(),
                                  None if kw is None else kw.double(), 1e-6)
    untouched = torch.ones(pages * page_size, dtype=torch.bool)
    untouched[slots[slots >= 0].cpu().long()] = False

    def flat(p: torch.Tensor) -> torch.Tensor:  # layer 1 as [slots, 2 * kv_heads * head_dim]
        return p[:, 1].permute(0, 2, 1, 3, 4).reshape(pages * page_size, -1)

    return {"q": rel_err(q, qr), "k": rel_err(k, kr), "q64": rel_err(q, q6), "k64": rel_err(k, k6),
            "v_exact": torch.equal(v, vr),
            "cache": rel_err(pool_k[:, 1].float(), pool_r[:, 1].float()),
            "cache_others_untouched": torch.equal(flat(pool_k)[untouched.to(device)], flat(pool)[untouched.to(device)])
            and torch.equal(pool_k[:, 0], pool[:, 0])}


def skinny_qkv_case(dtype, rows: int, heads: int, kv_heads: int, head_dim: int, k: int, bias: bool,
                    config: dict | None = None, page_size: int = 4, device: str = "cpu", seed: int = 0,
                    qk_norm: bool = False, repeats: int = 1) -> dict:
    """The qkv projection with rope and the K/V store in its epilogue against `F.linear` + `qk_rope_store_ref`
    (same dtype, and float64): q, the stored K/V slots, and every other slot of the pool untouched. The input's
    rows are strided; with more than 2 rows, row 1 is a CUDA-graph padding row (slot -1). With `qk_norm`, random
    q/k norm weights, one workspace for `repeats` launches (each on new inputs, every result checked, the
    worst reported): its counters must be back at zero after each launch."""
    from pdpair.kernels.fused.skinny_qkv import qk_norm_workspace

    gen = torch.Generator().manual_seed(seed)
    n = (heads + 2 * kv_heads) * head_dim
    ws = qk_norm_workspace(heads, kv_heads, head_dim, device) if qk_norm else None
    worst: dict = {}
    for _ in range(repeats):
        r = _skinny_qkv_once(gen, dtype, rows, heads, kv_heads, head_dim, k, n, bias, config, page_size, device, ws)
        for key, v in r.items():
            if key in worst and isinstance(v, bool):
                v = worst[key] and v
            elif key in worst and isinstance(v, float):
                v = max(worst[key], v)
            worst[key] = v
    return worst


def _skinny_qkv_once(gen, dtype, rows, heads, kv_heads, head_dim, k, n, bias, config, page_size, device, ws):
    from pdpair.kernels.fused.skinny_qkv import skinny_qkv_rope_store, skinny_qkv_rope_store_ref

    x = torch.randn(rows, k + 24, generator=gen).to(device=device, dtype=dtype)[:, :k]  # strided rows
    w = (2 * torch.randn(n, k, generator=gen) / k**0.5).to(device=device, dtype=dtype)
    b = torch.randn(n, generator=gen).to(device=device, dtype=dtype) if bias else None
    cos, sin, pages, pool, slots = _rope_pool_slots(gen, rows, kv_heads, head_dim, page_size, dtype, device)
    norm = norm64 = None
    if ws is not None:
        qw, kw = ((1 + 0.3 * torch.randn(head_dim, generator=gen)).to(device=device, dtype=dtype) for _ in "qk")
        norm, norm64 = (qw, kw, 1e-6), (qw.double(), kw.double(), 1e-6)
    pool_k, pool_r, pool_64 = pool.clone(), pool.clone(), pool.double()
    q, _ = skinny_qkv_rope_store(x, w, b, cos, sin, heads, kv_heads, pool_k[:, 1, 0], pool_k[:, 1, 1], slots,
                                 config=config, **({} if ws is None else {"qk_norm": norm, "workspace": ws}))
    qr = skinny_qkv_rope_store_ref(x, w, b, cos, sin, heads, kv_heads, pool_r[:, 1, 0], pool_r[:, 1, 1], slots,
                                   qk_norm=norm)
    q6 = skinny_qkv_rope_store_ref(x.double(), w.double(), None if b is None else b.double(), cos.double(),
                                   sin.double(), heads, kv_heads, pool_64[:, 1, 0], pool_64[:, 1, 1], slots,
                                   qk_norm=norm64)
    stored = slots[slots >= 0].long()
    untouched = torch.ones(pages * page_size, dtype=torch.bool, device=device)
    untouched[stored] = False

    def flat(p: torch.Tensor) -> torch.Tensor:  # layer 1 as [slots, 2, kv_heads * head_dim]
        return p[:, 1].permute(0, 2, 1, 3, 4).reshape(pages * page_size, 2, -1)

    got, ref, ref64 = flat(pool_k)[stored], flat(pool_r)[stored], flat(pool_64)[stored]
    return {"shape": tuple(q.shape) == (rows, heads, head_dim), "q": rel_err(q, qr), "q64": rel_err(q, q6),
            "k_cache": rel_err(got[:, 0], ref[:, 0]), "v_cache": rel_err(got[:, 1], ref[:, 1]),
            "k_cache64": rel_err(got[:, 0], ref64[:, 0]), "v_cache64": rel_err(got[:, 1], ref64[:, 1]),
            "stored": int(stored.numel()),
            "others_untouched": torch.equal(flat(pool_k)[untouched], flat(pool)[untouched])
            and torch.equal(pool_k[:, 0], pool[:, 0]),
            "counters_zero": ws is None or not bool(ws.counters.any())}


def fused_engine_case(arch: str, sdpa: bool = False, late_fold: bool = False) -> dict:
    """A tiny seeded model of `arch` through the engine on CPU with the (interpreted) triton backend: fused
    kernels off, then on ("early": the fold as a small model runs it, releasing after the wait), with `sdpa`
    on again with no-prefix prefill chunks through SDPA ("sdpa"), and with `late_fold` once more, folded as a wide model
    folds ("late": the hidden-size limits moved below its 64, the residual-adding projections releasing after
    their loop). Per fused run: greedy tokens equal to the unfused run's, one decode batch's logits against
    the unfused ones, how often the fused forward ran, how often its decode steps ran the qkv projection with
    rope and the K/V store fused, and how often the residual-adding projections released early and late."""
    import pdpair.engine.models.fused as fused_mod
    from pdpair.engine import Engine, SamplingParams

    from tests.kernels._attention_engine_fixtures import (
        decode_batch,
        eager_logits,
        fill_kv_random,
        seeded_tiny_model,
    )

    loaded = seeded_tiny_model(arch, 5)
    gen = torch.Generator().manual_seed(6)  # the prompts
    calls, qkv_calls, adds = [], [], []
    real, real_qkv, real_add = fused_mod.fused_forward, fused_mod.skinny_qkv_rope_store, fused_mod.skinny_linear_add
    limits = fused_mod.FOLD_MAX_HIDDEN, fused_mod.FOLD_LATE_MIN_HIDDEN
    fused_mod.fused_forward = lambda *a: calls.append(1) or real(*a)
    fused_mod.skinny_qkv_rope_store = lambda *a, **k: qkv_calls.append(a[0].shape[0]) or real_qkv(*a, **k)
    fused_mod.skinny_linear_add = lambda *a, **k: adds.append(k.get("release_late")) or real_add(*a, **k)
    prompts = [torch.randint(3, 256, (n,), generator=gen).tolist() for n in (1, 5, 11)]
    runs = {"unfused": (False, False, False), "early": (True, False, False)}
    if sdpa:
        runs["sdpa"] = (True, True, False)
    if late_fold:
        runs["late"] = (True, False, True)
    out = {}
    try:
        for run, (on, chunks_sdpa, late) in runs.items():
            fused_mod.FOLD_MAX_HIDDEN, fused_mod.FOLD_LATE_MIN_HIDDEN = (32, 64) if late else limits
            eng = Engine.from_loaded(loaded, device="cpu", page_size=4, max_pages=96, chunk_size=8,
                                     attention_backend="triton", max_running_requests=8)
            # the engine turns both on only on CUDA
            assert not eng.runner.backend.fused_ops and not eng.runner.backend.extend_sdpa
            eng.runner.backend.fused_ops, eng.runner.backend.extend_sdpa = on, chunks_sdpa
            eng.runner.backend.fused_qkv = on
            marks = len(calls), len(qkv_calls), len(adds)
            res = eng.generate(prompts, SamplingParams(max_new_tokens=4, temperature=0.0))
            fill_kv_random(eng, 1)
            batch, release = decode_batch(eng, [1, 9, 22], seed=2)
            logits = eager_logits(eng, batch)
            release()
            eng.pools.check_integrity()
            ran = adds[marks[2]:]
            out[run] = {"tokens": [o.token_ids for o in res], "logits": logits, "fused_calls": len(calls) - marks[0],
                        "qkv_calls": len(qkv_calls) - marks[1], "late_adds": ran.count(True),
                        "early_adds": ran.count(False)}
    finally:
        fused_mod.fused_forward, fused_mod.skinny_qkv_rope_store = real, real_qkv
        fused_mod.skinny_linear_add = real_add
        fused_mod.FOLD_MAX_HIDDEN, fused_mod.FOLD_LATE_MIN_HIDDEN = limits
    base = out.pop("unfused")
    for r in out.values():
        r["tokens_equal"] = r.pop("tokens") == base["tokens"]
        r["rel_err"] = rel_err(r.pop("logits"), base["logits"])
    out["unfused"] = {"tokens": base["tokens"], "fused_calls": base["fused_calls"]}
    return out


def graph_body_case(fused: bool) -> dict:
    """What a decode CUDA graph runs, eagerly on CPU (interpreted kernels, tiny model): the metadata it derives
    from the packed (ids, positions, rows) upload equals what `_fill` writes, and its logits equal the eager
    forward of the padded batch."""
    import numpy as np
    from pdpair.engine import Engine
    from pdpair.engine.batch import ForwardContext
    from pdpair.engine.cuda_graph import DecodeCudaGraphs

    from tests.kernels._attention_engine_fixtures import (
        decode_batch,
        eager_logits,
        fill_kv_random,
        seeded_tiny_model,
    )

    loaded = seeded_tiny_model("llama", 9)
    model = loaded.model
    eng = Engine.from_loaded(loaded, device="cpu", page_size=4, max_pages=64, attention_backend="triton",
                             max_running_requests=8)
    eng.runner.backend.fused_ops = fused
    fill_kv_random(eng)
    batch, release = decode_batch(eng, [1, 9, 17], seed=2)
    graphs = DecodeCudaGraphs(model, eng.runner.backend, eng.req_to_token.table, 8, eng.req_to_token.max_context,
                              buckets=(4, 8))
    graphs.backend.init_graph_state(8, eng.req_to_token.max_context)
    padded = graphs.padded_batch(batch)  # _fill: the metadata as the host path writes it
    expect = {"seq_lens": graphs.seq_lens[:4].clone(), "out_cache_loc": graphs.out_cache_loc[:4].clone(),
              "kv_indptr": graphs.kv_indptr[:5].clone()}  # what bucket 4's graph reads
    n = int(graphs.kv_indptr[4])
    expect_indices = graphs.kv_indices[:n].clone()
    graphs.backend.prepare_for_replay(padded, 4)
    eager = eager_logits(eng, padded)[:3]
    for k in ("seq_lens", "out_cache_loc", "kv_indptr", "kv_indices", "inputs"):
        getattr(graphs, k).fill_(7)  # poison: the body must rebuild everything
    host = np.empty(graphs.inputs.shape[0], dtype=np.int64)
    graphs.pack_inputs(host, batch.input_ids.tolist(), batch.positions.numpy(), batch.req_pool_indices.numpy())
    graphs.inputs.copy_(torch.from_numpy(host))
    ctx = ForwardContext(graphs.backend, graphs._static_batch(4), graphs.logits_rows[:4])
    graphs.backend.prepare_for_replay(ctx.batch, 4)
    with torch.inference_mode():
        body = graphs._body(4, ctx)[:3]
    release()
    same = all(torch.equal(getattr(graphs, k)[: len(v)], v) for k, v in expect.items())
    return {"metadata": same and torch.equal(graphs.kv_indices[:n], expect_indices),
            "padding": graphs.seq_lens[3:4].tolist() == [1] and graphs.out_cache_loc[3:4].tolist() == [-1],
            "rel_err": rel_err(body, eager)}


class _Wrapped(torch.nn.Module):
    """A stand-in for a module that a sharding layer wraps: forwards to the inner module."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args):
        return self.inner(*args)


def wrapped_modules_case() -> dict:
    """The fused forward runs a wrapped attention or MLP through the wrapper's own forward: same logits."""
    from pdpair.engine import Engine

    from tests.kernels._attention_engine_fixtures import (
        decode_batch,
        eager_logits,
        fill_kv_random,
        seeded_tiny_model,
    )

    loaded = seeded_tiny_model("qwen3", 11)
    model = loaded.model
    eng = Engine.from_loaded(loaded, device="cpu", page_size=4, max_pages=64, attention_backend="triton",
                             max_running_requests=8)
    eng.runner.backend.fused_ops = True
    fill_kv_random(eng, 3)
    batch, release = decode_batch(eng, [2, 11, 6], seed=4)
    plain = eager_logits(eng, batch)
    layer = model.layers[1]
    layer.self_attn, layer.mlp = _Wrapped(layer.self_attn), _Wrapped(layer.mlp)
    wrapped = eager_logits(eng, batch)
    release()
    return {"rel_err": rel_err(wrapped, plain)}


def deferred_qk_norm_case(dtype, contexts: list[int], heads: int, kv_heads: int, head_dim: int, k: int,
                          num_splits: int, preload: bool = False, fused_merge: bool = True, page_size: int = 4,
                          config: dict | None = None, device: str = "cpu", seed: int = 0, pad: bool = False) -> dict:
    """A Qwen3-style decode step's attention with the q/k RMSNorm deferred (`skinny_qkv_rope_store(defer_norm=
    True)` then `decode_attention(qk_norm=...)`) against the norm met in the qkv launch's twin and
    `decode_attention_ref` (same dtype, and float64): the attention output, each row's own key as attention
    leaves it in the cache (normed), its own value, and every other slot of both caches untouched. Row b
    attends to `contexts[b]` keys on random slots, its own token's last. `pad`: one more row laid out as a
    CUDA graph pads (slot -1, attending to one key: row 0's first), whose output is not compared."""
    from pdpair.kernels.attention.decode import decode_attention, decode_attention_ref, decode_workspace
    from pdpair.kernels.fused.skinny_qkv import (
        qk_norm_workspace,
        skinny_qkv_rope_store,
        skinny_qkv_rope_store_ref,
    )

    gen = torch.Generator().manual_seed(seed)
    rows = len(contexts)
    n = (heads + 2 * kv_heads) * head_dim
    x = torch.randn(rows, k, generator=gen).to(device=device, dtype=dtype)
    w = (2 * torch.randn(n, k, generator=gen) / k**0.5).to(device=device, dtype=dtype)
    qw, kw = ((1 + 0.3 * torch.randn(head_dim, generator=gen)).to(device=device, dtype=dtype) for _ in "qk")
    pos = torch.tensor(contexts).float() - 1
    inv = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    freqs = pos[:, None] * inv[None, :]
    cos, sin = freqs.cos().to(device=device, dtype=dtype), freqs.sin().to(device=device, dtype=dtype)
    pages = -(-sum(contexts) // page_size) + 2
    k_cache, v_cache = (torch.randn(pages, page_size, kv_heads, head_dim, generator=gen).to(device=device, dtype=dtype)
                        for _ in range(2))
    perm = torch.randperm(pages * page_size, generator=gen)[: sum(contexts)]
    indptr = torch.tensor([0, *torch.tensor(contexts).cumsum(0).tolist()], dtype=torch.int32, device=device)
    indices = perm.to(device=device, dtype=torch.int32)
    own = indices[indptr[1:].long() - 1].long()
    slots = own
    if pad:
        rows += 1
        x = torch.cat([x, torch.randn(1, k, generator=gen).to(device=device, dtype=dtype)])
        cos, sin = torch.cat([cos, cos[:1]]), torch.cat([sin, sin[:1]])
        indptr = torch.cat([indptr, indptr[-1:] + 1])
        indices = torch.cat([indices, indices[:1]])
        slots = torch.cat([own, own.new_full((1,), -1)])
    norm = (qw, kw, 1e-6)
    kd, vd, kr, vr = k_cache.clone(), v_cache.clone(), k_cache.clone(), v_cache.clone()
    k64, v64 = k_cache.double(), v_cache.double()
    q, scale = skinny_qkv_rope_store(x, w, None, cos, sin, heads, kv_heads, kd, vd, slots, config=config,
                                     qk_norm=norm, workspace=qk_norm_workspace(heads, kv_heads, head_dim, device),
                                     defer_norm=True)
    ws = decode_workspace(rows, heads, head_dim, num_splits, device, kv_heads if fused_merge else None)
    o = decode_attention(q, kd, vd, indptr, indices, num_splits=num_splits, workspace=ws, fused_merge=fused_merge,
                         preload=preload, qk_norm=scale)
    qr = skinny_qkv_rope_store_ref(x, w, None, cos, sin, heads, kv_heads, kr, vr, slots, qk_norm=norm)
    q64 = skinny_qkv_rope_store_ref(x.double(), w.double(), None, cos.double(), sin.double(), heads, kv_heads, k64,
                                    v64, slots, qk_norm=(qw.double(), kw.double(), 1e-6))
    ref = decode_attention_ref(qr, kr, vr, indptr, indices)
    ref64 = decode_attention_ref(q64, k64, v64, indptr, indices)

    def at(cache: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        return cache.reshape(pages * page_size, kv_heads, head_dim)[slots]

    others = torch.ones(pages * page_size, dtype=torch.bool, device=device)
    others[own] = False
    real = len(contexts)
    o, ref, ref64 = o[:real], ref[:real], ref64[:real]
    return {"out": rel_err(o, ref), "out64": rel_err(o, ref64), "own_k": rel_err(at(kd, own), at(kr, own)),
            "own_k64": rel_err(at(kd, own), at(k64, own)), "own_v": rel_err(at(vd, own), at(vr, own)),
            "others_untouched": torch.equal(at(kd, others), at(k_cache, others))
            and torch.equal(at(vd, others), at(v_cache, others)),
            "per_head": scale.per_head}
