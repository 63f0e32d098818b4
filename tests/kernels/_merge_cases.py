"""Cases for decode attention's one-launch split merge (`fused_merge`, kernels/attention/decode.py).

Shared by the interpreter tests (CPU) and the GPU tests. Each returns plain numbers and flags; the tests
hold the bounds. Outputs and workspaces start as NaN, so an unwritten output or an unwritten partial (a split
that skipped its store, a merge that ran early or never) fails any bound.
"""

from __future__ import annotations

import torch

from tests.kernels._attention_fixtures import cat_slots, indptr, paged_batch, rel_err

NAN = float("nan")


def _twin(q, batch, kv_indptr, kv_indices, window: int, ref64: bool) -> torch.Tensor:
    from pdpair.kernels.attention import decode_attention_ref

    if ref64:
        return decode_attention_ref(q.double(), batch.k_cache.double(), batch.v_cache.double(), kv_indptr,
                                    kv_indices, window=window)
    return decode_attention_ref(q, batch.k_cache, batch.v_cache, kv_indptr, kv_indices, window=window)


def merge_case(dtype, group: int, window: int, lengths: list[int], splits=(2, 3, 7), kv_heads: int = 2,
               head_dim: int = 32, page_size: int = 4, block_n: int = 16, seed: int = 0, device: str = "cpu",
               ref64: bool = False) -> dict[str, list]:
    """Per split count: one launch and two launches each against the twin, one launch against two, whether a
    second call on the same workspace repeats the first bit for bit, and whether the counters are back at
    zero after each call."""
    from pdpair.kernels.attention import decode_attention, decode_workspace

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    # large GPU batches: draw the cache on the device (the global generator, seeded above)
    batch = paged_batch(lengths, page_size, kv_heads, head_dim, dtype, device=device,
                        gen=gen if device == "cpu" else None, layers=2)
    rows, heads = len(lengths), kv_heads * group
    q = torch.randn(rows, heads, head_dim, generator=gen).to(device=device, dtype=dtype)
    kv_indptr, kv_indices = indptr(lengths, device), cat_slots(batch.row_slots, device)
    ref = _twin(q, batch, kv_indptr, kv_indices, window, ref64)
    out: dict[str, list] = {"one": [], "two": [], "one_vs_two": [], "repeat": [], "counters_zero": []}
    for num_splits in splits:
        ws = decode_workspace(rows, heads, head_dim, num_splits, device, kv_heads)
        ws.mid_o.fill_(NAN)
        ws.mid_lse.fill_(NAN)
        ones = []
        for _ in range(2):
            o = torch.full_like(q, NAN)
            decode_attention(q, batch.k_cache, batch.v_cache, kv_indptr, kv_indices, o=o, window=window,
                             num_splits=num_splits, workspace=ws, block_n=block_n, fused_merge=True)
            ones.append(o)
            out["counters_zero"].append(bool(ws.counters.eq(0).all()))
        two = torch.full_like(q, NAN)
        decode_attention(q, batch.k_cache, batch.v_cache, kv_indptr, kv_indices, o=two, window=window,
                         num_splits=num_splits, block_n=block_n, fused_merge=False)
        out["one"].append(rel_err(ones[0], ref))
        out["two"].append(rel_err(two, ref))
        out["one_vs_two"].append(rel_err(ones[0], two))
        out["repeat"].append(torch.equal(ones[0], ones[1]))
    return out


def graph_replay_case(heads: int, kv_heads: int, head_dim: int, bsz: int, ctx: int = 2048, replays: int = 3,
                      page_size: int = 16, seed: int = 0) -> dict[str, list]:
    """One-launch decode captured in a CUDA graph on static buffers, replayed `replays` times with new
    queries and new row lengths (up to `ctx`, some short enough to leave splits empty): the replay's output
    against an eager call and the float64 twin, and the counters after each replay."""
    from pdpair.kernels.attention import decode_attention, decode_workspace, default_num_splits

    torch.manual_seed(seed)
    dtype, dev = torch.bfloat16, "cuda"
    batch = paged_batch([ctx] * bsz, page_size, kv_heads, head_dim, dtype, device=dev, layers=2)
    q = torch.randn(bsz, heads, head_dim, device=dev).to(dtype)
    kv_indptr = indptr([ctx] * bsz, dev)
    kv_indices = cat_slots(batch.row_slots, dev)  # capacity: every row at full length
    num_splits = default_num_splits(bsz, kv_heads)
    ws = decode_workspace(bsz, heads, head_dim, num_splits, dev, kv_heads)
    o = torch.empty_like(q)

    def step():
        decode_attention(q, batch.k_cache, batch.v_cache, kv_indptr, kv_indices, o=o, num_splits=num_splits,
                         workspace=ws, fused_merge=True)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # compile outside the capture
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    out: dict[str, list] = {"vs_eager": [], "vs_twin": [], "counters_zero": []}
    for r in range(replays):
        lengths = torch.randint(1, ctx + 1, (bsz,)).tolist()
        lengths[0] = 1 + r  # a row that leaves most splits empty
        q.copy_(torch.randn(bsz, heads, head_dim, device=dev).to(dtype))
        kv_indptr.copy_(indptr(lengths, dev))
        kv_indices[: sum(lengths)].copy_(cat_slots([s[:n] for s, n in zip(batch.row_slots, lengths, strict=True)],
                                                   dev))
        o.fill_(NAN)
        graph.replay()
        torch.cuda.synchronize()
        out["counters_zero"].append(bool(ws.counters.eq(0).all()))
        eager = decode_attention(q, batch.k_cache, batch.v_cache, kv_indptr, kv_indices, num_splits=num_splits,
                                 fused_merge=True)
        out["vs_eager"].append(rel_err(o, eager))
        out["vs_twin"].append(rel_err(o, _twin(q, batch, kv_indptr, kv_indices, 0, ref64=True)))
    return out


