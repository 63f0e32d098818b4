"""Serving benchmark: TTFT, inter-token latency and output tokens/s, disaggregated vs colocated.

Starts a prefill node and a decode node on loopback (real Mooncake over TCP), then for every prompt
length and concurrency sends the same requests to the decode node twice, interleaved wave by wave:
colocated (Generate without a prefill node: the decode node prefills) and disaggregated (the prefill node
prefills and writes each chunk's pages while it computes the next). Prints a table and writes it to
bench/out/serving.md and .json, with serving.png: TTFT, inter-token latency and tokens/s against prompt
length, disaggregated vs colocated, one line per mode and concurrency.

    python bench/serving.py                      # 128/512/2048 tokens, concurrency 1 and 8
    python bench/serving.py --lengths 128 --concurrency 1 --waves 1 --output-tokens 4   # quick look
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from dataclasses import dataclass, field

import grpc
from _report import Panel, Report, Series, add_out_arg, progress
from pdpair.proto import pdpair_pb2 as pb
from pdpair.proto import pdpair_pb2_grpc as pb_grpc
from pdpair.router.local_cluster import LocalCluster

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
        with progress(total=total, unit="req", desc="serving") as bar:
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


COLUMNS = ["prompt", "conc", "mode", "TTFT p50 ms", "TTFT mean ms", "ITL ms", "out tok/s", "pages/req",
           "batches/req", "GB/s", "TTFT disagg/coloc"]


def table_rows(cells: list[Cell]) -> list[list]:
    by = {(c.length, c.concurrency, c.mode): c for c in cells}
    rows = []
    for c in cells:
        t = c.samples[0].transfer
        ratio = "-"
        if c.mode == "disaggregated":
            ratio = round(c.ttft_mean_ms / by[(c.length, c.concurrency, "colocated")].ttft_mean_ms, 3)
        gbps = statistics.fmean(s.transfer.bytes / s.transfer.seconds / 1e9 for s in c.samples
                                if s.transfer.seconds > 0) if t.seconds else 0.0
        rows.append([c.length, c.concurrency, c.mode, round(c.ttft_ms), round(c.ttft_mean_ms), round(c.itl_ms, 1),
                     round(c.tokens_per_s, 1), t.items or "-", t.batches or "-", round(gbps, 2) if gbps else "-",
                     ratio])
    return rows


def panels(cells: list[Cell]) -> list[Panel]:
    """TTFT, ITL and tokens/s against prompt length: a line per (mode, concurrency)."""
    metrics = [("TTFT (mean)", "ms", "ttft_mean_ms"), ("inter-token latency", "ms", "itl_ms"),
               ("output tokens/s", "tokens/s", "tokens_per_s")]
    lengths = sorted({c.length for c in cells})
    out = []
    for title, unit, attr in metrics:
        series = []
        for conc in sorted({c.concurrency for c in cells}):
            for mode in MODES:
                mine = sorted((c for c in cells if c.mode == mode and c.concurrency == conc), key=lambda c: c.length)
                style = "-o" if mode == "disaggregated" else "--s"
                series.append(Series(f"{mode} x{conc}", [c.length for c in mine], [getattr(c, attr) for c in mine],
                                     style))
        out.append(Panel(title, "prompt tokens", unit, series, logx=len(lengths) > 1, xticks=lengths))
    return out


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
    add_out_arg(ap)
    args = ap.parse_args()
    report = Report("serving", args.out_dir)
    cells = asyncio.run(run(args))
    title = (f"serving: SmolLM2-135M fp32 on CPU, {args.threads} torch thread(s) per node, chunk {args.chunk_size}, "
             f"page {args.page_size}, {args.output_tokens} output tokens, {args.waves} wave(s) per cell")
    report.table(title, COLUMNS, table_rows(cells),
                 notes=["TTFT and ITL are measured at the decode node's gRPC stream; GB/s is the KV transfer's."])
    report.lines("serving", panels(cells), "pdpair serving: disaggregated vs colocated (CPU, Mooncake TCP loopback)")
    report.done()


if __name__ == "__main__":
    main()
