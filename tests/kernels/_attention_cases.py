"""Attention kernel cases: build random paged inputs, run a kernel and a reference, return relative errors.

Shared by the interpreter tests (run in a TRITON_INTERPRET=1 worker on CPU) and the GPU tests. With
`ref64=True` the reference is the torch twin on float64 copies of the inputs (the GPU bound); otherwise
the twin on the kernel's own dtype (computing in fp32). Outputs start as NaN, so an unwritten element fails.
"""

from __future__ import annotations

import itertools

import torch

from tests.kernels._attention_fixtures import cat_slots, indptr, paged_batch, rel_err


def _to64(*xs):
    return [x.double() for x in xs]


def decode_case(dtype, page_size: int, group: int, window: int, lengths: list[int], splits=(None,),
                kv_heads: int = 2, head_dim: int = 32, block_n: int = 16, seed: int = 0, device: str = "cpu",
                ref64: bool = False, pad_rows: int = 1, preload: bool | None = None) -> list[float]:
    from pdpair.kernels.attention import decode_attention, decode_attention_ref

    gen = torch.Generator().manual_seed(seed)
    batch = paged_batch(lengths, page_size, kv_heads, head_dim, dtype, device=device, gen=gen, layers=2)
    # padded rows as CUDA-graph replay leaves them: fill length 1 on slot 0
    slots = batch.row_slots + [torch.zeros(1, dtype=torch.int32)] * pad_rows
    lens = list(lengths) + [1] * pad_rows
    q = torch.randn(len(lens), kv_heads * group, head_dim, generator=gen).to(device=device, dtype=dtype)
    kv_indptr, kv_indices = indptr(lens, device), cat_slots(slots, device)
    if ref64:
        q64, k64, v64 = _to64(q, batch.k_cache, batch.v_cache)
        ref = decode_attention_ref(q64, k64, v64, kv_indptr, kv_indices, window=window)
    else:
        ref = decode_attention_ref(q, batch.k_cache, batch.v_cache, kv_indptr, kv_indices, window=window)
    errs = []
    for num_splits in splits:
        out = torch.full_like(q, float("nan"))
        decode_attention(q, batch.k_cache, batch.v_cache, kv_indptr, kv_indices, o=out, window=window,
                         num_splits=num_splits, block_n=block_n, preload=preload)
        errs.append(rel_err(out, ref))
    return errs


def extend_case(dtype, page_size: int, group: int, window: int, prefixes: list[int], extends: list[int],
                kv_heads: int = 2, head_dim: int = 32, block_m: int = 32, block_n: int = 16, seed: int = 0,
                device: str = "cpu", ref64: bool = False, strided_q: bool = False,
                use_tma: bool | None = None, has_prefix: bool = True) -> float:
    from pdpair.kernels.attention import extend_attention, extend_attention_ref

    gen = torch.Generator().manual_seed(seed)
    batch = paged_batch(prefixes, page_size, kv_heads, head_dim, dtype, device=device, gen=gen, layers=2)
    seq_lens = [p + e for p, e in zip(prefixes, extends, strict=True)]  # production: seq_lens counts the extend tokens
    slots = list(batch.row_slots)
    # a padded row: fill seq_len 1 while its extend count is 2 (prefix clamps to 0), and a stale kv span
    extends, seq_lens = list(extends) + [2], seq_lens + [1]
    slots.append(torch.zeros(3, dtype=torch.int32))
    t, h = sum(extends), kv_heads * group
    qk = torch.randn(t, h + kv_heads, head_dim, generator=gen).to(device=device, dtype=dtype)
    # the model hands q and k over as slices of its fused qk tensor
    q = qk[:, :h] if strided_q else qk[:, :h].contiguous()
    k_new = qk[:, h:] if strided_q else qk[:, h:].contiguous()
    v_new = torch.randn(t, kv_heads, head_dim, generator=gen).to(device=device, dtype=dtype)
    meta = (indptr(extends, device), torch.tensor(seq_lens, dtype=torch.int32, device=device),
            indptr([s.numel() for s in slots], device), cat_slots(slots, device))
    if ref64:
        ref = extend_attention_ref(*_to64(q, k_new, v_new, batch.k_cache, batch.v_cache), *meta, window=window)
    else:
        ref = extend_attention_ref(q, k_new, v_new, batch.k_cache, batch.v_cache, *meta, window=window)
    out = torch.full_like(q, float("nan"))
    kw = {"use_tma": use_tma, "has_prefix": has_prefix}
    if block_m is not None:
        kw.update(block_m=block_m, block_n=block_n)
    extend_attention(q, k_new, v_new, batch.k_cache, batch.v_cache, *meta, max(extends), o=out, window=window, **kw)
    return rel_err(out, ref)


