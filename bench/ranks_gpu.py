"""Decode throughput on two GPUs: DP attention=2 vs TP=2 vs two independent replicas, and the idle-batch cost.

Same load for every configuration and shape: `--batch` greedy requests (ignore_eos) of `--prompt` tokens each.
Decode tokens/s = batch * (new - 1) / (time of `--new` tokens - time of 1 token), so the prefill of the batch
is left out. Configurations (rank processes, NCCL, CUDA-graph decode):
- TP=2: one node of two ranks, attention heads and MLP split;
- DP-attn=2: two DP ranks (attention-TP 1) with their own requests, the MLP tensor-parallel over both;
- 2 replicas: two one-rank nodes, one per GPU, the requests alternating between them.
Idle-batch cost: one request alone on DP-attn=2 (DP rank 1 steps idle: it replays the decode graph with no
real row so the collectives line up) against one request alone on a replica (no peer stepping), both in ms
per decode step; plus the idle rank's mean host time per idle forward, and per DP leader the leader gathers per
iteration and the host time spent in them (mostly waiting for the other leader) over the DP-attn=2 run.

Seeded random weights in a Hugging Face directory (bench/serving_gpu.py's writer): the SmolLM2 shape and an
8B shape. Results are printed and, when $OUT is set, written to $OUT/ranks_gpu.json.

    python bench/ranks_gpu.py                 # nvidia-h200-x2, about 4-5 minutes
    python bench/ranks_gpu.py --smoke         # CPU, gloo, a tiny shape, a few steps (checks the harness)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pdpair.engine.distributed import RankGroup, RankSpec, RankTopology, host_rendezvous  # noqa: E402
from pdpair.engine.events import StepEvent  # noqa: E402
from pdpair.engine.sampling import SamplingParams  # noqa: E402

SHAPES = {"smollm2": "smollm2", "8b": "llama3-8b"}  # this script's names -> bench/serving_gpu.py's shapes
CONFIGS = (("TP=2", RankTopology(2)), ("DP-attn=2", RankTopology(2, 2, True)), ("2 replicas", None))


@contextlib.contextmanager
def visible_device(index: int | None):
    """Spawned ranks started inside see only GPU `index` (a one-rank replica on that GPU)."""
    old = os.environ.get("CUDA_VISIBLE_DEVICES")
    if index is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(index)
    try:
        yield
    finally:
        if index is not None:
            if old is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = old


def drive(groups: list[RankGroup], prompts: list[list[int]], sp: SamplingParams, timeout: float = 300.0) -> float:
    """Seconds until every prompt finished; prompt i goes to group i % len(groups), all submitted at once."""
    started = time.perf_counter()
    pending = set()
    for i, p in enumerate(prompts):
        rid = f"bench-{time.monotonic_ns()}-{i}"
        groups[i % len(groups)].submit(rid, p, sp)
        pending.add(rid)
    while pending:
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"{len(pending)} requests unfinished after {timeout:.0f} s")
        for g in groups:
            for _, ev in g.poll(0.001):
                if isinstance(ev, StepEvent) and ev.finish_reason is not None:
                    pending.discard(ev.rid)
    return time.perf_counter() - started


def per_token_s(groups: list[RankGroup], prompts: list[list[int]], new: int) -> float:
    """Seconds per decode step of this load: (time of `new` tokens - time of 1 token) / (new - 1), after a warm-up
    run of the same load (a first prefill of a new shape compiles kernels, which made the 1-token run the longer)."""
    drive(groups, prompts, SamplingParams(max_new_tokens=2, temperature=0.0, ignore_eos=True))
    one = drive(groups, prompts, SamplingParams(max_new_tokens=1, temperature=0.0, ignore_eos=True))
    full = drive(groups, prompts, SamplingParams(max_new_tokens=new, temperature=0.0, ignore_eos=True))
    return max(full - one, 1e-9) / (new - 1)


def start(topo: RankTopology, model: str, args, gpu: int | None = None) -> RankGroup:
    pages = -(-args.batch * (args.prompt + args.new) // 16) + 64
    spec = RankSpec(topo, host_rendezvous(), model=model, device=args.device, dtype=args.dtype, max_pages=pages,
                    max_running_requests=args.batch, chunk_size=max(512, args.prompt))
    with visible_device(gpu):
        return RankGroup(spec)


def bench_shape(name: str, model: str, vocab: int, args) -> dict:
    prompts = [[(7 + 31 * i + j) % (vocab - 3) + 3 for j in range(args.prompt)] for i in range(args.batch)]
    warm = SamplingParams(max_new_tokens=2, temperature=0.0, ignore_eos=True)
    rows, idle = {}, {}
    for label, topo in CONFIGS:
        if topo is None:  # two one-rank nodes, one per GPU
            gpus = (0, 1) if args.device == "cuda" else (None, None)
            groups = [start(RankTopology(1), model, args, g) for g in gpus]
        else:
            groups = [start(topo, model, args)]
        try:
            drive(groups, prompts[:2], warm)
            step = per_token_s(groups, prompts, args.new)
            rows[label] = args.batch / step
            print(f"{name:<8} {label:<11} {rows[label]:>10.0f} tok/s  ({step * 1e3:.2f} ms per step)", flush=True)
            if label == "DP-attn=2":
                idle["dp_step_ms"] = per_token_s(groups, prompts[:1], args.new) * 1e3
            elif topo is None:
                idle["alone_step_ms"] = per_token_s(groups[:1], prompts[:1], args.new) * 1e3
        finally:
            for g in groups:
                g.close()
        if label == "DP-attn=2":
            by_rank = {c.dp_rank: c for c in groups[0].closed}
            closed = by_rank.get(1)
            if closed is not None and closed.idle_forwards:
                idle["idle_forward_host_ms"] = closed.idle_seconds / closed.idle_forwards * 1e3
                idle["idle_forwards"] = closed.idle_forwards
            for d, c in sorted(by_rank.items()):
                if c.iterations:
                    idle[f"dp{d}_gathers_per_iteration"] = c.gathers / c.iterations
                    idle[f"dp{d}_gather_ms_per_iteration"] = c.gather_seconds / c.iterations * 1e3
                    print(f"{name:<8} DP rank {d}: {c.iterations} iterations, {c.gathers / c.iterations:.2f} leader "
                          f"gathers and {c.gather_seconds / c.iterations * 1e3:.3f} ms in them per iteration", flush=True)
    idle["cost_ms"] = idle["dp_step_ms"] - idle["alone_step_ms"]
    print(f"{name:<8} idle batch: one request on DP-attn=2 {idle['dp_step_ms']:.2f} ms/step (DP rank 1 idle) vs "
          f"alone on a replica {idle['alone_step_ms']:.2f} ms/step: {idle['cost_ms']:+.2f} ms per step; idle "
          f"forward host time {idle.get('idle_forward_host_ms', float('nan')):.3f} ms", flush=True)
    return {"shape": name, "tokens_per_s": rows, "idle": idle}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="smollm2,8b", help=f"comma-separated, of {sorted(SHAPES)} (default: both)")
    ap.add_argument("--batch", type=int, default=64, help="concurrent requests (default: 64)")
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens per request (default: 128)")
    ap.add_argument("--new", type=int, default=64, help="new tokens per request (default: 64)")
    ap.add_argument("--smoke", action="store_true",
                    help="CPU, gloo ranks, a tiny shape, 2 requests of 3 tokens: checks the harness only")
    args = ap.parse_args()
    args.device, args.dtype = ("cpu", "float32") if args.smoke else ("cuda", "bfloat16")
    if args.smoke:
        args.shapes, args.batch, args.prompt, args.new = "tiny", 2, 8, 3
    from serving_gpu import hf_config, missing_pieces, write_model_dir

    if args.device == "cuda" and (missing := [m for m in missing_pieces("cuda") if "CUDA" in m]):
        sys.exit(f"ranks_gpu: this machine lacks {missing}")
    t0 = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="pdpair-ranks-bench-") as tmp:
        for name in args.shapes.split(","):
            shape = "tiny" if name == "tiny" else SHAPES[name]
            root = Path(tmp) / name
            root.mkdir()
            model = write_model_dir(shape, root, args.device)
            results.append(bench_shape(name, str(model), hf_config(shape)["vocab_size"], args))
    print(f"\ndecode tokens/s, {args.batch} requests x {args.prompt} prompt tokens, {args.device} "
          f"({time.perf_counter() - t0:.0f} s in all)")
    labels = [label for label, _ in CONFIGS]
    print(f"{'shape':<8} " + " ".join(f"{label:>11}" for label in labels) + f" {'idle ms/step':>13}")
    for r in results:
        print(f"{r['shape']:<8} " + " ".join(f"{r['tokens_per_s'][label]:>11.0f}" for label in labels)
              + f" {r['idle']['cost_ms']:>+13.2f}")
    out = os.environ.get("OUT")
    if out:
        Path(out, "ranks_gpu.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()
