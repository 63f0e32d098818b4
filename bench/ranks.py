"""Decode throughput of one node's ranks: TP=1 vs TP=2 vs DP attention=2, and what idle batches cost.

Same load for every configuration: `--batch` greedy requests of `--new` tokens each (ignore_eos). The
idle-batch cost is measured with a single request on DP attention=2: DP rank 1 runs an idle batch for each
of rank 0's forwards; its mean idle-forward time is the per-step price of keeping the collectives matched.
CPU (gloo, one thread per process) by default; `--device cuda` runs the ranks on cuda:0.. (NCCL).
"""

from __future__ import annotations

import argparse
import time

import torch
from pdpair.engine import Engine, SamplingParams
from pdpair.engine.distributed import RankGroup, RankSpec, RankTopology, host_rendezvous

TEXT = "The history of computing is a story of abstraction layered on abstraction, and each step let us "


def prompts(eng: Engine, batch: int) -> list[list[int]]:
    ids = eng.tokenizer.encode(TEXT)
    return [ids[: 8 + i] for i in range(batch)]


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--batch", type=int, default=4, help="concurrent requests (default: 4)")
    ap.add_argument("--new", type=int, default=32, help="new tokens per request (default: 32)")
    args = ap.parse_args()
    torch.set_num_threads(1)  # as each CPU rank process does
    sp = SamplingParams(max_new_tokens=args.new, temperature=0.0, ignore_eos=True)
    eng = Engine.from_model(device=args.device, dtype=args.dtype, max_pages=256)
    ps = prompts(eng, args.batch)
    eng.generate(ps[:1], SamplingParams(max_new_tokens=2))  # warm up
    rows = [("TP=1", args.batch * args.new / timed(lambda: eng.generate(ps, sp)))]
    idle = None
    for name, topo in (("TP=2", RankTopology(2)), ("DP-attn=2", RankTopology(2, 2, True))):
        spec = RankSpec(topo, host_rendezvous(), device=args.device, dtype=args.dtype, max_pages=256)
        with RankGroup(spec) as group:
            group.generate(ps[:2], SamplingParams(max_new_tokens=2))  # warm up
            rows.append((name, args.batch * args.new / timed(lambda: group.generate(ps, sp))))
            if topo.dp_size > 1:
                one = timed(lambda: group.generate(ps[:1], sp))
        if topo.dp_size > 1:
            closed = {c.dp_rank: c for c in group.closed}
            before = closed[1]
            idle = (one / (args.new + 1), before.idle_seconds / max(1, before.idle_forwards), before.idle_forwards)
    print(f"decode, {args.batch} requests x {args.new} tokens on {args.device}")
    print(f"{'config':<12} {'tokens/s':>10}")
    for name, tps in rows:
        print(f"{name:<12} {tps:>10.1f}")
    if idle is not None:
        step, per_idle, n = idle
        print(f"DP-attn=2, one request: {step * 1e3:.1f} ms per step on rank 0; rank 1 idle forwards "
              f"{per_idle * 1e3:.1f} ms each (mean of {n}, all runs)")


if __name__ == "__main__":
    main()