def kv_indices_case(with_start: bool, device: str = "cpu", block: int = 16) -> tuple[bool, bool, bool]:
    """(indptr right, indices equal the twin's, nothing written past the end)."""
    from pdpair.kernels.attention import build_kv_indices, build_kv_indices_ref, build_kv_indptr

    gen = torch.Generator().manual_seed(int(with_start))
    req_to_token = torch.randint(0, 10_000, (6, 80), generator=gen, dtype=torch.int32).to(device)
    rows = torch.tensor([4, 0, 2, 5], dtype=torch.int32, device=device)
    lens = torch.tensor([37, 0, 1, 70], dtype=torch.int32, device=device)  # an empty row, a fill-length-1 row
    starts = torch.tensor([3, 0, 0, 9], dtype=torch.int32, device=device) if with_start else None
    if starts is not None:
        lens = torch.minimum(lens, 80 - starts)
    kv_indptr = build_kv_indptr(lens)
    total = int(kv_indptr[-1])
    out = torch.full((total + 5,), -1, dtype=torch.int32, device=device)
    build_kv_indices(req_to_token, rows, lens, kv_indptr, out, starts, block=block)
    return (
        kv_indptr.tolist() == [0, *lens.cumsum(0).tolist()],
        torch.equal(out[:total], build_kv_indices_ref(req_to_token, rows, lens, starts)),
        bool((out[total:] == -1).all()),
    )


