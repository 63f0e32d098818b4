"""Engine speed on a GPU for real model shapes, each row beside its floor measured in the same run.

Shapes: Llama-3.1-8B, Qwen3-8B and SmolLM2-135M (and, with `--shapes`, Qwen3-0.6B, Llama-3.2-1B, Llama-3.2-3B and
Qwen3-4B) with seeded random bf16 weights built on the device (no checkpoint), paged KV (page 16), triton attention,
decode CUDA graphs. Rows per shape:
- decode step at batch 1, 8, 64, 256 (context 2,048): the bare graph replay (CUDA events, median) against
  (weight bytes + KV bytes) / measured device-to-device copy bandwidth (bytes read + written);
- the same step through `DecodeCudaGraphs.replay` (host metadata fill included);
- with `--chain N`, the bare step again as N replays queued back to back (per step);
- prefill of 8 x 4,096 tokens (one eager extend forward): FLOPs / measured bf16 GEMM peak;
- scheduler decode steps at batch 64 (what `engine.generate` runs: batch build, graph replay, sampling, one
  host read per step), with overlap scheduling off (serial: the device idles during the host's work) and on
  (step k launched before step k-1's tokens are read), against the bare graph at the same batch and context:
  the host path's share.
With `--fused-ops both` every row runs with the fused kernels on and off.

    python bench/engine_gpu.py --json OUT.json            # all three shapes, fused and unfused: about 2 minutes on an H200
    python bench/engine_gpu.py --shapes smollm2 --quick   # a quick look
    python bench/engine_gpu.py --shapes llama3-8b --batches 1 8 --fused-ops on --skip scheduler prefill \
        --configs down:BLOCK_N=32 prefetch:blocks=2 --ab-rounds 3   # launch configs A/B'd in the step
    python bench/engine_gpu.py --shapes qwen3-8b --batches 1 8 --fused-ops on --skip scheduler prefill \
        --layers 36 12 36                                           # per-layer and per-step parts of a step
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ helpers when run from a checkout

from _ceilings import copy_gbs, cuda_ms  # noqa: E402
from pdpair.engine.model_config import ModelConfig, RopeScaling  # noqa: E402

SHAPES = {
    "llama3-8b": ModelConfig(
        arch="llama", num_layers=32, hidden_size=4096, num_heads=32, num_kv_heads=8, head_dim=128,
        intermediate_size=14336, vocab_size=128256, context_length=8192, rope_theta=500000.0,
        rope_scaling=RopeScaling("llama3", 8.0, 1.0, 4.0, 8192), rms_norm_eps=1e-5),
    "qwen3-8b": ModelConfig(
        arch="qwen3", num_layers=36, hidden_size=4096, num_heads=32, num_kv_heads=8, head_dim=128,
        intermediate_size=12288, vocab_size=151936, context_length=8192, rope_theta=1e6, qk_norm=True),
    "llama3-1b": ModelConfig(  # Llama-3.2-1B
        arch="llama", num_layers=16, hidden_size=2048, num_heads=32, num_kv_heads=8, head_dim=64,
        intermediate_size=8192, vocab_size=128256, context_length=8192, rope_theta=500000.0,
        rope_scaling=RopeScaling("llama3", 32.0, 1.0, 4.0, 8192), rms_norm_eps=1e-5, tie_word_embeddings=True),
    "llama3-3b": ModelConfig(  # Llama-3.2-3B
        arch="llama", num_layers=28, hidden_size=3072, num_heads=24, num_kv_heads=8, head_dim=128,
        intermediate_size=8192, vocab_size=128256, context_length=8192, rope_theta=500000.0,
        rope_scaling=RopeScaling("llama3", 32.0, 1.0, 4.0, 8192), rms_norm_eps=1e-5, tie_word_embeddings=True),
    "qwen3-4b": ModelConfig(
        arch="qwen3", num_layers=36, hidden_size=2560, num_heads=32, num_kv_heads=8, head_dim=128,
        intermediate_size=9728, vocab_size=151936, context_length=8192, rope_theta=1e6, qk_norm=True,
        tie_word_embeddings=True),
    "qwen3-0.6b": ModelConfig(
        arch="qwen3", num_layers=28, hidden_size=1024, num_heads=16, num_kv_heads=8, head_dim=128,
        intermediate_size=3072, vocab_size=151936, context_length=8192, rope_theta=1e6, qk_norm=True,
        tie_word_embeddings=True),
    "smollm2": ModelConfig(
        arch="llama", num_layers=30, hidden_size=576, num_heads=9, num_kv_heads=3, head_dim=64,
        intermediate_size=1536, vocab_size=49152, context_length=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=True),
}
ROWS: list[dict] = []
ROW_WIDTH = 44  # the row column as rows print while measured; the table is printed again if one is wider


def _header(width: int) -> None:
    print(f"| shape         | {'row':<{width}} |        ms |  floor ms | x floor | note")
    print(f"|---------------|{'-' * (width + 2)}|-----------|-----------|---------|-----")


def _line(r: dict, width: int) -> str:
    ratio = "" if r["x_floor"] is None else f"{r['x_floor']:6.2f}x"
    floor = "" if r["floor_ms"] is None else f"{r['floor_ms']:9.3f}"
    return f"| {r['shape']:<13} | {r['row']:<{width}} | {r['ms']:9.3f} | {floor:>9} | {ratio:>7} | {r['note']}"


def row(shape: str, what: str, ms: float, floor_ms: float | None, note: str = "", **extra) -> None:
    r = {"shape": shape, "row": what, "ms": round(ms, 4),
         "floor_ms": None if floor_ms is None else round(floor_ms, 4),
         "x_floor": None if not floor_ms else round(ms / floor_ms, 3), "note": note, **extra}
    ROWS.append(r)
    print(_line(r, ROW_WIDTH), flush=True)


def realign_table() -> None:
    """Print the table again with its row column as wide as its widest row, if that is over `ROW_WIDTH` (long
    `--configs` tags), so the figures line up."""
    width = max((len(r["row"]) for r in ROWS), default=0)
    if width <= ROW_WIDTH:
        return
    print("the table again, aligned:")
    _header(width)
    for r in ROWS:
        print(_line(r, width))


def measure_ceilings(warm_s: float = 1.0) -> tuple[float, float]:
    """(copy GB/s counting bytes read + written, bf16 GEMM TFLOP/s) on random data: the GEMM the best median of
    three rounds, the copy as `_ceilings.copy_gbs` measures it (4 GiB, the size of a few layers' weights, after
    `warm_s` seconds of copies; the floors moved with a copy measured cold). The GEMM is measured first: seconds
    of GEMMs heat the GPU until its clocks drop (622-636 against 749-785 TFLOP/s)."""
    m = 8192
    a = torch.randn(m, m, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(m, m, dtype=torch.bfloat16, device="cuda")
    tflops = max(2 * m**3 / cuda_ms(lambda x=a, y=b: x @ y, 20, 5) / 1e9 for _ in range(3))
    del a, b
    gbs = copy_gbs(warm_s)
    print(f"ceilings: copy {gbs:.0f} GB/s (read + write), bf16 GEMM {tflops:.0f} TFLOP/s", flush=True)
    return gbs, tflops


def seeded_model(cfg: ModelConfig, seed: int):
    """The engine's model for `cfg` on CUDA with seeded random bf16 weights (std 0.02; norms 1 + noise)."""
    from pdpair.engine.models import build_model

    model = build_model(cfg, torch.bfloat16, "cuda")
    gen = torch.Generator(device="cuda").manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen, device="cuda", dtype=torch.float32))
            else:
                p.normal_(0.0, 0.02, generator=gen)
    return SimpleNamespace(config=cfg, model=model, tokenizer=None, model_id=f"seeded-{cfg.arch}",
                           weights_digest=f"seed{seed}")


