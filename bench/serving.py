"""Serving benchmark: TTFT, inter-token latency and output tokens/s, disaggregated vs colocated.

Starts a prefill node and a decode node on loopback (real Mooncake over TCP), then for every prompt
length and concurrency sends the same requests to the decode node twice, interleaved wave by wave:
colocated (Generate without a prefill node: the decode node prefills) and disaggregated (the prefill node
prefills and writes each chunk's pages while it computes the next). Prints a table, writes a PNG.

    python bench/serving.py                      # 128/512/2048 tokens, concurrency 1 and 8
    python bench/serving.py --lengths 128 --concurrency 1 --waves 1   # quick look
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from pdpair.proto import pdpair_pb2 as pb
from pdpair.proto import pdpair_pb2_grpc as pb_grpc
from pdpair.router.local_cluster import LocalCluster
from tqdm import tqdm

MODES = ("colocated", "disaggregated")


@dataclass
class Sample:
    ttft: float
    itl: list[float]
    tokens: int
    transfer: pb.TransferStats


@dataclass
class Cell:
    length: int
    concurrency: int
    mode: str
    samples: list[Sample] = field(default_factory=list)
    wall: float = 0.0

    @property
    def ttft_ms(self) -> float:
        return 1e3 * statistics.median(s.ttft for s in self.samples)

    @property
    def ttft_mean_ms(self) -> float:
        return 1e3 * statistics.fmean(s.ttft for s in self.samples)

    @property
    def itl_ms(self) -> float:
        gaps = [g for s in self.samples for g in s.itl]
        return 1e3 * statistics.fmean(gaps) if gaps else float("nan")

    @property
    def tokens_per_s(self) -> float:
        return sum(s.tokens for s in self.samples) / self.wall if self.wall else 0.0


def prompt(n: int, salt: int) -> list[int]:
    return [1000 + (31 * i + 977 * salt) % 40000 for i in range(n)]


async def one(stub, ids: list[int], out_tokens: int, prefill_addr: str) -> Sample:
    sp = pb.SamplingParams(max_new_tokens=out_tokens, temperature=0.0, ignore_eos=True)
    req = pb.GenerateRequest(rid=f"bench-{uuid.uuid4().hex[:12]}", token_ids=ids, sampling=sp,
                             prefill_addr=prefill_addr)
    start = time.perf_counter()
    ttft, last, itl, tokens, transfer = None, None, [], 0, pb.TransferStats()
    async for chunk in stub.Generate(req, timeout=3600):
        now = time.perf_counter()
        n = len(chunk.token_ids)
        if ttft is None:
            ttft, transfer = now - start, chunk.transfer
            n_gaps = n - 1
        else:
            n_gaps = n
        if last is not None and n_gaps:
            itl.extend([(now - last) / n_gaps] * n_gaps)
        last = now
        tokens += n
    return Sample(ttft, itl, tokens, transfer)


async def run(args) -> list[Cell]:
    env = {"OMP_NUM_THREADS": str(args.threads)}
    node_args = ["--page-size", str(args.page_size), "--chunk-size", str(args.chunk_size), "--max-pages",
                 str(args.max_pages), "--log-level", "WARNING"]
    with LocalCluster(prefill=1, decode=1, router=False, node_args=node_args, env=env) as cluster:
        channel = grpc.aio.insecure_channel(cluster.decode_addrs[0])
        stub = pb_grpc.DecodeNodeStub(channel)
        addrs = {"colocated": "", "disaggregated": cluster.prefill_addrs[0]}
        for mode in MODES:  # warm up both paths (handshake, first Mooncake write, allocator)
            await one(stub, prompt(64, 0), 4, addrs[mode])
        cells = {(n, c, m): Cell(n, c, m) for n in args.lengths for c in args.concurrency for m in MODES}
        total = sum(c * args.waves * len(MODES) for c in args.concurrency) * len(args.lengths)
        salt = 1
        with tqdm(total=total, unit="req", desc="serving") as bar:
            for n in args.lengths:
                for conc in args.concurrency:
                    for _ in range(args.waves):
                        prompts = [prompt(n, salt + i) for i in range(conc)]
                        salt += conc
                        for mode in MODES:  # same prompts, modes interleaved wave by wave
                            bar.set_postfix_str(f"{n} tok x{conc} {mode}")
                            t0 = time.perf_counter()
                            samples = await asyncio.gather(*(one(stub, ids, args.output_tokens, addrs[mode])
                                                             for ids in prompts))
                            cell = cells[(n, conc, mode)]
                            cell.wall += time.perf_counter() - t0
                            cell.samples.extend(samples)
                            bar.update(conc)
        await channel.close()
    return list(cells.values())


def table(cells: list[Cell]) -> str:
    head = ("| prompt | conc | mode | TTFT p50 ms | TTFT mean ms | ITL ms | out tok/s | pages/req | "
            "batches/req | GB/s | TTFT disagg/coloc |")
    lines = [head, "|" + "---|" * 11]
    by = {(c.length, c.concurrency, c.mode): c for c in cells}
    for c in cells:
        t = c.samples[0].transfer
        ratio = ""
        if c.mode == "disaggregated":
            ratio = f"{c.ttft_mean_ms / by[(c.length, c.concurrency, 'colocated')].ttft_mean_ms:.3f}"
        gbps = statistics.fmean(s.transfer.bytes / s.transfer.seconds / 1e9 for s in c.samples
                                if s.transfer.seconds > 0) if t.seconds else 0.0
        lines.append(f"| {c.length} | {c.concurrency} | {c.mode} | {c.ttft_ms:.0f} | {c.ttft_mean_ms:.0f} | "
                     f"{c.itl_ms:.1f} | {c.tokens_per_s:.1f} | {t.items if t.items else '-'} | "
                     f"{t.batches if t.batches else '-'} | {f'{gbps:.2f}' if gbps else '-'} | {ratio} |")
    return "\n".join(lines)


def plot(cells: list[Cell], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(c.length, c.concurrency) for c in cells})
    labels = [f"{n}\nx{k}" for n, k in groups]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    metrics = [("TTFT mean (ms)", "ttft_mean_ms"), ("inter-token latency (ms)", "itl_ms"),
               ("output tokens/s", "tokens_per_s")]
    by = {(c.length, c.concurrency, c.mode): c for c in cells}
    for ax, (title, attr) in zip(axes, metrics, strict=True):
        for i, mode in enumerate(MODES):
            xs = [j + (i - 0.5) * 0.38 for j in range(len(groups))]
            ax.bar(xs, [getattr(by[(n, k, mode)], attr) for n, k in groups], width=0.38, label=mode)
        ax.set_xticks(range(len(groups)), labels)
        ax.set_xlabel("prompt tokens, concurrency")
        ax.set_title(title)
    axes[0].legend()
    fig.suptitle("pdpair serving: disaggregated vs colocated (CPU, SmolLM2-135M, Mooncake TCP loopback)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 2048], help="prompt lengths")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], help="requests in flight")
    ap.add_argument("--waves", type=int, default=2, help="waves of `concurrency` requests per cell and mode")
    ap.add_argument("--output-tokens", type=int, default=32, help="tokens generated per request")
    ap.add_argument("--chunk-size", type=int, default=512, help="chunked-prefill budget of both nodes")
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--max-pages", type=int, default=1200, help="KV pool of each node, in pages")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per node (OMP_NUM_THREADS)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "serving.png")
    args = ap.parse_args()
    cells = asyncio.run(run(args))
    print(f"\nSmolLM2-135M fp32 on CPU, {args.threads} torch thread(s) per node, chunk {args.chunk_size}, "
          f"page {args.page_size}, {args.output_tokens} output tokens, {args.waves} wave(s) per cell; "
          f"TTFT/ITL measured at the decode node's gRPC stream")
    print(table(cells))
    plot(cells, args.out)
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
