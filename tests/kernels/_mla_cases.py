"""MLA / DSA kernel cases: random paged latent and indexer-key pages, the kernel, its torch twin and a float64
dense reference written here (masked softmax / score matrices over each row's own keys, no paging).

Shared by the interpreter tests (CPU, TRITON_INTERPRET=1 worker) and the GPU tests at V3.2 sizes. Outputs
start as NaN, so an element the kernel leaves unwritten fails every bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tests.kernels._attention_fixtures import cat_slots, indptr, paged_batch, rel_err


def _launch(**kw) -> dict:
    """Launch overrides for the interpreter's small shapes; None keeps the launcher's default."""
    return {k: v for k, v in kw.items() if v is not None}


@dataclass
class MlaBatch:
    latent: torch.Tensor  # one layer's [P, page_size, Dl + Dr] view of a shuffled item-major pool
    index_k: torch.Tensor  # one layer's [P, page_size, Di] view
    row_slots: list[torch.Tensor]
    kv_indptr: torch.Tensor
    kv_indices: torch.Tensor

    def keys64(self, b: int, what: str) -> torch.Tensor:
        """Row b's latent (or indexer) rows in position order, float64; a -1 slot gives a NaN row."""
        cache = self.latent if what == "latent" else self.index_k
        slots = self.row_slots[b].long().to(cache.device)
        ps = cache.shape[1]
        keys = cache[slots.clamp_min(0) // ps, slots.clamp_min(0) % ps].double()
        keys[slots < 0] = float("nan")
        return keys


def mla_batch(lengths: list[int], page_size: int, dl: int, dr: int, di: int, dtype, device: str,
              gen: torch.Generator, hole: tuple[int, int] | None = None) -> MlaBatch:
    """Rows of `lengths` tokens in shuffled pages; `hole=(row, pos)` turns that slot into -1."""
    width = max(dl + dr, di)
    pb = paged_batch(lengths, page_size, 1, width, dtype, device=device, gen=gen, layers=2)
    rows = [s.clone() for s in pb.row_slots]
    if hole is not None:
        rows[hole[0]][hole[1]] = -1
    return MlaBatch(pb.k_cache[:, :, 0, : dl + dr], pb.v_cache[:, :, 0, :di], rows,
                    indptr([len(r) for r in rows], device), cat_slots(rows, device))


def _mla64(qn: torch.Tensor, qr: torch.Tensor, keys: torch.Tensor, live: torch.Tensor, scale: float):
    """[H, Dl], [H, Dr] over keys [n, Dl + Dr] where `live` -> [H, Dl] float64 (zeros without keys)."""
    dl = qn.shape[-1]
    if not bool(live.any()):
        return torch.zeros_like(qn, dtype=torch.float64)
    k = keys[live]
    s = (qn.double() @ k[:, :dl].T + qr.double() @ k[:, dl:].T) * scale
    return torch.softmax(s, -1) @ k[:, :dl]


def decode_case(dtype, page_size: int, lengths: list[int], heads: int = 20, dl: int = 32, dr: int = 16,
                splits=(None,), block_n: int | None = 16, seed: int = 0, device: str = "cpu",
                block_h: int | None = None) -> dict:
    """mla_decode vs twin vs float64; rows: `lengths`, one with a -1 slot, an empty one, one on slot 0."""
    from pdpair.kernels.mla import mla_decode, mla_decode_ref

    gen = torch.Generator().manual_seed(seed)
    lens = list(lengths) + [0, 1]  # CUDA-graph padding rows: no keys, and one key on slot 0
    mb = mla_batch(lens, page_size, dl, dr, 16, dtype, device, gen, hole=(0, lengths[0] // 2))
    mb.row_slots[-1][0] = 0
    mb.kv_indices[-1] = 0
    q_nope = torch.randn(len(lens), heads, dl, generator=gen).to(device=device, dtype=dtype)
    q_rope = torch.randn(len(lens), heads, dr, generator=gen).to(device=device, dtype=dtype)
    scale = (dl + dr) ** -0.5 * 2.0
    dense = torch.stack([_mla64(q_nope[b], q_rope[b], mb.keys64(b, "latent"), mb.row_slots[b].to(device) >= 0,
                                scale) for b in range(len(lens))])
    twin = mla_decode_ref(q_nope, q_rope, mb.latent, mb.kv_indptr, mb.kv_indices, scale)
    out = {"twin_vs_dense": rel_err(twin, dense), "kernel_vs_dense": [], "kernel_vs_twin": []}
    for ns in splits:
        o = torch.full_like(q_nope, float("nan"))
        mla_decode(q_nope, q_rope, mb.latent, mb.kv_indptr, mb.kv_indices, scale, ns, o=o,
                   **_launch(block_n=block_n, block_h=block_h))
        out["kernel_vs_dense"].append(rel_err(o, dense))
        out["kernel_vs_twin"].append(rel_err(o, twin))
        out.setdefault("empty_row_zero", []).append(bool((o[-2] == 0).all()))
    return out


def _queries(lengths: list[int], gen: torch.Generator, per_row: int = 3) -> tuple[list[int], list[int]]:
    """(row, visible) of prefill-like queries at random positions plus each row's decode query (vis = len)."""
    rows, vis = [], []
    for b, n in enumerate(lengths):
        if n == 0:
            continue
        for p in torch.randint(0, n, (per_row,), generator=gen).tolist() + [n - 1]:
            rows.append(b)
            vis.append(p + 1)
    return rows, vis


def _selection(vis: list[int], topk: int, gen: torch.Generator) -> torch.Tensor:
    """int32 [T, topk]: a random min(vis, topk)-subset of each query's visible positions, -1 interleaved."""
    out = torch.full((len(vis), topk), -1, dtype=torch.int32)
    for t, v in enumerate(vis):
        k = min(v, topk)
        chosen = torch.randperm(v, generator=gen)[:k].to(torch.int32)
        where = torch.randperm(topk, generator=gen)[:k]
        out[t, where] = chosen
    return out


def sparse_case(dtype, page_size: int, lengths: list[int], topk: int, heads: int = 20, dl: int = 32,
                dr: int = 16, splits=(None,), block_n: int | None = 16, seed: int = 0, device: str = "cpu",
                block_h: int | None = None) -> dict:
    """sparse_mla vs twin vs float64 over random selections (some rows shorter than topk, -1 interleaved,
    one query with nothing selected), and == mla_decode when a decode query selects its whole row."""
    from pdpair.kernels.mla import mla_decode, sparse_mla, sparse_mla_ref

    gen = torch.Generator().manual_seed(seed)
    mb = mla_batch(lengths, page_size, dl, dr, 16, dtype, device, gen)
    rows, vis = _queries(lengths, gen)
    rows.append(0)
    vis.append(0)  # a padding query: nothing selected
    sel = _selection(vis, topk, gen)
    t = len(rows)
    q_nope = torch.randn(t, heads, dl, generator=gen).to(device=device, dtype=dtype)
    q_rope = torch.randn(t, heads, dr, generator=gen).to(device=device, dtype=dtype)
    q_row = torch.tensor(rows, dtype=torch.int32, device=device)
    scale = (dl + dr) ** -0.5 * 2.0
    dense = []
    for i in range(t):
        keys = mb.keys64(rows[i], "latent")
        live = torch.zeros(keys.shape[0], dtype=torch.bool)
        picked = sel[i][sel[i] >= 0].long()
        live[picked] = True
        dense.append(_mla64(q_nope[i], q_rope[i], keys, live.to(device), scale))
    dense = torch.stack(dense)
    sel = sel.to(device)
    twin = sparse_mla_ref(q_nope, q_rope, mb.latent, mb.kv_indptr, mb.kv_indices, q_row, sel, scale)
    out = {"twin_vs_dense": rel_err(twin, dense), "kernel_vs_dense": [], "kernel_vs_twin": []}
    for ns in splits:
        o = torch.full_like(q_nope, float("nan"))
        sparse_mla(q_nope, q_rope, mb.latent, mb.kv_indptr, mb.kv_indices, q_row, sel, scale, o=o,
                   num_splits=ns, **_launch(block_n=block_n, block_h=block_h))
        out["kernel_vs_dense"].append(rel_err(o, dense))
        out["kernel_vs_twin"].append(rel_err(o, twin))
        out.setdefault("nothing_selected_zero", []).append(bool((o[-1] == 0).all()))
    # decode queries of rows no longer than topk select their whole row: sparse == dense decode kernel
    full = [i for i in range(t - 1) if vis[i] == lengths[rows[i]] <= topk]
    if full:
        idx = torch.tensor(full, device=device)
        all_pos = torch.full((len(full), topk), -1, dtype=torch.int32, device=device)
        for j, i in enumerate(full):
            all_pos[j, : vis[i]] = torch.arange(vis[i], dtype=torch.int32)
        sub_rows = torch.tensor([rows[i] for i in full], dtype=torch.int32, device=device)
        sp = sparse_mla(q_nope[idx], q_rope[idx], mb.latent, mb.kv_indptr, mb.kv_indices, sub_rows, all_pos, scale,
                        **_launch(block_n=block_n, block_h=block_h))
        sub_indptr = indptr([lengths[rows[i]] for i in full], device)
        sub_indices = cat_slots([mb.row_slots[rows[i]] for i in full], device)
        de = mla_decode(q_nope[idx], q_rope[idx], mb.latent, sub_indptr, sub_indices, scale,
                        **_launch(block_n=block_n, block_h=block_h))
        out["sparse_vs_decode"] = rel_err(sp, de)
    return out


def topk_ok(res: torch.Tensor, s64: torch.Tensor, topk: int, tol: float) -> bool:
    """`res` (int32 [topk], -1 padded) is a valid top-`topk` of the float64 scores `s64` (-inf: not selectable)
    up to `tol` x max |score|."""
    if res.numel() != topk:
        return False
    picked = res[res >= 0].long().cpu()
    s = s64.cpu()
    live = torch.isfinite(s)
    k = min(int(live.sum()), topk)
    if picked.numel() != k or picked.unique().numel() != k or (k and int(picked.max()) >= s.numel()):
        return False
    if not bool(live[picked].all()):
        return False
    rest = live.clone()
    rest[picked] = False
    if k == 0 or not bool(rest.any()):
        return True
    slack = tol * float(s[live].abs().max())
    return float(s[picked].min()) >= float(s[rest].max()) - slack


def indexer_case(dtype, page_size: int, lengths: list[int], topk: int, heads: int = 16, di: int = 32,
                 block_n: int | None = 16, chunk: int | None = 32, seed: int = 0, device: str = "cpu", tol: float = 1e-5) -> dict:
    """indexer scores (kernel vs twin) and top-k sets (kernel and twin vs float64 scores); a -1 slot, rows
    shorter than topk, a query seeing nothing."""
    from pdpair.kernels.mla import indexer_scores, indexer_scores_ref, indexer_topk, indexer_topk_ref

    gen = torch.Generator().manual_seed(seed)
    mb = mla_batch(lengths, page_size, 16, 16, di, dtype, device, gen, hole=(0, 1))
    rows, vis = _queries(lengths, gen)
    rows += [1, len(lengths) - 1]
    vis += [lengths[1] + 4, 0]  # a query told it sees past its row's end (only the row's keys count); one sees nothing
    t = len(rows)
    q = torch.randn(t, heads, di, generator=gen).to(device=device, dtype=dtype)
    w = (torch.randn(t, heads, generator=gen) * (di**-0.5 * heads**-0.5)).to(device)
    q_row = torch.tensor(rows, dtype=torch.int32, device=device)
    q_vis = torch.tensor(vis, dtype=torch.int32, device=device)
    width = max(vis)
    args = (q, w, mb.index_k, mb.kv_indptr, mb.kv_indices, q_row, q_vis)
    got = indexer_scores(*args, width, **_launch(block_n=block_n, chunk=chunk))
    ref = indexer_scores_ref(*args, width)
    finite = torch.isfinite(ref)
    unfilled = indexer_scores(*args, width, fill=False, **_launch(block_n=block_n, chunk=chunk))
    seen = torch.arange(width, device=device)[None, :] < q_vis[:, None]
    out = {"inf_pattern_equal": torch.equal(finite, torch.isfinite(got)),
           "scores_vs_twin": rel_err(got[finite], ref[finite]),
           "unfilled_equal_where_visible": torch.equal(unfilled[seen], got[seen])}
    sels = {"kernel_topk_ok": indexer_topk(*args, topk, **_launch(block_n=block_n, chunk=chunk)),
            "triton_topk_ok": indexer_topk(*args, topk, triton_topk=True, **_launch(block_n=block_n, chunk=chunk)),
            "twin_topk_ok": indexer_topk_ref(*args, topk)}
    for name, sel in sels.items():
        ok = []
        for i in range(t):
            keys = mb.keys64(rows[i], "index")[: vis[i]]
            s64 = (torch.relu(q[i].double() @ keys.T) * w[i].double()[:, None]).sum(0)
            s64 = torch.where(torch.isnan(s64), float("-inf"), s64)  # the -1 slot: never selectable
            ok.append(topk_ok(sel[i], s64, topk, tol))
        out[name] = all(ok) and bool((sel[-1] == -1).all())  # the last query sees nothing
    return out


def graph_case(device: str = "cuda", bsz: int = 8, cap: int = 4096, topk: int = 2048) -> dict:
    """A decode step's kernels (indexer top-k through torch.topk and through the radix select, sparse MLA, dense
    MLA decode) captured in one CUDA graph at V3.2 sizes, replayed on new metadata and new queries: equal to
    the eager launches on that input."""
    from pdpair.kernels.attention import decode_workspace
    from pdpair.kernels.mla import indexer_topk, mla_decode, sparse_mla

    heads, dl, dr, hi, di = 128, 512, 64, 64, 128
    gen = torch.Generator().manual_seed(7)
    dt = torch.bfloat16
    mb = mla_batch([cap] * bsz, 16, dl, dr, di, dt, device, gen)
    static = {
        "q_nope": torch.randn(bsz, heads, dl, device=device, dtype=dt),
        "q_rope": torch.randn(bsz, heads, dr, device=device, dtype=dt),
        "q_idx": torch.randn(bsz, hi, di, device=device, dtype=dt),
        "w": torch.randn(bsz, hi, device=device) * (di**-0.5 * hi**-0.5),
        "indptr": mb.kv_indptr.clone(),
        "indices": mb.kv_indices.clone(),
        "visible": torch.full((bsz,), cap, dtype=torch.int32, device=device),
    }
    rows = torch.arange(bsz, dtype=torch.int32, device=device)
    splits, scale = 4, (dl + dr) ** -0.5
    ws_sparse = decode_workspace(bsz, heads, dl, splits, device)
    ws_dense = decode_workspace(bsz, heads, dl, splits, device)

    def step(s):
        idx_args = (s["q_idx"], s["w"], mb.index_k, s["indptr"], s["indices"], rows, s["visible"], topk)
        sel = indexer_topk(*idx_args, max_visible=cap)
        sel_radix = indexer_topk(*idx_args, max_visible=cap, triton_topk=True)
        o_sparse = sparse_mla(s["q_nope"], s["q_rope"], mb.latent, s["indptr"], s["indices"], rows, sel, scale,
                              num_splits=splits, workspace=ws_sparse)
        o_dense = mla_decode(s["q_nope"], s["q_rope"], mb.latent, s["indptr"], s["indices"], scale, splits,
                             workspace=ws_dense)
        return sel, o_sparse, o_dense, sel_radix

    step(static)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = step(static)
    # a new step: shorter rows (one empty, one below top-k), other slots, new queries
    lens = [cap, 0, 1000, cap - 5, 3000, 2048, 17, cap]
    new_slots = [mb.row_slots[(b + 3) % bsz][:n] for b, n in enumerate(lens)]
    static["indptr"].copy_(indptr(lens, device))
    static["indices"].zero_()
    flat = cat_slots(new_slots, device)
    static["indices"][: flat.numel()].copy_(flat)
    static["visible"].copy_(torch.tensor(lens, dtype=torch.int32))
    for k in ("q_nope", "q_rope", "q_idx", "w"):
        static[k].copy_(torch.randn(static[k].shape, device=device).to(static[k].dtype))
    graph.replay()
    torch.cuda.synchronize()
    replayed = [x.clone() for x in outs]
    eager = step(static)
    return {
        "topk_equal": torch.equal(replayed[0].sort(1).values, eager[0].sort(1).values),
        "sparse_equal": torch.equal(replayed[1], eager[1]),
        "dense_equal": torch.equal(replayed[2], eager[2]),
        "radix_topk_equal": torch.equal(replayed[3], eager[3]),
        "radix_same_set": torch.equal(replayed[3].sort(1).values, eager[0].sort(1).values),
        "finite": all(bool(torch.isfinite(x).all()) for x in replayed[1:3]),
    }


def row_topk_case(rows: int, width: int, k: int, device: str = "cpu", block: int | None = 64,
                  seed: int = 0) -> dict:
    """The radix-select top-k against float64 order on rows with heavy ties, -inf tails, -0.0 and +0.0,
    rows shorter than k and a per-row length; the torch twin on the same rows."""
    from pdpair.kernels.mla.topk import row_topk, row_topk_ref

    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(rows, width, generator=gen)
    scores[0] = torch.round(scores[0] * 2) / 2  # few distinct values: the k-th is a tie
    scores[1, width // 3 :] = float("-inf")  # fewer finite than k
    scores[2, ::2] = -0.0
    scores[2, 1::2] = 0.0
    scores[3] = scores[3].abs().neg() * 1e-30  # tiny negatives (denormal range)
    scores = scores.to(device)
    lengths = torch.randint(0, width + 5, (rows,), generator=gen, dtype=torch.int32).to(device)
    lengths[4 % rows] = k - 1
    out = {"ok": [], "twin_ok": []}
    for lens in (None, lengths):
        got = row_topk(scores, k, lens, **_launch(block=block))
        ref = row_topk_ref(scores, k, lens)
        for i in range(rows):
            n = width if lens is None else max(0, min(int(lens[i]), width))
            s = scores[i, :n].double()
            out["ok"].append(topk_ok(got[i], s, k, 0.0))
            out["twin_ok"].append(topk_ok(ref[i], s, k, 0.0))
    return out
