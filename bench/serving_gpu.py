"""1P1D on two GPUs against two colocated replicas: open-loop Poisson traffic, TTFT/ITL percentiles, goodput.

Writes a seeded 8B-shape model (random bf16 weights, Hugging Face layout, word-level tokenizer) to a temp
directory, then for each mode starts real daemons on loopback and replays the same arrival schedule at each
rate:
- 1p1d: a prefill node on GPU 0 and a decode node on GPU 1 (`--local-prefill-below 0`: every prompt is
  prefilled remotely); pages move over Mooncake TCP through host memory (no RDMA NIC on these machines), or
  GPU to GPU through CUDA IPC with `--transfer-protocol nvlink_intra`;
- colocated: two decode nodes, one per GPU, each prefilling its own requests; requests alternate between them.
Requests go straight to the decode nodes' gRPC `Generate` (no router). A request meets the SLO when its TTFT
<= --slo-ttft and its inter-token latency <= --slo-itl, read per token: 99% of the request's own gaps within
the bound, so a stall behind another prompt's prefill chunk counts (the ITL that the p50/p99 columns report);
goodput = SLO-meeting requests / arrival window. `TPOT gp` reads the bound as the request's mean gap (time per
output token) instead, which a few long stalls in an otherwise fast stream pass. The last lines name the rate
where colocated ITL p99 first breaks the bound and the 1p1d / colocated goodput ratio there.

    python bench/serving_gpu.py --json OUT.json                    # nvidia-h200-x2, about 8 minutes
    python bench/serving_gpu.py --device cpu --shape tiny --rates 2 --duration 5   # smoke run on a CPU box
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TINY = dict(arch="llama", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16,
            intermediate_size=128, vocab_size=512, context_length=4096)


def missing_pieces(device: str) -> list[str]:
    """What this machine lacks for the benchmark (empty: everything is there)."""
    out = []
    for mod in ("grpc", "safetensors", "tokenizers", "mooncake.engine"):
        try:
            __import__(mod)
        except Exception as exc:  # noqa: BLE001 - any import failure means the piece is unusable here
            out.append(f"{mod} ({type(exc).__name__}: {exc})")
    try:
        from pdpair.proto import pdpair_pb2_grpc  # noqa: F401 - generated code checks the grpcio version
    except Exception as exc:  # noqa: BLE001
        out.append(f"pdpair.proto ({type(exc).__name__}: {exc})")
    if device == "cuda":
        import torch

        if torch.cuda.device_count() < 2:
            out.append(f"two CUDA devices (found {torch.cuda.device_count()})")
    return out


def hf_config(shape: str) -> dict:
    """config.json for one of bench/engine_gpu.py's shapes (or the tiny smoke shape)."""
    if shape == "tiny":
        c = TINY
        return {"architectures": ["LlamaForCausalLM"], "hidden_size": c["hidden_size"],
                "intermediate_size": c["intermediate_size"], "num_hidden_layers": c["num_layers"],
                "num_attention_heads": c["num_heads"], "num_key_value_heads": c["num_kv_heads"],
                "head_dim": c["head_dim"], "vocab_size": c["vocab_size"], "max_position_embeddings": 16384,
                "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "bos_token_id": 1,
                "eos_token_id": 2}
    from engine_gpu import SHAPES

    m = SHAPES[shape]
    cfg = {"architectures": ["Qwen3ForCausalLM" if m.arch == "qwen3" else "LlamaForCausalLM"],
           "hidden_size": m.hidden_size, "intermediate_size": m.intermediate_size, "num_hidden_layers": m.num_layers,
           "num_attention_heads": m.num_heads, "num_key_value_heads": m.num_kv_heads, "head_dim": m.head_dim,
           "vocab_size": m.vocab_size, "max_position_embeddings": 16384, "rope_theta": m.rope_theta,
           "rms_norm_eps": m.rms_norm_eps, "tie_word_embeddings": m.tie_word_embeddings, "bos_token_id": 1,
           "eos_token_id": 2}
    if m.rope_scaling is not None:
        s = m.rope_scaling
        cfg["rope_scaling"] = {"rope_type": s.rope_type, "factor": s.factor, "low_freq_factor": s.low_freq_factor,
                               "high_freq_factor": s.high_freq_factor,
                               "original_max_position_embeddings": s.original_max_position_embeddings}
    return cfg