def weight_bytes_per_step(model, cfg: ModelConfig) -> int:
    """Bytes of weights one decode step must read: all of them, but only a few rows of an untied embedding."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    if not cfg.tie_word_embeddings:
        total -= model.embed_tokens.weight.numel() * model.embed_tokens.weight.element_size()
    return total


def kv_bytes(cfg: ModelConfig, tokens: int) -> int:
    return tokens * cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * 2


def prefill_flops(cfg: ModelConfig, model, rows: int, length: int) -> float:
    """Linear layers (2 FLOPs per weight per token, lm_head for one token per row) + causal attention."""
    emb = model.embed_tokens.weight.numel()
    linear = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2) - emb
    if not cfg.tie_word_embeddings:
        linear -= model.lm_head.numel()
    attn = 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim * rows * length * (length + 1) / 2
    return 2 * linear * rows * length + 2 * emb * rows + attn


def set_fused(eng, on: bool) -> bool:
    """Switch the fused kernels (graphs captured afterwards use the new setting); False when this checkout
    has none."""
    if not hasattr(type(eng.runner.backend), "fused_ops"):
        return False
    eng.runner.backend.fused_ops = on
    return True


def set_fused_qkv(eng, on: bool) -> None:
    """The one-launch qkv + rope + K/V store of small decode batches (`--fused-qkv`), where this checkout has it."""
    if hasattr(eng.runner.backend, "fused_qkv"):
        eng.runner.backend.fused_qkv = on


def profile_kernels(name: str, what: str, fn, reps: int = 20, top: int = 14) -> None:
    """Per-kernel device time of one `fn()` (a graph replay), from the profiler over `reps` runs: launches per
    step, the sum of kernel times, and the kernels taking the most time."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    kernels: dict[str, list[float]] = {}
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA and "memcpy" not in ev.name.lower():
            k = kernels.setdefault(ev.name, [0, 0.0])
            k[0] += 1
            k[1] += ev.device_time_total if hasattr(ev, "device_time_total") else ev.cuda_time_total
    launches = sum(c for c, _ in kernels.values()) / reps
    busy_us = sum(t for _, t in kernels.values()) / reps
    print(f"{name} {what}: {launches:.0f} kernels per step, {busy_us:.1f} us of kernel time per step", flush=True)
    for kname, (c, t) in sorted(kernels.items(), key=lambda kv: -kv[1][1])[:top]:
        print(f"    {t / reps:8.1f} us  {c / reps:5.0f}x  {t / c:6.2f} us each  {kname[:90]}", flush=True)