def engine_merge_case(tmpdir: str) -> dict:
    """The triton backend with several decode splits (a tiny seeded model on CPU, interpreted kernels): eager
    logits with the one-launch merge against the two-launch merge, and the CUDA-graph body on the backend's
    static workspace (buckets 4, 8, 4 in turn: different split counts over one counter buffer) against
    eager, with the counters after each run."""
    import numpy as np
    from pdpair.engine.batch import ForwardContext
    from pdpair.engine.cuda_graph import DecodeCudaGraphs

    from tests.kernels._attention_engine_fixtures import (
        decode_batch,
        eager_logits,
        fill_kv_random,
        tiny_triton_engine,
    )

    eng = tiny_triton_engine(tmpdir, seed=7)
    backend = eng.runner.backend
    backend._num_sms = 16  # as if on a GPU: several splits per (row, kv head) at these batch sizes
    fill_kv_random(eng)
    batch, release = decode_batch(eng, [1, 9, 17], seed=4)
    backend.fused_merge = False
    two = eager_logits(eng, batch)
    backend.fused_merge = True
    one = eager_logits(eng, batch)
    graphs = DecodeCudaGraphs(eng.runner.model, backend, eng.req_to_token.table, 8, eng.req_to_token.max_context,
                              buckets=(4, 8))
    backend.init_graph_state(8, eng.req_to_token.max_context)
    host = np.empty(graphs.inputs.shape[0], dtype=np.int64)
    graphs.pack_inputs(host, batch.input_ids.tolist(), batch.positions.numpy(), batch.req_pool_indices.numpy())
    body_errs, counters_zero, splits = [], [], []
    for bucket in (4, 8, 4):
        graphs.inputs.copy_(torch.from_numpy(host))
        ctx = ForwardContext(backend, graphs._static_batch(bucket), graphs.logits_rows[:bucket])
        backend.prepare_for_replay(ctx.batch, bucket)
        splits.append(backend._splits)
        with torch.inference_mode():
            body = graphs._body(bucket, ctx)[:3]
        body_errs.append(rel_err(body, two))
        counters_zero.append(bool(backend._graph_counters.eq(0).all()))
    release()
    return {"one_vs_two": rel_err(one, two), "body_errs": body_errs, "counters_zero": counters_zero,
            "splits": splits, "counters_shape": tuple(backend._graph_counters.shape)}


def sm90_ptx(heads: int, kv_heads: int, head_dim: int, num_splits: int, fused: bool, block_n: int = 64) -> str:
    """PTX of the split kernel compiled ahead of time for sm_90 (no GPU needed: Triton's bundled toolchain)."""
    import triton
    from pdpair.kernels.attention.decode import _decode_split_kernel

    from tests.kernels._ptx import sm90_ptx as compile_sm90

    group = heads // kv_heads
    pointers = {"q": "*bf16", "k_cache": "*bf16", "v_cache": "*bf16", "kv_indptr": "*i32", "kv_indices": "*i32",
                "mid_o": "*fp32", "mid_lse": "*fp32", "o": "*bf16", "counters": "*i32"}
    consts = dict(PAGE_SIZE=16, GROUP=group, BLOCK_H=max(16, triton.next_power_of_2(group)), BLOCK_N=block_n,
                  HEAD_DIM=head_dim, BLOCK_D=triton.next_power_of_2(head_dim), NUM_SPLITS=num_splits,
                  FUSED_MERGE=fused, BLOCK_S=triton.next_power_of_2(num_splits),
                  BLOCK_G=triton.next_power_of_2(group))
    return compile_sm90(_decode_split_kernel, pointers, consts, ("qk_scale",), num_warps=4, num_stages=2)