def write_model_dir(shape: str, root: Path, device: str, seed: int = 0) -> Path:
    """Seeded random bf16 weights (std 0.02, norms near 1) in safetensors shards, config.json, tokenizer.json."""
    import tokenizers
    import torch
    from safetensors.torch import save_file

    cfg = hf_config(shape)
    (root / "config.json").write_text(json.dumps(cfg))
    h, inter, d = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    q, kv, vocab = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d, cfg["vocab_size"]
    gen = torch.Generator(device=device).manual_seed(seed)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32

    def rand(*shape_, norm=False):
        x = torch.randn(shape_, generator=gen, device=device, dtype=torch.float32)
        return (1 + 0.1 * x if norm else 0.02 * x).to(dtype).cpu()

    shard, n = {"model.embed_tokens.weight": rand(vocab, h), "model.norm.weight": rand(h, norm=True),
                "lm_head.weight": rand(vocab, h)}, 0
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shard |= {p + "self_attn.q_proj.weight": rand(q, h), p + "self_attn.k_proj.weight": rand(kv, h),
                  p + "self_attn.v_proj.weight": rand(kv, h), p + "self_attn.o_proj.weight": rand(h, q),
                  p + "mlp.gate_proj.weight": rand(inter, h), p + "mlp.up_proj.weight": rand(inter, h),
                  p + "mlp.down_proj.weight": rand(h, inter), p + "input_layernorm.weight": rand(h, norm=True),
                  p + "post_attention_layernorm.weight": rand(h, norm=True)}
        if cfg["architectures"][0].startswith("Qwen3"):
            shard |= {p + "self_attn.q_norm.weight": rand(d, norm=True), p + "self_attn.k_norm.weight": rand(d, norm=True)}
        if (i + 1) % 8 == 0 or i + 1 == cfg["num_hidden_layers"]:  # ~4 GB shards bound the host memory
            save_file(shard, str(root / f"model-{n:05d}.safetensors"))
            shard, n = {}, n + 1
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({f"<t{i}>": i for i in range(vocab)}, unk_token="<t0>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(root / "tokenizer.json"))
    if device == "cuda":
        torch.cuda.empty_cache()  # the daemons get the GPUs' memory
    return root


@dataclass
class Result:
    arrival: float  # seconds after the schedule's start
    prompt: int
    ttft: float
    itl: list[float]
    tokens: int
    transfer_s: float
    error: str = ""
    transfer_bytes: int = 0
    transfer_entries: int = 0
    first_chunk_s: float = 0.0  # 1p1d: the prefill node's own view (from the request's arrival there)
    prefill_node_s: float = 0.0


def schedule(rate: float, duration: float, args, seed: int) -> list[tuple[float, int, int]]:
    """(arrival time, prompt length, output length) of an open-loop Poisson process, seeded."""
    rng = random.Random(seed)
    out, t = [], rng.expovariate(rate)
    while t < duration:
        out.append((t, rng.randint(args.prompt_min, args.prompt_max), rng.randint(args.output_min, args.output_max)))
        t += rng.expovariate(rate)
    return out


async def one(stub, pb, arrival: float, n_prompt: int, n_out: int, vocab: int, prefill_addr: str) -> Result:
    ids = [3 + (7919 * i + n_prompt) % (vocab - 3) for i in range(n_prompt)]
    sp = pb.SamplingParams(max_new_tokens=n_out, temperature=0.0, ignore_eos=True)
    req = pb.GenerateRequest(rid=f"sg-{uuid.uuid4().hex[:12]}", token_ids=ids, sampling=sp, prefill_addr=prefill_addr)
    start = time.perf_counter()
    ttft, last, itl, tokens, transfer_s, xfer, first = None, None, [], 0, 0.0, None, None
    try:
        async for chunk in stub.Generate(req, timeout=600):
            now = time.perf_counter()
            k = len(chunk.token_ids)
            if ttft is None:
                ttft, transfer_s, gaps, xfer, first = now - start, chunk.transfer.seconds, k - 1, chunk.transfer, chunk
            else:
                gaps = k
            if last is not None and gaps:
                itl.extend([(now - last) / gaps] * gaps)
            last, tokens = now, tokens + k
    except Exception as exc:  # noqa: BLE001 - a failed request counts against goodput and is reported
        return Result(arrival, n_prompt, float("inf"), [], tokens, 0.0, f"{type(exc).__name__}: {exc}"[:200])
    return Result(arrival, n_prompt, ttft if ttft is not None else float("inf"), itl, tokens, transfer_s,
                  transfer_bytes=xfer.bytes if xfer else 0, transfer_entries=xfer.entries if xfer else 0,
                  first_chunk_s=first.prefill_first_chunk_seconds if first else 0.0,
                  prefill_node_s=first.prefill_node_seconds if first else 0.0)


async def run_rate(stubs, pb, targets, sched, vocab, limit_s: float) -> list[Result]:
    """Fire `sched` open-loop; requests still running `limit_s` after the start are cancelled and count as
    failed ("unfinished"), so an overloaded rate cannot stall the run."""
    t0 = time.perf_counter()

    async def fire(i, arrival, n_prompt, n_out):
        await asyncio.sleep(max(0.0, t0 + arrival - time.perf_counter()))
        return await one(stubs[i % len(stubs)], pb, arrival, n_prompt, n_out, vocab, targets[i % len(stubs)])

    tasks = [asyncio.create_task(fire(i, *s)) for i, s in enumerate(sched)]
    if tasks:
        await asyncio.wait(tasks, timeout=limit_s)
    out = []
    for task, (arrival, n_prompt, _) in zip(tasks, sched, strict=True):
        if task.done():
            out.append(task.result())
        else:
            task.cancel()
            out.append(Result(arrival, n_prompt, float("inf"), [], 0, 0.0, f"unfinished after {limit_s:.0f} s"))
    await asyncio.gather(*tasks, return_exceptions=True)
    return out


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def summarize(mode: str, rate: float, res: list[Result], duration: float, args) -> dict:
    ok = [r for r in res if not r.error]
    mean_itl = [sum(r.itl) / len(r.itl) for r in ok if r.itl]
    # the ITL bound per token: 99% of the request's own gaps within it (a stall counts)
    good = [r for r in ok if r.ttft <= args.slo_ttft and (not r.itl or pct(r.itl, 99) <= args.slo_itl)]
    # the bound on the mean gap (TPOT): a request's few long stalls pass when its other gaps are short
    good_tpot = [r for r in ok if r.ttft <= args.slo_ttft and (not r.itl or sum(r.itl) / len(r.itl) <= args.slo_itl)]
    long_ = [r for r in ok if r.prompt >= 0.8 * args.prompt_max and r.ttft > 0]
    gaps = [g for r in ok for g in r.itl]
    return {"mode": mode, "rate": rate, "requests": len(res), "errors": len(res) - len(ok),
            "ttft_p50_ms": 1e3 * pct([r.ttft for r in ok], 50), "ttft_p99_ms": 1e3 * pct([r.ttft for r in ok], 99),
            "itl_p50_ms": 1e3 * pct(gaps, 50), "itl_p99_ms": 1e3 * pct(gaps, 99),
            "req_itl_p99_ms": 1e3 * pct(mean_itl, 99), "goodput_rps": len(good) / duration,
            "goodput_tpot_rps": len(good_tpot) / duration,
            "transfer_share_long": (sum(r.transfer_s / r.ttft for r in long_) / len(long_)) if long_ else None,
            "transfer_gbps_long": (sum(r.transfer_bytes for r in long_) / 1e9 / sum(r.transfer_s for r in long_))
            if long_ and sum(r.transfer_s for r in long_) > 0 else None,
            "transfer_entries_long": (sum(r.transfer_entries for r in long_) / len(long_)) if long_ else None,
            # 1p1d: where the TTFT goes - the prefill node's wait + first chunk, its whole part, and the rest
            # (decode-side preallocation, the RPC, activation, the answer's way back)
            "first_chunk_p50_ms": 1e3 * pct([r.first_chunk_s for r in ok if r.prefill_node_s], 50),
            "prefill_node_p50_ms": 1e3 * pct([r.prefill_node_s for r in ok if r.prefill_node_s], 50),
            "outside_p50_ms": 1e3 * pct([r.ttft - r.prefill_node_s for r in ok if r.prefill_node_s], 50),
            "first_error": next((r.error for r in res if r.error), "")}


def triton_cache_entries() -> int:
    """Kernels in Triton's on-disk cache (shared by the daemons this bench starts): growth during a rate means
    a daemon compiled, and stalled, while serving it."""
    import os

    root = Path(os.environ.get("TRITON_CACHE_DIR", Path.home() / ".triton" / "cache"))
    return sum(1 for _ in root.glob("*/*.json")) if root.is_dir() else 0


def clusters(mode: str, model_dir: Path, args):
    """The daemons of `mode` as LocalClusters (one per GPU): (clusters, decode stubs' targets)."""
    from pdpair.router.local_cluster import LocalCluster

    common = ["--model", str(model_dir), "--device", args.device, "--page-size", "16", "--chunk-size",
              str(args.chunk_size), "--log-level", "WARNING"]
    common += ["--mem-fraction", str(args.mem_fraction)] if args.device == "cuda" else ["--max-pages", "4096"]
    common += ["--transfer-protocol", args.transfer_protocol]
    # nvlink_intra opens the peer's memory through CUDA IPC: every node sees both GPUs, its own listed first
    order = (lambda i: f"{i},{1 - i}") if args.transfer_protocol == "nvlink_intra" else str
    gpu = (lambda i: {"CUDA_VISIBLE_DEVICES": order(i)}) if args.device == "cuda" else (lambda i: {})
    if mode == "1p1d":
        p = LocalCluster(prefill=1, decode=0, router=False, node_args=common, env=gpu(0)).start()
        try:
            d = LocalCluster(prefill=0, decode=1, router=False, node_args=common,
                             decode_args=["--local-prefill-below", "0"], env=gpu(1)).start()
        except BaseException:
            p.stop()
            raise
        return [p, d], [(d.decode_addrs[0], p.prefill_addrs[0])]
    a = LocalCluster(prefill=0, decode=1, router=False, node_args=common, env=gpu(0)).start()
    try:
        b = LocalCluster(prefill=0, decode=1, router=False, node_args=common, env=gpu(1)).start()
    except BaseException:
        a.stop()
        raise
    return [a, b], [(a.decode_addrs[0], ""), (b.decode_addrs[0], "")]


async def run_mode(mode: str, model_dir: Path, vocab: int, args, deadline: float) -> list[dict]:
    import grpc
    from pdpair.proto import pdpair_pb2 as pb
    from pdpair.proto import pdpair_pb2_grpc as pb_grpc

    t_start = time.perf_counter()
    cs, ends = clusters(mode, model_dir, args)
    rows = []
    try:
        print(f"{mode}: daemons up in {time.perf_counter() - t_start:.0f} s", flush=True)
        channels = [grpc.aio.insecure_channel(addr) for addr, _ in ends]
        stubs = [pb_grpc.DecodeNodeStub(c) for c in channels]
        targets = [prefill for _, prefill in ends]
        for i in range(len(stubs)):  # warm up: compile kernels (one chunk, a chunk over a prefix), first transfer
            for n in (args.prompt_min, args.prompt_max):
                await one(stubs[i], pb, 0.0, n, 8, vocab, targets[i])
            step = max(1, (args.prompt_max - args.prompt_min) // 7)  # then a concurrent batch across the range
            await asyncio.gather(*(one(stubs[i], pb, 0.0, n, 16, vocab, targets[i])
                                   for n in range(args.prompt_min, args.prompt_max + 1, step)))
        if args.warmup_seconds > 0:  # open-loop traffic, discarded: batch shapes the sequential warm-up missed
            await run_rate(stubs, pb, targets, schedule(max(args.rates), args.warmup_seconds, args, seed=99), vocab,
                           args.warmup_seconds + args.drain)
        print(f"{mode}: {triton_cache_entries()} compiled Triton kernels cached after the warm-up", flush=True)
        for k, rate in enumerate(args.rates):
            if time.perf_counter() + args.duration + args.drain > deadline:
                print(f"{mode}: time budget reached, rates from {rate} on skipped", flush=True)
                break
            res = await run_rate(stubs, pb, targets, schedule(rate, args.duration, args, seed=k), vocab,
                                 args.duration + args.drain)
            row = summarize(mode, rate, res, args.duration, args)
            rows.append(row)
            print_row(row)
            print(f"{mode}: {triton_cache_entries()} compiled Triton kernels cached", flush=True)
        for c in channels:
            await c.close()
    finally:
        for c in cs:
            c.stop()
    return rows


def print_row(r: dict) -> None:
    share = "-" if r["transfer_share_long"] is None else f"{r['transfer_share_long']:.0%}"
    gbps = "-" if r.get("transfer_gbps_long") is None else f"{r['transfer_gbps_long']:.1f}"
    ents = "-" if not r.get("transfer_entries_long") else f"{r['transfer_entries_long']:.0f}"
    print(f"| {r['mode']:<9} | {r['rate']:5.2f} | {r['requests']:4d} | {r['errors']:3d} | {r['ttft_p50_ms']:8.0f} | "
          f"{r['ttft_p99_ms']:8.0f} | {r['itl_p50_ms']:7.1f} | {r['itl_p99_ms']:7.1f} | {r['goodput_rps']:6.2f} | "
          f"{r['goodput_tpot_rps']:7.2f} | "
          f"{share:>6} | {gbps:>6} | {ents:>5} | {_ms(r, 'first_chunk_p50_ms')} | {_ms(r, 'prefill_node_p50_ms')} | "
          f"{_ms(r, 'outside_p50_ms')} | {r['first_error'][:60]}", flush=True)


def verdict(rows: list[dict], rates: list[float], slo_itl: float) -> list[str]:
    """The goodput ratios per rate, and the issue's reading: at the lowest rate where colocated ITL p99 breaks
    the bound, 1p1d / colocated goodput against the 1.3x goal."""
    by = {(r["mode"], r["rate"]): r for r in rows}
    out = []
    for rate in rates:
        a, b = by.get(("1p1d", rate)), by.get(("colocated", rate))
        for key, what in (("goodput_rps", "goodput"), ("goodput_tpot_rps", "TPOT goodput")):
            if a and b:
                ratio = f"{a[key] / b[key]:.2f}x" if b[key] > 0 else "colocated 0"
                out.append(f"rate {rate}: {what} 1p1d {a[key]:.2f} / colocated {b[key]:.2f} req/s = {ratio}")
    broken = [r for r in rates if ("colocated", r) in by and by[("colocated", r)]["itl_p99_ms"] > 1e3 * slo_itl]
    if not broken:
        out.append(f"colocated ITL p99 stays within {slo_itl * 1e3:.0f} ms at every rate run: run higher rates")
    elif ("1p1d", broken[0]) in by:
        a, b = by[("1p1d", broken[0])], by[("colocated", broken[0])]
        ratio = a["goodput_rps"] / b["goodput_rps"] if b["goodput_rps"] > 0 else float("inf")
        out.append(f"colocated ITL p99 first breaks {slo_itl * 1e3:.0f} ms at {broken[0]} req/s "
                   f"({b['itl_p99_ms']:.0f} ms): goodput 1p1d / colocated = {ratio:.2f}x (goal >= 1.3x)")
    return out


def _ms(r: dict, key: str) -> str:
    v = r.get(key)
    return "     -" if v is None or v != v else f"{v:6.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="llama3-8b", choices=["llama3-8b", "qwen3-8b", "smollm2", "tiny"],
                    help="model shape (seeded random weights)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a smoke run of the harness")
    ap.add_argument("--rates", type=float, nargs="+", default=[1.0, 2.0, 3.0, 4.0], help="arrival rates, requests/s")
    ap.add_argument("--duration", type=float, default=15.0, help="seconds of arrivals per rate")
    ap.add_argument("--drain", type=float, default=15.0,
                    help="seconds after the last arrival before unfinished requests are cancelled (count as failed)")
    ap.add_argument("--prompt-min", type=int, default=2048, help="shortest prompt (tokens)")
    ap.add_argument("--prompt-max", type=int, default=8192, help="longest prompt (tokens)")
    ap.add_argument("--output-min", type=int, default=128, help="fewest output tokens")
    ap.add_argument("--output-max", type=int, default=512, help="most output tokens")
    ap.add_argument("--warmup-seconds", type=float, default=6.0,
                    help="seconds of discarded open-loop traffic at the highest rate before the measured rates")
    ap.add_argument("--slo-ttft", type=float, default=1.0, help="TTFT bound of the SLO, seconds")
    ap.add_argument("--slo-itl", type=float, default=0.05, help="inter-token latency bound of the SLO, seconds (99%% of a request's gaps)")
    ap.add_argument("--chunk-size", type=int, default=4096, help="chunked-prefill budget of every node")
    ap.add_argument("--mem-fraction", type=float, default=0.8, help="share of free GPU memory for each KV pool")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for the whole run; later rates are skipped")
    ap.add_argument("--modes", nargs="+", default=["1p1d", "colocated"], choices=["1p1d", "colocated"])
    ap.add_argument("--transfer-protocol", default="tcp", choices=["tcp", "nvlink_intra"],
                    help="how 1p1d pages move: tcp (through host memory) or nvlink_intra (GPU to GPU, CUDA IPC)")
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args()
    deadline = time.perf_counter() + args.budget
    missing = missing_pieces(args.device)
    if missing:
        print("serving_gpu: skipped, missing: " + "; ".join(missing))
        if args.json:
            args.json.write_text(json.dumps({"skipped": missing}))
        return
    t0 = time.perf_counter()
    root = write_model_dir(args.shape, Path(tempfile.mkdtemp(prefix="pdpair-seeded-")), args.device)
    vocab = hf_config(args.shape)["vocab_size"]
    print(f"model {args.shape} written to {root} in {time.perf_counter() - t0:.0f} s", flush=True)
    print("| mode      |  rate | reqs | err | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 | goodput | TPOT gp | xfer%  | xGB/s  | runs  | 1st chunk | P node | outside | error")
    rows = []
    for mode in args.modes:
        try:
            rows += asyncio.run(run_mode(mode, root, vocab, args, deadline))
        except Exception as exc:  # noqa: BLE001 - one mode failing still reports the other
            print(f"{mode}: failed: {type(exc).__name__}: {str(exc)[-1500:]}", flush=True)
    for line in verdict(rows, args.rates, args.slo_itl):
        print(line, flush=True)
    print(f"SLO: TTFT <= {args.slo_ttft:.2f} s and 99% of a request's inter-token gaps <= {args.slo_itl * 1e3:.0f} ms "
          f"(TPOT gp: its mean gap within it instead); xfer% = KV transfer "
          f"seconds / TTFT for prompts >= {int(0.8 * args.prompt_max)} tokens; pages over Mooncake "
          f"{args.transfer_protocol} (tcp: through host memory; no RDMA NIC); xGB/s = their bytes / seconds inside the "
          "transfer engine, runs = contiguous runs (entries) per request")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