def overlap_graphs(eng, max_batch_size: int, buckets: tuple[int, ...]):
    """Decode graphs over the engine's runner, as the engine captures them (their input staging gathers the
    tokens an overlapped step has not read yet), for the given buckets."""
    from pdpair.engine.cuda_graph import DecodeCudaGraphs

    r2t, runner = eng.req_to_token, eng.runner
    windows = {k: (r2t.tables[k], w, r2t.page_size) for k, w in runner.windows.items()}
    graphs = DecodeCudaGraphs(runner.model, runner.backend, r2t.table, max_batch_size, r2t.max_context, buckets,
                              windows=windows, token_source=runner.row_tokens)
    graphs.capture()
    return graphs


def scheduler_decode_tps(eng, ids: list[int], batch: int, steps: int, overlap: bool) -> float:
    """Tokens/s of `steps` scheduler steps once `batch` requests are decoding (ragged prompts of about
    len(ids) tokens), with overlap scheduling on or off; the last launched batch is read inside the timing."""
    from pdpair.engine import Request, SamplingParams

    sched = eng.scheduler
    sched.overlap = overlap
    sp = SamplingParams(max_new_tokens=steps + 8, temperature=0.0, ignore_eos=True)
    rids = [f"sched-{overlap}-{i}-{time.monotonic_ns()}" for i in range(batch)]
    for i, rid in enumerate(rids):
        sched.submit(Request(rid, ids[: len(ids) - i % 7], sp))
    while sched.stats().running < batch:
        sched.step()
    for _ in range(2):  # warm-up: with overlap, one batch is in flight from here on
        sched.step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        sched.step()
    sched.drain()
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t
    for rid in rids:
        sched.abort(rid)
    sched.drain()  # what the aborted requests held is freed once the forward in flight is read
    return batch * steps / elapsed


