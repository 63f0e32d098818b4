"""Mamba2 decode-step kernel cases (kernel in place on pool slots vs torch twin), shared by CPU and GPU tests."""

from __future__ import annotations

import numpy as np
import torch


def state_update_case(dtype: torch.dtype, batch: int, heads: int, head_dim: int, d_state: int, groups: int,
                      device: str = "cpu") -> bool:
    from pdpair.kernels.mamba import selective_state_update, selective_state_update_ref

    g = torch.Generator(device=device).manual_seed(batch * 31 + heads)
    items, layers = batch + 3, 2
    pool = torch.randn(items, layers, heads, head_dim, d_state, generator=g, device=device)  # fp32 SSM state
    state = pool[:, 1]  # one layer's strided view
    slots = torch.randperm(items - 1, generator=g, device=device)[:batch] + 1
    x = torch.randn(batch, heads, head_dim, generator=g, device=device).to(dtype)
    dt = torch.rand(batch, heads, generator=g, device=device) * 0.5
    A = -torch.rand(heads, generator=g, device=device) - 0.1
    B = torch.randn(batch, groups, d_state, generator=g, device=device).to(dtype)
    C = torch.randn(batch, groups, d_state, generator=g, device=device).to(dtype)
    D = torch.randn(heads, generator=g, device=device)
    y_ref, new_ref = selective_state_update_ref(state[slots], x, dt, A, B, C, D)
    before = pool.clone()
    y = selective_state_update(state, slots, x, dt, A, B, C, D)
    others = torch.ones(items, dtype=torch.bool, device=device)
    others[slots] = False
    ok = torch.allclose(y, y_ref, rtol=1e-4, atol=1e-4) and torch.allclose(state[slots], new_ref, rtol=1e-5, atol=1e-5)
    untouched = torch.equal(pool[others], before[others]) and torch.equal(pool[:, 0], before[:, 0])
    return bool(ok and untouched)


def conv_update_case(dtype: torch.dtype, batch: int, channels: int, kernel: int, bias: bool,
                     device: str = "cpu") -> bool:
    from pdpair.kernels.mamba import conv_update, conv_update_ref

    g = torch.Generator(device=device).manual_seed(batch * 7 + channels)
    items = batch + 2
    pool = torch.randn(items, 3, channels, kernel - 1, generator=g, device=device).to(dtype)
    state = pool[:, 2]
    slots = torch.randperm(items - 1, generator=g, device=device)[:batch] + 1
    x = torch.randn(batch, channels, generator=g, device=device).to(dtype)
    w = torch.randn(channels, kernel, generator=g, device=device).to(dtype)
    b = torch.randn(channels, generator=g, device=device).to(dtype) if bias else None
    out_ref, new_ref = conv_update_ref(x.float(), state[slots].float(), w.float(), None if b is None else b.float())
    before = pool.clone()
    out = conv_update(x, state, slots, w, b)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    others = torch.ones(items, dtype=torch.bool, device=device)
    others[slots] = False
    ok = torch.allclose(out.float(), out_ref, rtol=tol, atol=tol) and torch.equal(state[slots].float(), new_ref.to(dtype).float())
    return bool(ok and torch.equal(pool[others], before[others]) and torch.equal(pool[:, :2], before[:, :2]))


def scan_case(dtype: torch.dtype, lengths: list[int], heads: int, head_dim: int, d_state: int, groups: int,
              device: str = "cpu") -> bool:
    """Segments of a varlen batch, some continuing from their slot's state, some fresh (slot garbage ignored)."""
    from pdpair.kernels.mamba import mamba_scan, mamba_scan_ref

    g = torch.Generator(device=device).manual_seed(sum(lengths) + heads)
    nseg, tokens = len(lengths), sum(lengths)
    items = nseg + 2
    pool = torch.randn(items, 2, heads, head_dim, d_state, generator=g, device=device)
    slots = torch.randperm(items - 1, generator=g, device=device)[:nseg] + 1
    fresh = torch.tensor([i % 2 == 0 for i in range(nseg)], device=device)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
    x = torch.randn(tokens, heads, head_dim, generator=g, device=device).to(dtype)
    dt = torch.rand(tokens, heads, generator=g, device=device) * 0.3
    A = -torch.rand(heads, generator=g, device=device) - 0.1
    B = torch.randn(tokens, groups, d_state, generator=g, device=device).to(dtype)
    C = torch.randn(tokens, groups, d_state, generator=g, device=device).to(dtype)
    D = torch.randn(heads, generator=g, device=device)
    ref_pool = pool.clone()
    y_ref = mamba_scan_ref(x, dt, A, B, C, D, cu, slots, fresh, ref_pool[:, 1])
    y = mamba_scan(x, dt, A, B, C, D, cu, slots, fresh, pool[:, 1])
    scale = max(1.0, y_ref.abs().max().item())
    return bool(torch.allclose(y, y_ref, rtol=0, atol=2e-5 * scale)
                and torch.allclose(pool, ref_pool, rtol=0, atol=2e-5 * max(1.0, ref_pool.abs().max().item())))


