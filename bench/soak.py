"""Soak: minutes of mixed traffic through a real router, with random client cancels and a prefill node
killed and restarted mid-run. Prints lost requests (goal 0), leaked pages (goal 0) and each daemon's RSS
at the start and the end (goal: flat), and writes bench/out/soak.md and .json.

A request is *lost* when it hangs past its timeout, gets a 5xx, or its stream ends without a finish.
Refusals the client can act on (429 overload, 503 no healthy pair while both prefill nodes are down) are
counted apart. Leaked pages are read from every node's Stats once traffic stopped and the quarantine of
the killed node's transfers ran out.

    python bench/soak.py                     # 5 minutes, concurrency 8
    python bench/soak.py --minutes 1 --concurrency 4
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import signal
import subprocess
import time

import aiohttp
import grpc
import psutil
from _report import Report, add_out_arg, progress
from pdpair.proto import pdpair_pb2 as pb
from pdpair.proto import pdpair_pb2_grpc as pb_grpc
from pdpair.router.local_cluster import LocalCluster

MODEL = "smollm2-135m"
WORDS = "river mountain cloud engine signal harbor lantern meadow copper violet".split()


def _prompt(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 400)))


async def _one(session: aiohttp.ClientSession, url: str, rng: random.Random, timeout: float) -> str:
    body = {"model": MODEL, "prompt": _prompt(rng), "max_tokens": rng.randint(1, 24), "stream": True,
            "temperature": rng.choice([0.0, 0.8]), "seed": rng.randint(0, 2**64 - 1)}
    cancel_after = rng.randint(1, 3) if rng.random() < 0.25 else None
    try:
        async with asyncio.timeout(timeout):
            async with session.post(url + "/v1/completions", json=body) as resp:
                if resp.status != 200:
                    return f"http {resp.status}"
                events = 0
                async for line in resp.content:
                    if not line.startswith(b"data: "):
                        continue
                    if line.strip() == b"data: [DONE]":
                        return "ok"
                    if b'"error"' in line:
                        return "in-band error"
                    events += 1
                    if cancel_after is not None and events >= cancel_after:
                        return "cancelled"  # leaving the block closes the connection mid-stream
                return "no finish"
    except TimeoutError:
        return "timeout"
    except aiohttp.ClientError as exc:
        return f"client {type(exc).__name__}"


def _rss(cluster: LocalCluster) -> dict[str, float]:
    out = {}
    for name, d in cluster.daemons.items():
        try:
            out[name] = psutil.Process(d.proc.pid).memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            out[name] = float("nan")
    return out


def _stats(name: str, addr: str) -> pb.NodeStats:
    stub = pb_grpc.PrefillNodeStub if name.startswith("prefill") else pb_grpc.DecodeNodeStub
    with grpc.insecure_channel(addr) as ch:
        return stub(ch).Stats(pb.StatsRequest(), timeout=10)


def _restart(cluster: LocalCluster, name: str) -> None:
    d = cluster.daemons[name]
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait()
    with open(d.log_path, "ab") as log:
        d.proc = subprocess.Popen(d.proc.args, stdout=log, stderr=subprocess.STDOUT, env=cluster.env,
                                  start_new_session=True)


async def _traffic(cluster: LocalCluster, args) -> tuple[collections.Counter, dict]:
    rng = random.Random(args.seed)
    counts: collections.Counter = collections.Counter()
    end = time.monotonic() + args.minutes * 60
    restart_at = time.monotonic() + args.minutes * 30
    restarted = {}
    bar = progress(total=int(args.minutes * 60), desc="soak", unit="s")

    async def worker(i: int) -> None:
        wrng = random.Random(rng.random())
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < end:
                counts[await _one(session, cluster.router_url, wrng, args.timeout)] += 1

    async def chaos() -> None:
        while time.monotonic() < end:
            now = time.monotonic()
            if not restarted and now >= restart_at:
                await asyncio.to_thread(_restart, cluster, "prefill-1")
                restarted["at_s"] = round(args.minutes * 30)
            bar.n = int(args.minutes * 60 - max(0.0, end - now))
            bar.set_postfix(ok=counts["ok"], lost=_lost(counts))
            bar.refresh()
            await asyncio.sleep(1.0)

    await asyncio.gather(chaos(), *(worker(i) for i in range(args.concurrency)))
    bar.close()
    return counts, restarted


REFUSED = ("http 429", "http 503")


def _lost(counts: collections.Counter) -> int:
    return sum(n for k, n in counts.items() if k not in ("ok", "cancelled", *REFUSED))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=120.0, help="per request, seconds")
    ap.add_argument("--seed", type=int, default=0)
    add_out_arg(ap)
    args = ap.parse_args()
    report = Report("soak", args.out_dir)
    with LocalCluster(prefill=2, decode=1, node_args=["--max-pages", "400"]) as cluster:
        rss_start = _rss(cluster)
        counts, restarted = asyncio.run(_traffic(cluster, args))
        rss_end = _rss(cluster)
        deadline = time.monotonic() + 100  # the quarantine (70 s by default) of the killed node's transfers
        while True:
            stats = {name: _stats(name, d.addr) for name, d in cluster.daemons.items() if name != "router"}
            leaked = {n: sum(p.total - p.free - p.quarantined - p.cached for p in s.pools) for n, s in stats.items()}
            held = {n: sum(p.quarantined for p in s.pools) for n, s in stats.items()}
            idle = all(s.waiting + s.prefilling + s.running + s.transferring == 0 for s in stats.values())
            if (idle and not any(held.values()) and not any(leaked.values())) or time.monotonic() > deadline:
                break
            time.sleep(1.0)
    rows = [[n, f"{rss_start[n]:.0f}", f"{rss_end[n]:.0f}", f"{rss_end[n] - rss_start[n]:+.0f}",
             leaked.get(n, "-"), held.get(n, "-")] for n in rss_start]
    total = sum(counts.values())
    notes = [f"requests: {total} in {args.minutes:g} min at concurrency {args.concurrency}; outcomes "
             f"{json.dumps(dict(sorted(counts.items())))}",
             f"lost requests: {_lost(counts)} (goal 0); refused with 429/503: {sum(counts[k] for k in REFUSED)}",
             f"prefill-1 killed and restarted at {restarted.get('at_s', '-')} s; exit codes {cluster.exit_codes}"]
    report.table("Soak: RSS (MiB) at start and end, pages leaked and still quarantined per daemon",
                 ["daemon", "RSS start", "RSS end", "change", "pages leaked", "pages quarantined"], rows,
                 notes=notes, extra={"outcomes": dict(counts), "lost": _lost(counts)})
    report.done()


if __name__ == "__main__":
    main()
