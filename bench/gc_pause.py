"""What a full garbage collection costs a serving process, with and without its startup heap frozen.

Builds an engine (the embedded SmolLM2 on CPU unless told otherwise), then, before and after
`freeze_startup_heap()` (engine/heap.py, which the daemons call once they serve):
- forces full collections and times them (what any automatic generation-2 collection costs then),
- generates for a while and records every automatic collection (`gc.callbacks`) per generation.

    python bench/gc_pause.py                        # a few seconds on a CPU box
    python bench/gc_pause.py --device cuda --model smollm2-135m --steps 400
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

from pdpair.engine import Engine, SamplingParams
from pdpair.engine.heap import freeze_startup_heap


def forced_ms(reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        gc.collect()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def automatic(engine: Engine, steps: int) -> dict[int, list[float]]:
    """Automatic collections during `steps` decode tokens of generation: generation -> durations (ms)."""
    seen: dict[int, list[float]] = {0: [], 1: [], 2: []}
    started: list[float] = []

    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            seen[info["generation"]].append((time.perf_counter() - started.pop()) * 1e3)

    gc.callbacks.append(callback)
    try:
        prompts = [[1 + (7 * i + j) % 500 for j in range(24)] for i in range(4)]
        engine.generate(prompts, SamplingParams(max_new_tokens=max(1, steps // len(prompts)), temperature=0.0,
                                                ignore_eos=True))
    finally:
        gc.callbacks.remove(callback)
    return seen


def row(label: str, forced: list[float], auto: dict[int, list[float]]) -> str:
    gens = "  ".join(f"gen{g} {len(v):4d}x max {max(v, default=0):6.2f} ms" for g, v in auto.items())
    return (f"| {label:<22} | {len(gc.get_objects()):>9,} | {statistics.median(forced):8.2f} | "
            f"{max(forced):8.2f} | {gens} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="embedded name, HF directory or .gguf (default: %(default)s)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=64, help="decode tokens generated per measurement (default: %(default)s)")
    ap.add_argument("--reps", type=int, default=5, help="forced full collections per measurement (default: %(default)s)")
    args = ap.parse_args()
    engine = Engine.from_model(args.model, device=args.device, max_pages=512)
    engine.generate([[1, 2, 3]], SamplingParams(max_new_tokens=2))  # warm-up
    print("| heap                   | tracked   | full p50 | full max | automatic collections while generating |")
    print("| --- | --- | --- | --- | --- |")
    print(row("as built", forced_ms(args.reps), automatic(engine, args.steps)), flush=True)
    frozen = freeze_startup_heap()
    print(row(f"frozen ({frozen:,})", forced_ms(args.reps), automatic(engine, args.steps)), flush=True)


if __name__ == "__main__":
    main()
