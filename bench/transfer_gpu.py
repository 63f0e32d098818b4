"""GPU-to-GPU transfer benchmark on one host: GPU 0's pool written into GPU 1's over Mooncake, per transport.

Two processes (source on cuda:0, destination on cuda:1), each with a `MooncakeEngine` and one registered
buffer. The source writes `--mib` MiB as entries of each size in `--entry-kib` (an 8B-shape KV page is 2 MiB;
coalesced runs are larger), checks the bytes landed, and reports GB/s beside the reference measured in the same
run: a plain peer-to-peer `copy_` between the two GPUs. One row per (transport, entry size).

    python bench/transfer_gpu.py [--protocols tcp,nvlink_intra] [--mib 1024] [--entry-kib 256,2048,65536]

A transport that fails to start or to write prints its error in its row instead of a figure.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
import traceback

import numpy as np
from _report import add_out_arg


def _destination(protocol: str, nbytes: int, conn) -> None:
    import torch
    from pdpair.transfer.layout import MemoryRegion
    from pdpair.transfer.mooncake_engine import MooncakeEngine

    try:
        torch.cuda.set_device(1)
        buf = torch.zeros(nbytes, dtype=torch.uint8, device="cuda:1")
        eng = MooncakeEngine(protocol=protocol)
        eng.register([MemoryRegion("kv", buf.data_ptr(), nbytes, 1, "uint8")])
        conn.send(("ready", eng.session_id, buf.data_ptr()))
        while conn.recv() != "stop":  # "sum": the checksum of what landed, then zero for the next row
            torch.cuda.synchronize()
            conn.send(int(buf.view(torch.int64).sum().item()))  # wraps alike on both sides
            buf.zero_()
            torch.cuda.synchronize()
        eng.close()
    except Exception:  # noqa: BLE001 - a broken transport is a row, not a crash
        conn.send(("error", traceback.format_exc(limit=3), 0))


def _row(protocol: str, mib: int, entry_kib: list[int], repeats: int) -> list[dict]:
    import torch
    from pdpair.transfer.layout import MemoryRegion
    from pdpair.transfer.mooncake_engine import MooncakeEngine
    from pdpair.transfer.plan import TransferPlan

    nbytes = mib << 20
    ctx = mp.get_context("spawn")
    here, there = ctx.Pipe()
    proc = ctx.Process(target=_destination, args=(protocol, nbytes, there), daemon=True)
    proc.start()
    rows = []
    try:
        status, session, dst_base = here.recv()
        if status != "ready":
            return [{"protocol": protocol, "error": session.strip().splitlines()[-1]}]
        torch.cuda.set_device(0)
        src = torch.empty(nbytes // 4, dtype=torch.int32, device="cuda:0").random_()
        want = int(src.view(torch.int64).sum().item())
        eng = MooncakeEngine(protocol=protocol)
        eng.register([MemoryRegion("kv", src.data_ptr(), nbytes, 1, "uint8")])
        torch.cuda.synchronize()
        for kib in entry_kib:
            size = kib << 10
            offs = np.arange(0, nbytes, size, dtype=np.uint64)
            n = len(offs)
            lengths = np.minimum(np.uint64(size), np.uint64(nbytes) - offs)
            plan = TransferPlan(np.uint64(src.data_ptr()) + offs, np.uint64(dst_base) + offs, lengths,
                                np.ones(n, dtype=np.int64))
            times, ok, err = [], True, ""
            for _ in range(repeats):
                res = eng.write(session, plan)
                here.send("sum")
                landed = here.recv()
                if not res.ok or landed != want:
                    ok, err = False, res.error or f"checksum {landed} != {want}"
                    break
                times.append(res.seconds)
            gbps = nbytes / min(times) / 1e9 if ok else None
            rows.append({"protocol": protocol, "entry_kib": kib, "entries": n, "gbps": gbps, "error": err})
        here.send("stop")
        eng.close()
    except Exception:  # noqa: BLE001
        rows.append({"protocol": protocol, "error": traceback.format_exc(limit=3).strip().splitlines()[-1]})
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
    return rows


def _peer_copy_gbps(mib: int, repeats: int) -> float:
    import torch

    a = torch.empty(mib << 20, dtype=torch.uint8, device="cuda:0")
    b = torch.empty(mib << 20, dtype=torch.uint8, device="cuda:1")
    best = float("inf")
    for _ in range(repeats):
        torch.cuda.synchronize(0)
        torch.cuda.synchronize(1)
        t = time.perf_counter()
        b.copy_(a)
        torch.cuda.synchronize(1)
        best = min(best, time.perf_counter() - t)
    del a, b
    torch.cuda.empty_cache()  # the rows' processes need the memory
    return (mib << 20) / best / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocols", default="tcp,nvlink_intra")
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--entry-kib", default="256,2048,65536")
    ap.add_argument("--repeats", type=int, default=3)
    add_out_arg(ap)
    args = ap.parse_args()
    kibs = [int(k) for k in args.entry_kib.split(",")]
    ref = _peer_copy_gbps(min(args.mib, 4096), args.repeats)
    lines = [f"# GPU 0 -> GPU 1, {args.mib} MiB per write; reference: peer copy_ (up to 4 GiB) {ref:.1f} GB/s", "",
             "| transport | entry | entries | GB/s | % of peer copy | note |", "| --- | --- | --- | --- | --- | --- |"]
    for proto in args.protocols.split(","):
        for r in _row(proto, args.mib, kibs, args.repeats):
            if r.get("gbps") is None:
                lines.append(f"| {proto} | {r.get('entry_kib', '-')} KiB | {r.get('entries', '-')} | - | - | "
                             f"{r['error'][:160]} |")
            else:
                lines.append(f"| {proto} | {r['entry_kib']} KiB | {r['entries']} | {r['gbps']:.2f} | "
                             f"{100 * r['gbps'] / ref:.1f}% | |")
    text = "\n".join(lines)
    print(text)
    out = os.environ.get("OUT") or str(args.out_dir)
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "transfer_gpu.md"), "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