def decode_rows(eng, graphs, name: str, cfg: ModelConfig, args, wbytes: int, gbs: float, tag: str,
                full_rows: bool = True) -> None:
    """The decode rows at each batch size: the bare graph replay (and, with `full_rows`, the runner's replay
    with its host upload), beside the bandwidth floor."""
    from tests.kernels._attention_engine_fixtures import decode_batch

    ctx = args.context
    for bs in args.batches:
        batch, release = decode_batch(eng, [ctx] * bs, seed=bs)
        host = (batch.input_ids.tolist(), batch.positions.cpu().numpy(), batch.req_pool_indices.cpu().numpy())
        try:
            graphs.replay(batch)  # fills the static buffers
            bare = cuda_ms(lambda b=bs, g=graphs: g.replay_bucket(b), args.reps)
            chained = None
            if args.chain > 1:
                def chain(b=bs, g=graphs, n=args.chain):
                    for _ in range(n):
                        g.replay_bucket(b)
                chained = cuda_ms(chain, max(5, args.reps // 3)) / args.chain
            if bs in args.profile:
                profile_kernels(name, f"decode b{bs}{tag}", lambda b=bs, g=graphs: g.replay_bucket(b))
            staged = hasattr(graphs, "replay_staged")
            full = None
            if full_rows:
                full = cuda_ms((lambda g=graphs, h=host: g.replay_staged(*h)) if staged
                               else (lambda b=batch, g=graphs: g.replay(b)), args.reps)
        finally:
            release()
        floor = (wbytes + kv_bytes(cfg, bs * ctx)) / gbs / 1e6
        row(name, f"decode b{bs} ctx{ctx} graph{tag}", bare, floor, f"{bs / bare * 1e3:.0f} tok/s",
            batch=bs, tokens_per_s=bs / bare * 1e3)
        if chained is not None:
            row(name, f"decode b{bs} ctx{ctx} graph x{args.chain}{tag}", chained, floor,
                f"{args.chain} replays back to back", batch=bs)
        if full is not None:
            row(name, f"decode b{bs} ctx{ctx} runner replay{tag}", full, floor,
                "host upload + graph, as ModelRunner runs it" if staged else "metadata fill + graph", batch=bs)


def interleaved_rows(eng, name: str, cfg: ModelConfig, args, wbytes: int, gbs: float, tag: str, max_bs: int,
                     buckets: tuple[int, ...], variants: list) -> None:
    """The bare decode rows with the defaults and then under each variant (`(tag, context manager factory)`),
    graphs recaptured for each, interleaved over `--ab-rounds` rounds, so every variant is measured against its
    baseline in the same run."""
    for _ in range(args.ab_rounds):
        for vtag, setting in [("", contextlib.nullcontext), *variants]:
            with setting():
                graphs = overlap_graphs(eng, max_bs, buckets)
                try:
                    decode_rows(eng, graphs, name, cfg, args, wbytes, gbs, tag + vtag, full_rows=False)
                finally:
                    del graphs
                    torch.cuda.empty_cache()


@contextlib.contextmanager
def backend_switches(backend, values: dict):
    """Within the block, the attention backend's switches take `values`; restored after."""
    saved = {s: getattr(backend, s) for s in values}
    for s, v in values.items():
        setattr(backend, s, v)
    try:
        yield
    finally:
        for s, v in saved.items():
            setattr(backend, s, v)


def ab_rows(eng, name: str, cfg: ModelConfig, args, wbytes: int, gbs: float, tag: str, max_bs: int,
            buckets: tuple[int, ...]) -> None:
    """`--ab`: the bare decode rows again with each named backend switch flipped, then with all of them
    flipped (`interleaved_rows`)."""
    backend = eng.runner.backend
    flip = {s: not getattr(backend, s) for s in args.ab}
    variants = [(f" {s}={'on' if flip[s] else 'off'}", lambda s=s: backend_switches(backend, {s: flip[s]}))
                for s in args.ab]
    if len(args.ab) > 1:
        variants.append((" all flipped", lambda: backend_switches(backend, flip)))
    interleaved_rows(eng, name, cfg, args, wbytes, gbs, tag, max_bs, buckets, variants)


def projection_kind(n: int, k: int, gated: bool) -> str:
    """Which of a decoder layer's projections a skinny weight `[n, k]` is, for `--configs`: `gu` (gated
    gate/up), `head` (vocabulary-sized), `o` (square), `down` (fewer rows than columns) or `qkv`."""
    if gated:
        return "gu"
    return "head" if n >= 65536 else "o" if n == k else "down" if n < k else "qkv"


def parse_config(spec: str) -> tuple[str, dict]:
    """`KIND:KEY=INT,...` (KIND a `projection_kind`, or `prefetch` with `blocks`, `min_k`) -> (kind, values)."""
    kind, _, rest = spec.partition(":")
    kinds = ("qkv", "o", "down", "gu", "head", "prefetch", "tma-qkv", "tma-o", "tma-gu", "tma-down")
    if kind not in kinds or not rest:
        raise SystemExit(f"--configs {spec!r}: want KIND:KEY=INT,... with KIND one of {', '.join(kinds)}")
    try:
        return kind, {key: int(val) for key, val in (pair.split("=") for pair in rest.split(","))}
    except ValueError:
        raise SystemExit(f"--configs {spec!r}: want KEY=INT pairs, e.g. down:BLOCK_N=32,num_stages=3") from None


class SkinnyOverrides:
    """Within the block, the skinny kernels' launch configs of one projection kind (or the prefetch depth)
    take `values` over their defaults; graphs captured inside keep them. Restores the defaults after."""

    def __init__(self, kind: str, values: dict) -> None:
        self.kind, self.values = kind, values

    def __enter__(self):
        from pdpair.kernels.fused import skinny_linear, skinny_qkv

        self.saved = (skinny_linear.skinny_config, skinny_linear.PREFETCH_BLOCKS, skinny_linear.PREFETCH_MIN_K)
        if self.kind.startswith("tma-"):  # a batch-1 TMA projection's shape, or with off=1 the skinny kernel
            from pdpair.kernels.fused import tma_linear

            self.tma_default = default = tma_linear.config
            values = {key.lower(): v for key, v in self.values.items()}

            def tma_config(n: int, k: int, gated: bool, sms: int, **kw):
                if ("qkv" if kw.get("qkv") else projection_kind(n, k, gated)) != self.kind[4:]:
                    return default(n, k, gated, sms, **kw)
                return None if values.get("off") else default(n, k, gated, sms, **{
                    key: v for key, v in values.items() if key != "off"})

            tma_linear.config = tma_config
            return self
        if self.kind == "prefetch":
            skinny_linear.PREFETCH_BLOCKS = self.values.get("blocks", skinny_linear.PREFETCH_BLOCKS)
            skinny_linear.PREFETCH_MIN_K = self.values.get("min_k", skinny_linear.PREFETCH_MIN_K)
            return self
        default = self.saved[0]

        def config(n: int, k: int, gated: bool = False) -> dict:
            c = default(n, k, gated)
            return {**c, **self.values} if projection_kind(n, k, gated) == self.kind else c

        skinny_linear.skinny_config = skinny_qkv.skinny_config = config
        return self

    def __exit__(self, *exc) -> None:
        from pdpair.kernels.fused import skinny_linear, skinny_qkv

        config, skinny_linear.PREFETCH_BLOCKS, skinny_linear.PREFETCH_MIN_K = self.saved
        if self.kind.startswith("tma-"):
            from pdpair.kernels.fused import tma_linear

            tma_linear.config = self.tma_default
            return
        skinny_linear.skinny_config = skinny_qkv.skinny_config = config


def config_rows(eng, name: str, cfg: ModelConfig, args, wbytes: int, gbs: float, tag: str, max_bs: int,
                buckets: tuple[int, ...]) -> None:
    """`--configs`: the bare decode rows again with each skinny launch-config override (`interleaved_rows`).
    Kernels timed alone pick configs that do not carry over to the step under PDL (docs/kernels.md), so launch
    configs are decided here, in the step."""
    variants = [(f" {spec}", lambda spec=spec: SkinnyOverrides(*parse_config(spec))) for spec in args.configs]
    interleaved_rows(eng, name, cfg, args, wbytes, gbs, tag, max_bs, buckets, variants)


def bench_shape(name: str, cfg: ModelConfig, ceilings: tuple[float, float], args, fused_modes) -> None:
    from pdpair.engine import Engine
    from pdpair.engine.batch import ForwardBatch, ForwardMode

    from tests.kernels._attention_engine_fixtures import (
        decode_batch,
        eager_logits,
        fill_kv_random,
        hold_rows,
    )

    gbs, tflops = ceilings
    ctx, batches = args.context, args.batches
    lm = seeded_model(cfg, seed=0)
    max_bs = max(batches)
    pages = max_bs * (ctx // 16 + 2) + 64
    eng = Engine.from_loaded(lm, device="cuda", max_pages=pages, attention_backend="triton", chunk_size=512,
                             max_running_requests=max_bs, disable_cuda_graph=True)
    fill_kv_random(eng)
    set_fused_qkv(eng, args.fused_qkv == "on")
    wbytes = weight_bytes_per_step(lm.model, cfg)
    pool_bytes = sum(eng.pools.pool(kind).buffer.nbytes for kind in eng.pools.kinds)
    print(f"{name}: {wbytes / 1e9:.2f} GB of weights per decode step, {pages} pages "
          f"({pool_bytes / 2**30:.1f} GiB of pools)", flush=True)
    for fused in fused_modes:
        tag = "" if fused is None else (" fused" if fused else " unfused")
        if fused is not None and not set_fused(eng, fused):
            continue
        buckets = tuple(sorted(set(batches) | {min(64, max_bs)}))
        graphs = overlap_graphs(eng, max_bs, buckets)
        eng.runner.graphs = graphs
        decode_rows(eng, graphs, name, cfg, args, wbytes, gbs, tag)
        if args.ab and fused is not False:
            ab_rows(eng, name, cfg, args, wbytes, gbs, tag, max_bs, buckets)
        if args.configs and fused is not False:
            config_rows(eng, name, cfg, args, wbytes, gbs, tag, max_bs, buckets)
        gen = torch.Generator().manual_seed(1)
        if "scheduler" not in args.skip:
            # scheduler decode steps at batch 64, overlap off and on, against the bare graph at the same batch and context
            bs, prompt, steps = min(64, max_bs), args.sched_prompt, args.sched_steps
            ids = torch.randint(3, cfg.vocab_size, (prompt,), generator=gen).tolist()
            sched_tps = {ov: scheduler_decode_tps(eng, ids, bs, steps, ov) for ov in (False, True)}
            batch, release = decode_batch(eng, [prompt + steps // 2] * bs, seed=7)
            try:
                graphs.replay(batch)
                bare = cuda_ms(lambda b=bs, g=graphs: g.replay_bucket(b), args.reps)
            finally:
                release()
            bare_tps = bs / bare * 1e3
            for ov, tps in sched_tps.items():
                row(name, f"scheduler decode b{bs} ctx~{prompt + steps // 2} overlap {'on' if ov else 'off'}{tag}",
                    bs / tps * 1e3, bare, f"{tps:.0f} tok/s = {tps / bare_tps:.0%} of bare graph {bare_tps:.0f} tok/s "
                    "(floor column: bare graph)", tokens_per_s=tps, bare_tokens_per_s=bare_tps, overlap=ov)
        eng.runner.graphs = None
        del graphs
        torch.cuda.empty_cache()
        if "prefill" in args.skip:
            continue
        # prefill: one eager extend forward of rows x length new tokens, attention through SDPA and through Triton
        rows_n, length = args.prefill_rows, args.prefill_len
        rows, release = hold_rows(eng, [length] * rows_n)
        backend = eng.runner.backend
        routes = [True, False] if hasattr(backend, "extend_sdpa") else [None]
        flops = prefill_flops(cfg, lm.model, rows_n, length)
        floor = flops / tflops / 1e9
        try:
            tokens = torch.randint(3, cfg.vocab_size, (rows_n * length,), generator=gen).tolist()
            pb = ForwardBatch.build(ForwardMode.EXTEND, rows, [0] * rows_n, [length] * rows_n, tokens,
                                    eng.req_to_token.table)
            for sdpa in routes:
                if sdpa is not None:
                    backend.extend_sdpa = sdpa
                ms = cuda_ms(lambda e=eng, b=pb: eager_logits(e, b), args.prefill_reps, warmup=1)
                route = "" if sdpa is None else (" attn=SDPA" if sdpa else " attn=triton")
                row(name, f"prefill {rows_n}x{length}{tag}{route}", ms, floor,
                    f"{flops / ms / 1e9:.0f} TFLOP/s = {floor / ms:.0%} of GEMM peak", tflops=flops / ms / 1e9)
        finally:
            if routes[0] is not None:
                backend.extend_sdpa = True
            release()
    eng.pools.check_integrity()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["smollm2", "llama3-8b", "qwen3-8b"],
                    help="model shapes to run (seeded random weights)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64, 256], help="decode batch sizes")
    ap.add_argument("--context", type=int, default=2048, help="tokens cached per decode row")
    ap.add_argument("--layers", type=int, nargs="+", metavar="N",
                    help="run each shape with these layer counts instead of its own (rows named SHAPE/NL); two "
                         "counts split a step into its per-layer and per-step parts")
    ap.add_argument("--prefill-rows", type=int, default=8, help="rows of the prefill measurement")
    ap.add_argument("--prefill-len", type=int, default=4096, help="new tokens per prefill row")
    ap.add_argument("--chain", type=int, default=0, metavar="N",
                    help="also time N graph replays queued back to back, per step: a step as the host queues steps "
                         "under overlap scheduling, without the idle device and graph launch that precede a "
                         "single timed replay")
    ap.add_argument("--reps", type=int, default=30, help="timed repetitions per decode row (median)")
    ap.add_argument("--prefill-reps", type=int, default=3, help="timed repetitions per prefill row (median)")
    ap.add_argument("--sched-prompt", type=int, default=512, help="prompt length of the scheduler decode row")
    ap.add_argument("--sched-steps", type=int, default=64, help="decode steps timed in the scheduler row")
    ap.add_argument("--fused-ops", choices=["on", "off", "both", "default"], default="both",
                    help="run rows with the fused kernels on, off, both, or as the engine defaults")
    ap.add_argument("--profile", type=int, nargs="*", default=[], metavar="BATCH",
                    help="print the per-kernel breakdown of the decode graph at these batch sizes")
    ap.add_argument("--fused-qkv", choices=["on", "off"], default="on",
                    help="small decode batches run qkv, rope and the K/V store as one launch (the default: on)")
    ap.add_argument("--ab", nargs="*", default=[], metavar="SWITCH",
                    help="attention-backend switches (e.g. fold_norms fused_qkv fused_merge) to A/B: the bare "
                         "decode rows again with each flipped, then all flipped, interleaved with the defaults")
    ap.add_argument("--configs", nargs="*", default=[], metavar="KIND:KEY=INT,...",
                    help="skinny launch-config overrides to A/B in the decode step, one variant each: KIND is "
                         "qkv, o, down, gu (gate/up), head (LM head) with BLOCK_N, BLOCK_K, num_warps, "
                         "num_stages, or prefetch with blocks, min_k (e.g. down:BLOCK_N=32 prefetch:blocks=2); "
                         "tma-qkv, tma-o, tma-gu, tma-down: a batch-1 TMA projection (kernels/fused/tma_linear.py) with "
                         "block_n, block_k, ring_kb, warps, or off=1 for the skinny kernel there")
    ap.add_argument("--ab-rounds", type=int, default=2, help="rounds of the --ab and --configs variants")
    ap.add_argument("--skip", nargs="*", default=[], choices=["scheduler", "prefill"],
                    help="leave these rows out")
    ap.add_argument("--quick", action="store_true", help="small sizes: a few seconds per shape")
    ap.add_argument("--json", type=Path, help="write every row here")
    args = ap.parse_args()
    for spec in args.configs:
        parse_config(spec)  # a typo fails here, before minutes of setup
    if not torch.cuda.is_available():
        print("engine_gpu: no CUDA device, nothing to measure")
        return
    if args.quick:
        args.batches, args.context, args.prefill_rows, args.prefill_len = [1, 8], 512, 2, 1024
        args.reps, args.sched_steps, args.sched_prompt = 10, 16, 128
    fused_modes = {"on": [True], "off": [False], "both": [True, False], "default": [None]}[args.fused_ops]
    t0 = time.perf_counter()
    ceilings = measure_ceilings()
    _header(ROW_WIDTH)
    runs = [(name, SHAPES[name]) for name in args.shapes] if not args.layers else [
        (f"{name}/{n}L", dataclasses.replace(SHAPES[name], num_layers=n)) for name in args.shapes for n in args.layers]
    for name, cfg in runs:
        try:
            bench_shape(name, cfg, ceilings, args, fused_modes)
        except torch.cuda.OutOfMemoryError as exc:
            print(f"{name}: out of device memory, rows skipped ({exc})", flush=True)
            del exc
        # Only here, with bench_shape's frame gone, is nothing of the shape left alive: its locals (the attention
        # backend, batches) hold the pools, so emptying the cache inside it kept a whole 8B shape reserved (80
        # GiB) and the next shape's 73 GiB pool did not fit. The engine's reference cycles (scheduler hooks,
        # graphs) need the collection.
        gc.collect()
        torch.cuda.empty_cache()
        print(f"{name}: {torch.cuda.memory_reserved() / 2**30:.1f} GiB still reserved after the shape", flush=True)
    realign_table()
    print(f"total {time.perf_counter() - t0:.0f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"copy_gbs": ceilings[0], "gemm_tflops": ceilings[1], "rows": ROWS},
                                        indent=1))


if __name__ == "__main__":
    main()