def engine_kernels_case(model_dir: str) -> bool:
    """The mixer's Triton path (forced on, interpreted on CPU) generates what its torch path generates."""
    from pdpair.engine import Engine, SamplingParams
    from pdpair.engine.models import mamba2

    prompts = [[5, 6, 7], list(range(3, 20)), [9] * 11]
    sp = SamplingParams(max_new_tokens=4, temperature=0.0, ignore_eos=True)
    outs = []
    for forced in (False, True):
        mamba2.use_triton = (lambda x: True) if forced else (lambda x: False)
        eng = Engine.from_model(model_dir, device="cpu", dtype="float32", page_size=4, max_pages=32,
                                chunk_size=5, attention_backend="torch", max_running_requests=4)
        outs.append([o.token_ids for o in eng.generate(prompts, sp)])
    return outs[0] == outs[1]


def graph_padding_case(model_dir: str) -> dict[str, bool]:
    """Decode through the CUDA-graph runner's padded static batches, run eagerly (CPU, interpreted kernels):
    3 rows padded to 4, the padding row on request-table row 0 (a live request's row) writing the dummy slot 0.
    Tokens must equal plain eager decode; only slot 0 and the live slots change."""
    from types import SimpleNamespace

    from pdpair.engine import Engine, SamplingParams
    from pdpair.engine.cuda_graph import DecodeCudaGraphs
    from pdpair.engine.models import mamba2

    from tests.kernels._attention_engine_fixtures import eager_logits

    mamba2.use_triton = lambda x: True
    prompts = [[5, 6, 7], list(range(3, 12)), [9] * 6]
    sp = SamplingParams(max_new_tokens=4, temperature=0.0, ignore_eos=True)
    make = lambda: Engine.from_model(model_dir, device="cpu", dtype="float32", page_size=4,  # noqa: E731
                                     max_pages=32, attention_backend="triton", max_running_requests=8)
    ref = [o.token_ids for o in make().generate(prompts, sp)]
    eng = make()
    pool = eng.mamba_pool
    graphs = DecodeCudaGraphs(eng.runner.model, eng.runner.backend, eng.req_to_token.table, 8,
                              eng.req_to_token.max_context, buckets=(4, 8), state_rows=pool.row_slots)
    padded_rows = []

    def replay_staged(ids, positions, rows):  # what a graph replay runs, eagerly: inputs in, `_derive`, model
        b, padded = len(ids), graphs.bucket(len(ids))
        host = np.zeros(graphs.inputs.shape[0], dtype=np.int64)
        graphs.pack_inputs(host, ids, positions, rows)
        graphs.inputs.copy_(torch.from_numpy(host))
        graphs._derive(padded)
        batch = graphs._static_batch(padded)
        padded_rows.append(batch.state_slots[b:].tolist())
        return eager_logits(eng, batch)[:b]

    eng.runner.graphs = SimpleNamespace(fits=lambda b: 0 < b <= 8, replay_staged=replay_staged)
    pool.buffer[0].zero_()
    got = [o.token_ids for o in eng.generate(prompts, sp)]
    unused = pool.buffer[len(prompts) + 1 :]  # slots 1..3 went to the three requests
    return {"tokens": got == ref, "padding_to_dummy": bool(padded_rows) and all(
        r == [0] * len(r) and r for r in padded_rows),
        "dummy_written": bool(pool.buffer[0].any()), "others_untouched": not bool(unused.any())}
