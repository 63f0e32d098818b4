"""Host time per decode step of the scheduler path, measured on the CPU with the device work stubbed out.

The real Scheduler, ModelRunner, sampler and decode-graph staging run at batch 1, 8, 64 and 256 with
overlap scheduling on and off; the model is a stub that returns fixed logits at once and the decode graphs are
stand-ins whose replay does nothing (the host's side of `DecodeCudaGraphs.replay_staged` still runs). The vocab
is small (--vocab) so that the sampler's own arithmetic, device work on a GPU, stays negligible here. What is
left is the host work of a step, which overlap scheduling must hide under the device's step time.

    python bench/host_path.py                              # the table, a few seconds per row
    python bench/host_path.py --batches 64 --profile       # and a cProfile top-15 of each row
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import time
from types import SimpleNamespace

import torch
from pdpair.engine import Engine, Request, SamplingParams
from pdpair.engine.cuda_graph import DecodeCudaGraphs
from pdpair.engine.model_config import ModelConfig
from torch.utils._python_dispatch import TorchDispatchMode

OP_STEPS = 16  # steps counted by OpCounter (a page boundary every 16 tokens: every step of a cycle)


class StubModel(torch.nn.Module):
    """Fixed logits of the right shape, at once: `[rows of ctx.logits_indices, vocab]`."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.logits = torch.randn(4096, vocab, generator=torch.Generator().manual_seed(0))

    def forward(self, input_ids, positions, ctx):
        return self.logits[: len(ctx.logits_indices)]


class StubGraphs(DecodeCudaGraphs):
    """Decode graphs whose replay launches nothing: the staging of inputs runs, the graph is a no-op."""

    def capture(self) -> None:
        vocab = self.model.logits.shape[1]
        for bs in self.buckets:
            self._batches[bs] = self._static_batch(bs)
            self._graphs[bs] = SimpleNamespace(replay=lambda: None)
            self._outputs[bs] = self.model.logits[:bs, :vocab]


class OpCounter(TorchDispatchMode):
    """Counts the ATen ops that compute or copy (not views, not tensor-literal bookkeeping): on a GPU each
    is a launch or a copy the host issues, so their number per step is this bench's proxy for device calls."""

    SKIP = frozenset({"aten.detach_.default", "aten.detach.default", "aten.lift_fresh.default"})

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        ret = func._schema.returns
        view = bool(ret) and ret[0].alias_info is not None and not ret[0].alias_info.is_write
        self.count += not view and str(func) not in self.SKIP
        return func(*args, **(kwargs or {}))


def stub_engine(vocab: int, max_batch: int, prompt: int, steps: int) -> Engine:
    mc = ModelConfig(arch="llama", num_layers=1, hidden_size=64, num_heads=2, num_kv_heads=1, head_dim=32,
                     intermediate_size=64, vocab_size=vocab, context_length=prompt + steps + 64)
    loaded = SimpleNamespace(config=mc, model=StubModel(vocab), tokenizer=None, model_id="stub",
                             weights_digest="stub")
    pages = max_batch * (-(-(prompt + steps + 32) // 16)) + 64
    eng = Engine.from_loaded(loaded, max_pages=pages, chunk_size=8192, attention_backend="torch",
                             max_running_requests=max_batch, overlap_schedule=False)
    graphs = StubGraphs(eng.runner.model, SimpleNamespace(prepare_for_replay=lambda batch, padded: None),
                        eng.req_to_token.table, max_batch, eng.req_to_token.max_context,
                        token_source=eng.runner.row_tokens)
    graphs.capture()
    eng.runner.graphs = graphs
    return eng


def measure(eng: Engine, batch: int, prompt: int, steps: int, overlap: bool, sampling: SamplingParams,
            profile: cProfile.Profile | None) -> tuple[list[float], float]:
    """(seconds of each of `steps` scheduler steps once `batch` requests are decoding, torch ops per step)."""
    sched = eng.scheduler
    sched.overlap = overlap
    ids = [3 + i % 200 for i in range(prompt)]
    rids = [f"h{batch}-{overlap}-{i}-{time.monotonic_ns()}" for i in range(batch)]
    for i, rid in enumerate(rids):
        sched.submit(Request(rid, ids[: prompt - i % 7], sampling))  # ragged: page boundaries spread out
    while sched.stats().running < batch:
        sched.step()
    for _ in range(3):
        sched.step()
    with OpCounter() as ops:  # a few steps, untimed
        for _ in range(OP_STEPS):
            sched.step()
    times = []
    if profile is not None:
        profile.enable()
    for _ in range(steps):
        t = time.perf_counter()
        sched.step()
        times.append(time.perf_counter() - t)
    if profile is not None:
        profile.disable()
    for rid in rids:
        sched.abort(rid)
    sched.drain()
    eng.check_integrity()
    return times, ops.count / OP_STEPS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64, 256], help="decode batch sizes")
    ap.add_argument("--steps", type=int, default=200, help="timed decode steps per row (median reported)")
    ap.add_argument("--prompt", type=int, default=512, help="prompt tokens per request (the context grows on)")
    ap.add_argument("--vocab", type=int, default=512, help="vocab of the stub model's logits")
    ap.add_argument("--sampling", choices=["greedy", "random"], default="greedy",
                    help="greedy, or temperature 0.8 / top-p 0.9 with a seed per request")
    ap.add_argument("--overlap", choices=["on", "off", "both"], default="both", help="overlap scheduling rows")
    ap.add_argument("--eager", action="store_true",
                    help="eager decode forwards (ForwardBatch.build) instead of the stubbed graph replay")
    ap.add_argument("--profile", action="store_true", help="print a cProfile top-15 (own time) of each row")
    args = ap.parse_args()
    torch.set_num_threads(1)
    knobs = dict(temperature=0.8, top_p=0.9, seed=7) if args.sampling == "random" else dict(temperature=0.0)
    sp = SamplingParams(max_new_tokens=args.steps + OP_STEPS + 16, ignore_eos=True, **knobs)
    modes = {"on": [True], "off": [False], "both": [False, True]}[args.overlap]
    eng = stub_engine(args.vocab, max(args.batches), args.prompt, args.steps + OP_STEPS)
    if args.eager:
        eng.runner.graphs = None
    print(f"host path per decode step ({'eager' if args.eager else 'graph replay stubbed'}, {args.sampling}, "
          f"vocab {args.vocab}, prompt {args.prompt}, {args.steps} steps, torch {torch.__version__})")
    print("| batch | overlap | host us/step (median) | mean us | p90 us | us/request | torch ops/step |")
    print("|-------|---------|-----------------------|---------|--------|------------|----------------|")
    for bs in args.batches:
        for ov in modes:
            prof = cProfile.Profile() if args.profile else None
            times, ops = measure(eng, bs, args.prompt, args.steps, ov, sp, prof)
            times.sort()
            med, p90 = statistics.median(times) * 1e6, times[int(0.9 * (len(times) - 1))] * 1e6
            mean = statistics.mean(times) * 1e6  # with the garbage collector's pauses
            print(f"| {bs:5d} | {'on' if ov else 'off':>7} | {med:21.1f} | {mean:7.1f} | {p90:6.1f} "
                  f"| {med / bs:10.2f} | {ops:14.1f} |", flush=True)
            if prof is not None:
                out = io.StringIO()
                pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(15)
                print(out.getvalue())


if __name__ == "__main__":
    main()