def decode_metadata_case(window: int, device: str = "cpu", block: int = 16) -> dict[str, bool]:
    """`derive_decode_metadata` against a per-row Python twin: 5 real rows of 7 (two padding rows on table
    row 0), two ids pending (-1), mamba state slots, and with `window` a sliding-window view over another table
    (page size 4). Every output is compared, and nothing past the batch is written."""
    from pdpair.kernels.attention import derive_decode_metadata

    gen = torch.Generator().manual_seed(window)
    n, bs, real, width, page = 9, 7, 5, 80, 4
    table = torch.randint(0, 10_000, (6, width), generator=gen, dtype=torch.int32)
    ids = [11, -1, 12, -1, 13, 0, 0]
    positions = [36, 0, 69, 4, 79, 0, 0]  # a first decode token, a full row, a multi-block row
    rows = [4, 1, 2, 5, 3, 0, 0]
    token_source = torch.randint(100, 200, (6,), generator=gen)
    state_rows = torch.randint(1, 9, (6,), generator=gen)
    inputs = torch.zeros(3 * n + 1, dtype=torch.long)
    inputs[:bs], inputs[n : n + bs], inputs[2 * n : 2 * n + bs], inputs[3 * n] = (
        torch.tensor(ids), torch.tensor(positions), torch.tensor(rows), real)
    # the twin, row by row
    seq = [p + 1 if i < real else 1 for i, p in enumerate(positions)]
    starts = [(max(s - window, 0) // page) * page if window else 0 for s in seq]
    lens = [s - st for s, st in zip(seq, starts, strict=True)]
    want = dict(
        ids=[int(token_source[r]) if t < 0 else t for t, r in zip(ids, rows, strict=True)],
        seq_lens=seq,
        out_cache_loc=[int(table[r, p]) if i < real else -1 for i, (r, p) in enumerate(zip(rows, positions, strict=True))],
        kv_indptr=list(itertools.accumulate(lens, initial=0)),
        kv_indices=torch.cat([table[r, st : st + ln] for r, st, ln in zip(rows, starts, lens, strict=True)]).tolist(),
        state_slots=[int(state_rows[r]) if i < real else 0 for i, r in enumerate(rows)],
        kv_starts=starts, kv_lens=lens)
    total = want["kv_indptr"][-1]
    out = dict(seq_lens=torch.full((n,), -7, dtype=torch.int32), out_cache_loc=torch.full((n,), -7, dtype=torch.long),
               kv_indptr=torch.full((n + 1,), -7, dtype=torch.int32),
               kv_indices=torch.full((total + 5,), -7, dtype=torch.int32),
               state_slots=torch.full((n,), -7, dtype=torch.long),
               kv_starts=torch.full((n,), -7, dtype=torch.int32), kv_lens=torch.full((n,), -7, dtype=torch.int32))
    out = {k: v.to(device) for k, v in out.items()}
    rest = inputs[bs:].tolist()  # positions, rows, the count: read, never written
    inputs, table, token_source, state_rows = (t.to(device) for t in (inputs, table, token_source, state_rows))
    if window:
        derive_decode_metadata(inputs, bs, table, out["out_cache_loc"], out["kv_indptr"], out["kv_indices"],
                               window=window, page_size=page, kv_starts=out["kv_starts"], kv_lens=out["kv_lens"],
                               block=block)
    else:
        derive_decode_metadata(inputs, bs, table, out["out_cache_loc"], out["kv_indptr"], out["kv_indices"],
                               seq_lens=out["seq_lens"], token_source=token_source, state_rows=state_rows,
                               state_slots=out["state_slots"], block=block)
    got = {k: v.cpu().tolist() for k, v in out.items()}
    got["ids"] = inputs[:bs].cpu().tolist()
    written = ["out_cache_loc", "kv_indptr", "kv_indices"] + (["kv_starts", "kv_lens"] if window else
                                                             ["seq_lens", "state_slots", "ids"])
    ok = {k: got[k][: len(want[k])] == want[k] for k in written}
    ok["inputs past the ids"] = inputs[bs:].cpu().tolist() == rest
    untouched = {k: got[k][len(want[k]) :] for k in written if k != "ids"}
    untouched.update({k: got[k] for k in out if k not in written})
    ok["nothing else written"] = all(set(v) <= {-7} for v in untouched.values())
    return ok


def store_kv_case(dtype, page_size: int, device: str = "cpu") -> bool:
    """The kernel's pool equals the twin's after storing a batch with two skipped (slot -1) rows."""
    from pdpair.kernels.attention import store_kv, store_kv_ref

    gen = torch.Generator().manual_seed(page_size)
    kv_heads, head_dim, t = 3, 64, 11
    pool = torch.randn(12, 2, 2, page_size, kv_heads, head_dim, generator=gen).to(device=device, dtype=dtype)
    ref_pool = pool.clone()
    kvh = torch.randn(t, 2 * kv_heads + 4, head_dim, generator=gen).to(device=device, dtype=dtype)
    k, v = kvh[:, 4 : 4 + kv_heads], kvh[:, 4 + kv_heads :]  # strided views, as the model passes them
    slots = torch.randperm(12 * page_size, generator=gen)[:t].to(device)
    slots[3] = slots[7] = -1
    store_kv(k, v, pool[:, 1, 0], pool[:, 1, 1], slots)
    store_kv_ref(k, v, ref_pool[:, 1, 0], ref_pool[:, 1, 1], slots)
    return torch.equal(pool, ref_pool)


def engine_backends_case(tmpdir: str) -> dict[str, list[list[int]]]:
    """Greedy tokens of a tiny seeded Llama through the engine with each attention backend (CPU, fp32).

    Page size 4 and 8-token chunks: prompts prefill over cached prefixes and straddle page boundaries.
    """
    from pathlib import Path

    from pdpair.engine import Engine, SamplingParams
    from pdpair.engine.loader import load_model

    from tests.kernels._attention_engine_fixtures import TINY_SHAPE, make_seeded_model_dir

    root = make_seeded_model_dir(Path(tmpdir), seed=3, shape=TINY_SHAPE, dtype=torch.float32)
    lm = load_model(str(root), device="cpu", dtype="float32")
    gen = torch.Generator().manual_seed(4)
    prompts = [torch.randint(3, 256, (n,), generator=gen).tolist() for n in (1, 4, 13, 30)]
    outs = {}
    for backend in ("torch", "triton"):
        eng = Engine.from_loaded(lm, device="cpu", page_size=4, max_pages=64, chunk_size=8,
                                 attention_backend=backend, max_running_requests=8)
        res = eng.generate(prompts, SamplingParams(max_new_tokens=6, temperature=0.0))
        eng.pools.check_integrity()
        outs[backend] = [o.token_ids for o in res]
    return outs


def graph_padding_case(tmpdir: str) -> dict[str, float | bool]:
    """The CUDA-graph runner's padded static batch, run eagerly (CPU, interpreted kernels, tiny model):
    the real rows' logits match the unpadded batch and the padding rows write no K/V."""
    from pdpair.engine.cuda_graph import DecodeCudaGraphs

    from tests.kernels._attention_engine_fixtures import (
        decode_batch,
        eager_logits,
        fill_kv_random,
        tiny_triton_engine,
    )

    eng = tiny_triton_engine(tmpdir, seed=5)
    fill_kv_random(eng)
    batch, release = decode_batch(eng, [1, 9, 17], seed=2)
    ref = eager_logits(eng, batch)
    pool = eng.runner.backend.kv_pool.buffer.clone()
    graphs = DecodeCudaGraphs(eng.runner.model, eng.runner.backend, eng.req_to_token.table, 8,
                              eng.req_to_token.max_context, buckets=(4, 8))
    padded = graphs.padded_batch(batch)
    out = eager_logits(eng, padded)
    n = int(batch.kv_indptr[-1])
    after = eng.runner.backend.kv_pool.buffer.clone()
    page_size = eng.config.page_size
    for slot in batch.out_cache_loc.tolist():  # the real rows rewrite their own slots (GEMM rounding may differ)
        pool[slot // page_size, :, :, slot % page_size] = 0
        after[slot // page_size, :, :, slot % page_size] = 0
    release()
    return {
        "rows": padded.batch_size,
        "rel_err": rel_err(out[:3], ref),
        "metadata": torch.equal(padded.kv_indptr[:4], batch.kv_indptr)
        and torch.equal(padded.kv_indices[:n], batch.kv_indices)
        and padded.seq_lens[3:].tolist() == [1] and padded.out_cache_loc[3:].tolist() == [-1],
        "pool_untouched": torch.equal(after, pool),
    }


def window_indices_case(window: int = 6, device: str = "cpu") -> float:
    """Sliding-window decode two ways: over every slot with `window`, and over kv_indices built from the
    window's start offset (what a window-sized cache keeps). Returns the relative difference."""
    from pdpair.kernels.attention import build_kv_indices, build_kv_indptr, decode_attention

    gen = torch.Generator().manual_seed(window)
    lengths = [1, 5, 23, 40]
    batch = paged_batch(lengths, 4, 2, 32, torch.float32, device=device, gen=gen)
    width = max(lengths)
    table = torch.zeros(len(lengths), width, dtype=torch.int32)
    for i, s in enumerate(batch.row_slots):
        table[i, : s.numel()] = s
    table = table.to(device)
    rows = torch.arange(len(lengths), dtype=torch.int32, device=device)
    lens = torch.tensor(lengths, dtype=torch.int32, device=device)
    q = torch.randn(len(lengths), 8, 32, generator=gen).to(device)
    full_ptr = build_kv_indptr(lens)
    full = build_kv_indices(table, rows, lens, full_ptr, torch.empty(sum(lengths), dtype=torch.int32, device=device))
    starts = torch.clamp(lens - window, min=0)
    win_ptr = build_kv_indptr(lens - starts)
    win = build_kv_indices(table, rows, lens - starts, win_ptr,
                           torch.empty(int(win_ptr[-1]), dtype=torch.int32, device=device), starts)
    a = decode_attention(q, batch.k_cache, batch.v_cache, full_ptr, full, window=window, block_n=16)
    b = decode_attention(q, batch.k_cache, batch.v_cache, win_ptr, win, block_n=16)
    return rel_err(b, a)


def swa_engine_case(tmpdir: str, family: str, window: int = 7) -> dict:
    """A sliding-window model (tiny, fp32, page size 4) through the triton backend on CPU: greedy tokens
    against the torch backend, and the CUDA-graph runner's padded static batch (window-clipped kv_indices
    rebuilt by the kv-index kernel) run eagerly against the unpadded batch."""
    from pathlib import Path

    from pdpair.engine import Engine, SamplingParams
    from pdpair.engine.cuda_graph import DecodeCudaGraphs

    from tests.kernels._attention_engine_fixtures import decode_batch, eager_logits, fill_kv_random
    from tests.swa_models import save_tiny_swa

    save_tiny_swa(family, window, Path(tmpdir))
    gen = torch.Generator().manual_seed(6)
    prompts = [torch.randint(3, 500, (n,), generator=gen).tolist() for n in (3, window, 2 * window + 3)]
    out: dict = {}
    engines = {}
    for backend in ("torch", "triton"):
        eng = engines[backend] = Engine.from_model(tmpdir, device="cpu", dtype="float32", page_size=4, max_pages=64,
                                                   chunk_size=6, attention_backend=backend, max_running_requests=8)
        res = eng.generate(prompts, SamplingParams(max_new_tokens=window + 2, temperature=0.0, ignore_eos=True))
        eng.pools.check_integrity()
        out[backend] = [o.token_ids for o in res]
    eng = engines["triton"]
    fill_kv_random(eng)
    lengths = [1, window, window + 5, 3 * window]
    batch, release = decode_batch(eng, lengths, seed=3)
    ref = eager_logits(eng, batch)
    r2t = eng.req_to_token
    graphs = DecodeCudaGraphs(eng.runner.model, eng.runner.backend, r2t.table, 8, r2t.max_context, buckets=(8,),
                              windows={k: (r2t.tables[k], w, 4) for k, w in eng.runner.windows.items()})
    padded = graphs.padded_batch(batch)
    got = eager_logits(eng, padded)
    w, pw = batch.windows["swa"], padded.windows["swa"]
    n = int(w.kv_indptr[-1])
    out["graph_rel_err"] = rel_err(got[: len(lengths)], ref)
    out["graph_metadata"] = (torch.equal(pw.kv_indptr[: len(lengths) + 1], w.kv_indptr)
                             and torch.equal(pw.kv_indices[:n], w.kv_indices)
                             and pw.out_cache_loc[len(lengths):].eq(-1).all().item())
    out["window_keys"] = (w.kv_indptr[1:] - w.kv_indptr[:-1]).tolist()
    release()
    return out
