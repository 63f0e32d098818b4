"""Prefix-cache benchmark: a multi-turn chat workload through a real prefill node and decode node, the prefix
cache off and then on. Every conversation starts with the same system prompt; each turn sends the whole
history (system prompt, earlier user messages and answers) plus a new user message. Prints TTFT p50/p99,
prefill tokens computed (prompt tokens minus the prefill node's cache hits) and pages transferred per turn
beside the goal (after the first turn: at most the new tokens' pages + 1); writes bench/out/prefix.md/.json.

    python bench/prefix.py                                   # 32 conversations x 6 turns, 1024-token system prompt
    python bench/prefix.py --conversations 4 --turns 4 --system-tokens 512   # a CPU-sized run
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
from _report import Report, add_out_arg, progress
from pdpair.proto import pdpair_pb2 as pb
from pdpair.proto import pdpair_pb2_grpc as pb_grpc
from pdpair.router.local_cluster import LocalCluster


def tokens(n: int, salt: int) -> list[int]:
    """n ordinary token ids, deterministic in salt."""
    return [1000 + (7 * i + 131 * salt) % 20000 for i in range(n)]


@dataclass
class Turn:
    conversation: int
    turn: int
    prompt_tokens: int
    new_tokens: int  # tokens this turn adds after the previous turn's prompt and answer
    ttft: float
    pages: int  # items the prefill node wrote into the decode node


@dataclass
class Run:
    mode: str
    turns: list[Turn] = field(default_factory=list)
    computed: int = 0  # prompt tokens the prefill node computed
    prompt_total: int = 0


def one(stub, ids: list[int], max_tokens: int, prefill_addr: str) -> tuple[float, list[int], int]:
    req = pb.GenerateRequest(rid=f"b-{uuid.uuid4().hex[:10]}", token_ids=ids, prefill_addr=prefill_addr,
                             sampling=pb.SamplingParams(max_new_tokens=max_tokens, ignore_eos=True))
    t0 = time.perf_counter()
    ttft, out, pages = None, [], 0
    for chunk in stub.Generate(req, timeout=3600):
        if ttft is None:
            ttft, pages = time.perf_counter() - t0, chunk.transfer.items
        out.extend(chunk.token_ids)
    return ttft, out, pages


def conversation(stub, args, c: int, prefill_addr: str, bar) -> list[Turn]:
    history, done = tokens(args.system_tokens, 0), []
    prev = 0
    for t in range(args.turns):
        history = history + tokens(args.user_tokens, 1 + c * args.turns + t)
        ttft, answer, pages = one(stub, history, args.answer_tokens, prefill_addr)
        done.append(Turn(c, t, len(history), len(history) - prev, ttft, pages))
        history = history + answer
        prev = len(history)
        bar.update(1)
    return done


def measure(mode: str, args) -> Run:
    node_args = ["--page-size", str(args.page_size), "--chunk-size", str(args.chunk_size), "--max-pages",
                 str(args.max_pages), "--log-level", "WARNING"]
    if mode == "cache off":
        node_args.append("--disable-prefix-cache")
    run = Run(mode)
    env = {"OMP_NUM_THREADS": str(args.threads)}
    with LocalCluster(prefill=1, decode=1, router=False, node_args=node_args, env=env,
                      decode_args=["--local-prefill-below", "0"]) as cluster:
        channel = grpc.insecure_channel(cluster.decode_addrs[0])
        stub, addr = pb_grpc.DecodeNodeStub(channel), cluster.prefill_addrs[0]
        pstub = pb_grpc.PrefillNodeStub(grpc.insecure_channel(addr))
        one(stub, tokens(40, 99999), 2, addr)  # warm up: handshake, first Mooncake write
        hits0 = pstub.Stats(pb.StatsRequest()).prefix_cache.hit_tokens
        with progress(total=args.conversations * args.turns, unit="turn", desc=mode) as bar, \
                ThreadPoolExecutor(args.concurrency) as pool:
            for turns in pool.map(lambda c: conversation(stub, args, c, addr, bar), range(args.conversations)):
                run.turns += turns
        run.prompt_total = sum(t.prompt_tokens for t in run.turns)
        run.computed = run.prompt_total - (pstub.Stats(pb.StatsRequest()).prefix_cache.hit_tokens - hits0)
        channel.close()
    return run


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conversations", type=int, default=32, help="conversations (default: 32)")
    ap.add_argument("--turns", type=int, default=6, help="turns per conversation (default: 6)")
    ap.add_argument("--system-tokens", type=int, default=1024, help="shared system prompt length (default: 1024)")
    ap.add_argument("--user-tokens", type=int, default=48, help="tokens of each user message (default: 48)")
    ap.add_argument("--answer-tokens", type=int, default=16, help="tokens of each answer (default: 16)")
    ap.add_argument("--concurrency", type=int, default=4, help="conversations in flight at once (default: 4)")
    ap.add_argument("--page-size", type=int, default=16, help="tokens per page (default: 16)")
    ap.add_argument("--chunk-size", type=int, default=512, help="chunked-prefill budget (default: 512)")
    ap.add_argument("--max-pages", type=int, default=4096, help="pool pages per node (default: 4096)")
    ap.add_argument("--threads", type=int, default=1, help="OMP threads per node (default: 1)")
    add_out_arg(ap)
    args = ap.parse_args()
    runs = [measure(mode, args) for mode in ("cache off", "cache on")]
    ps = args.page_size
    goal = -(-args.user_tokens // ps) + 1
    rows = []
    for r in runs:
        ttft = [t.ttft for t in r.turns]
        later = [t for t in r.turns if t.turn > 0]
        per_turn = [statistics.mean(t.pages for t in r.turns if t.turn == k) for k in range(args.turns)]
        rows.append([r.mode, pct(ttft, 0.5) * 1e3, pct(ttft, 0.99) * 1e3, r.computed, r.prompt_total,
                     " / ".join(f"{p:.1f}" for p in per_turn), max((t.pages for t in later), default=0), goal])
    speedup = pct([t.ttft for t in runs[0].turns], 0.5) / pct([t.ttft for t in runs[1].turns], 0.5)
    cols = ["mode", "TTFT p50 ms", "TTFT p99 ms", "prefill tokens computed", "prompt tokens",
            "pages sent per turn (mean, turn 1 / 2 / ...)", "max pages sent, turns 2+", "goal: new pages + 1"]
    notes = [f"{args.conversations} conversations x {args.turns} turns, {args.system_tokens}-token system prompt, "
             f"{args.user_tokens}-token user messages, {args.answer_tokens}-token answers, concurrency "
             f"{args.concurrency}, page {ps}, chunk {args.chunk_size}.",
             f"TTFT p50 speedup with the cache: {speedup:.1f}x (goal >= 3x); prefill hit rate "
             f"{1 - runs[1].computed / runs[1].prompt_total:.0%} of prompt tokens."]
    report = Report("prefix", args.out_dir)
    report.table("Prefix cache: multi-turn chat, cache off vs on", cols, rows, notes)
    report.done()


if __name__ == "__main__":
    main()
