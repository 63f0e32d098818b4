"""Engine throughput on this machine for the embedded model, with transformers' generate as the reference.

Prints one table: prefill tokens/s (512-token prompt), decode tokens/s at batch 1, 8 and 32, and
Hugging Face transformers `generate` (batch 1, greedy, same prompt, dtype and thread count) measured in the
same run. Batch-1 rows of both engines are measured in alternating rounds (median reported) so that load
from other processes on a shared machine hits both alike. Writes bench/out/engine.md and .json, and
engine.png: decode tokens/s against batch size, transformers' batch 1 beside it.

    python bench/engine.py                                   # quick look: --steps 2 --rounds 1 --no-transformers
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _report import Panel, Report, Series, add_out_arg, progress
from pdpair.engine import Engine, Request, SamplingParams

TEXT = ("The history of computing is a story of abstraction layered on abstraction: relays gave way to "
        "vacuum tubes, tubes to transistors, transistors to integrated circuits, and each step let "
        "programmers think less about the machine and more about the problem. ")


def prompt_ids(eng: Engine, n: int) -> list[int]:
    ids = eng.tokenizer.encode(TEXT)
    return (ids * (n // len(ids) + 1))[:n]


def bench_prefill(eng: Engine, ids: list[int], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        eng.generate([ids], SamplingParams(max_new_tokens=1, temperature=0.0))
        times.append(time.perf_counter() - t)
    return len(ids) / statistics.median(times)


def bench_decode(eng: Engine, ids: list[int], batch: int, steps: int) -> float:
    """Tokens/s over `steps` pure decode steps once every request of the batch is running."""
    sched = eng.scheduler
    sp = SamplingParams(max_new_tokens=steps + 4, temperature=0.0, ignore_eos=True)
    rids = [f"b{batch}-{i}-{time.monotonic_ns()}" for i in range(batch)]
    for i, rid in enumerate(rids):
        sched.submit(Request(rid, ids[: len(ids) - i % 7], sp))  # slightly ragged lengths
    while sched.stats().running < batch:
        sched.step()
    sched.step()  # warm-up decode step
    t = time.perf_counter()
    for _ in range(steps):
        sched.step()
    elapsed = time.perf_counter() - t
    for rid in rids:
        sched.abort(rid)
    return batch * steps / elapsed


class TransformersRef:
    """transformers' generate on the same GGUF: decode tokens/s = steps / (time(1 + steps) - time(1))."""

    def __init__(self, dtype: torch.dtype) -> None:
        from pdpair.engine.loader.gguf import embedded_gguf_path
        from transformers import AutoModelForCausalLM

        path = embedded_gguf_path()
        self.model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                          dtype=dtype).eval()

    def _run(self, inp: torch.Tensor, n: int) -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            self.model.generate(inp, attention_mask=torch.ones_like(inp), max_new_tokens=n, min_new_tokens=n,
                                do_sample=False, pad_token_id=0)
        return time.perf_counter() - t

    def decode(self, ids: list[int], steps: int) -> float:
        inp = torch.tensor([ids])
        return steps / (self._run(inp, 1 + steps) - self._run(inp, 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--steps", type=int, default=24, help="decode steps per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="alternating batch-1 rounds (median)")
    ap.add_argument("--decode-prompt", type=int, default=128, help="prompt length for decode rows")
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--no-transformers", action="store_true")
    add_out_arg(ap)
    args = ap.parse_args()
    report = Report("engine", args.out_dir)
    torch.set_num_threads(args.threads)

    eng = Engine.from_model("smollm2-135m", device="cpu", dtype="float32", page_size=args.page_size,
                            max_pages=32 * (args.decode_prompt + args.steps + 16) // args.page_size + 64,
                            chunk_size=512, attention_backend="torch")
    ref = None if args.no_transformers else TransformersRef(torch.float32)
    long_ids = prompt_ids(eng, 512)
    ids = prompt_ids(eng, args.decode_prompt)
    eng.generate([long_ids[:64]], SamplingParams(max_new_tokens=2, temperature=0.0))  # warm-up
    if ref:
        ref.decode(ids, 2)

    ours_b1, ref_b1 = [], []
    bar = progress(total=args.rounds + 3, desc="engine", unit="measurement")
    for _ in range(args.rounds):
        ours_b1.append(bench_decode(eng, ids, 1, args.steps))
        if ref:
            ref_b1.append(ref.decode(ids, args.steps))
        bar.update()
    decode = {1: statistics.median(ours_b1)}
    rows = [("pdpair prefill, 512-token prompt", bench_prefill(eng, long_ids, 3))]
    bar.update()
    for b in (8, 32):
        decode[b] = bench_decode(eng, ids, b, args.steps)
        bar.update()
    bar.close()
    rows += [(f"pdpair decode, batch {b}", decode[b]) for b in (1, 8, 32)]
    if ref:
        rows.append(("transformers generate decode, batch 1", statistics.median(ref_b1)))
    eng.pools.check_integrity()

    title = (f"engine: smollm2-135m fp32 on CPU, {args.threads} thread(s), decode prompt {args.decode_prompt} "
             f"tokens, {args.steps} decode steps, page size {args.page_size}")
    notes = []
    if ref:
        notes.append(f"batch-1 decode vs transformers: {decode[1] / statistics.median(ref_b1):.2f}x (goal >= 1.5x); "
                     f"rounds: ours {[round(x, 1) for x in ours_b1]}, transformers {[round(x, 1) for x in ref_b1]}")
    notes.append(f"batch-32 decode vs batch 1: {decode[32] / decode[1]:.2f}x (goal >= 8x)")
    report.table(title, ["row", "tokens/s"], [[name, round(tps, 1)] for name, tps in rows], notes,
                 extra={"decode_tokens_per_s": decode, "transformers_b1": statistics.median(ref_b1) if ref else None})
    series = [Series("pdpair decode", list(decode), list(decode.values()))]
    if ref:
        series.append(Series("transformers generate, batch 1", [1], [statistics.median(ref_b1)], "s"))
    report.lines("engine", [Panel("decode throughput", "batch size", "tokens/s", series, logx=True,
                                  xticks=list(decode))], "pdpair engine on CPU (SmolLM2-135M fp32)")
    report.done()


if __name__ == "__main__":
    main()
