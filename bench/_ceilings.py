"""The device-to-device copy ceiling the GPU benchmarks put their rows beside, measured one way everywhere."""

from __future__ import annotations

import statistics
import time

import torch


def cuda_ms(fn, reps: int, warmup: int = 2) -> float:
    """Median milliseconds of `fn()` over `reps` runs, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def copy_gbs(warm_s: float = 1.0, gib: int = 4) -> float:
    """GB/s of a `gib` GiB device-to-device copy, counting bytes read + written: the best median of three
    rounds, after `warm_s` seconds of copies. A copy measured on a GPU just out of idle reads low (on one H200,
    two runs minutes apart measured 4,028 and 4,163 GB/s), and 1 GiB copies read 1.5-2% lower than 4 GiB ones
    on the same GPU in the same process."""
    n = gib << 30
    src = torch.randn(n // 2, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    t = time.perf_counter()
    while time.perf_counter() - t < warm_s:
        for _ in range(20):
            dst.copy_(src)
        torch.cuda.synchronize()
    gbs = max(2 * n / cuda_ms(lambda d=dst, s=src: d.copy_(s), 20, 2) / 1e6 for _ in range(3))
    del src, dst
    torch.cuda.empty_cache()
    return gbs
