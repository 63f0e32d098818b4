"""Transfer benchmark: one request's KV between two processes over Mooncake (loopback TCP).

A 2,048-token request of the embedded model's KV shape (SmolLM2-135M: 30 layers,
3 KV heads, head dim 64, page size 16) in fp32 and bf16, at 0%, 10% and 50% page
fragmentation, sent (a) coalesced into contiguous runs, (b) one entry per page per
layer (layer-major, no coalescing); references measured in the same run: (c) the
same bytes as one Mooncake entry, (d) an in-process memcpy. Medians over repeats,
rows in a fresh random order each round; "% of (c)" is the median ratio against a
(c) measured right beside the row, so that background load hits both alike.

    python bench/transfer.py [--repeats 11] [--tokens 2048]     # quick look: --repeats 1 --tokens 256

Writes bench/out/transfer.md and .json (the table) and transfer_gbps.png (GB/s against fragmentation).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
from _report import Panel, Report, Series, add_out_arg, progress
from pdpair.transfer import TransferPlan, build_plan
from pdpair.transfer.loopback import LoopbackPeer

LAYERS, KV_HEADS, HEAD_DIM, PAGE = 30, 3, 64, 16
DTYPES = {"fp32": 4, "bf16": 2}
FRAGMENTATION = (0.0, 0.10, 0.50)


def page_ids(rng: np.random.Generator, n: int, breaks: np.ndarray, max_gap: int) -> np.ndarray:
    """``n`` increasing page ids with a gap (1..max_gap pages) after each boundary in ``breaks``."""
    step = np.ones(n, dtype=np.int64)
    step[0] = 0
    step[breaks + 1] += rng.integers(1, max_gap + 1, breaks.size)
    return np.cumsum(step).astype(np.int32)


def per_layer_plan(src_base: int, dst_base: int, src: np.ndarray, dst: np.ndarray, elem: int) -> TransferPlan:
    """One entry per (layer, page), layer-major: what a layer-major pool without coalescing sends."""
    layer_bytes = 2 * PAGE * KV_HEADS * HEAD_DIM * elem
    page_bytes = LAYERS * layer_bytes
    layer = np.repeat(np.arange(LAYERS, dtype=np.uint64), src.size)
    s = np.tile(src.astype(np.uint64), LAYERS)
    d = np.tile(dst.astype(np.uint64), LAYERS)
    n = layer.size
    return TransferPlan(
        np.uint64(src_base) + s * np.uint64(page_bytes) + layer * np.uint64(layer_bytes),
        np.uint64(dst_base) + d * np.uint64(page_bytes) + layer * np.uint64(layer_bytes),
        np.full(n, layer_bytes, dtype=np.uint64),
        np.ones(n, dtype=np.int64),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--tokens", type=int, default=2048)
    add_out_arg(ap)
    args = ap.parse_args()
    report = Report("transfer", args.out_dir)
    load0 = os.getloadavg()[0]
    n_pages = -(-args.tokens // PAGE)
    pool = 2 * n_pages + 8  # room for 50% fragmentation gaps
    page_bytes = {k: LAYERS * 2 * PAGE * KV_HEADS * HEAD_DIM * e for k, e in DTYPES.items()}
    specs = [(k, page_bytes[k], pool, k) for k in DTYPES]
    prefill, decode = LoopbackPeer("prefill", specs), LoopbackPeer("decode", specs)
    try:
        rng = np.random.default_rng(0)
        for k in DTYPES:
            prefill.fill(k, rng.integers(0, 256, (pool, page_bytes[k]), dtype=np.uint8))
        rows: list[tuple[str, str, float, object]] = []  # (dtype, label, frag, plan or memcpy pair)
        for k, elem in DTYPES.items():
            s_reg, d_reg = prefill.layout.region(k), decode.layout.region(k)
            nbytes = n_pages * page_bytes[k]
            for frag in FRAGMENTATION:
                breaks = np.sort(rng.choice(n_pages - 1, size=round(frag * (n_pages - 1)), replace=False))
                src, dst = page_ids(rng, n_pages, breaks, 1), page_ids(rng, n_pages, breaks, 3)
                coalesced = build_plan(prefill.layout, decode.layout, {k: (src, dst)})
                assert len(coalesced) == breaks.size + 1  # one entry per run, whatever the layer count
                rows.append((k, "(a) coalesced", frag, coalesced))
                rows.append(
                    (
                        k,
                        "(b) page x layer",
                        frag,
                        per_layer_plan(s_reg.base_ptr, d_reg.base_ptr, src, dst, elem),
                    )
                )
            single = TransferPlan(
                *(
                    np.array([v], dtype=t)
                    for v, t in (
                        (s_reg.base_ptr, np.uint64),
                        (d_reg.base_ptr, np.uint64),
                        (nbytes, np.uint64),
                        (n_pages, np.int64),
                    )
                )
            )
            rows.append((k, "(c) one entry", 0.0, single))
            src_buf = prefill.read(k)[:n_pages]
            rows.append((k, "(d) memcpy", 0.0, (src_buf, np.empty_like(src_buf))))

        target = decode.layout.session_id

        def measure(i: int, check: bool = False) -> float:
            k, _, _, work = rows[i]
            if not isinstance(work, TransferPlan):
                t0 = time.perf_counter()
                np.copyto(work[1], work[0])
                return time.perf_counter() - t0
            res = prefill.write(target, work)
            assert res.ok, res.error
            if check:
                _check_landed(work, prefill, decode, k)
            return res.seconds

        ref_row = {k: i for i, (k, label, _, _) in enumerate(rows) if label.startswith("(c)")}
        for i in range(len(rows)):  # warm-up: connections, pages; check that every plan's bytes land
            measure(i, check=True)
        times: list[list[float]] = [[] for _ in rows]
        ratios: list[list[float]] = [[] for _ in rows]  # (c) time / row time, (c) measured right beside it
        for _ in progress(range(args.repeats), desc="transfer rounds", unit="round"):
            for i in rng.permutation(len(rows)):  # a fresh order each round
                c = ref_row[rows[i][0]]
                if rng.random() < 0.5:
                    t, tc = measure(i), measure(c)
                else:
                    tc, t = measure(c), measure(i)
                times[i].append(t)
                ratios[i].append(tc / t)

        title = (f"transfer: {args.tokens}-token request, {LAYERS} layers x {KV_HEADS} KV heads x head dim "
                 f"{HEAD_DIM}, page {PAGE}; {n_pages} pages; Mooncake TCP loopback between two processes; "
                 f"median of {args.repeats}")
        refs = set(ref_row.values())
        table = []
        for i, ((k, label, frag, work), t, r) in enumerate(zip(rows, times, ratios, strict=True)):
            med = statistics.median(t)
            nbytes = work.nbytes if isinstance(work, TransferPlan) else work[0].nbytes
            entries = len(work) if isinstance(work, TransferPlan) else "-"
            frag_s = f"{frag:.0%}" if label[1] in "ab" else "-"
            pct = 1 if i in refs else statistics.median(r)
            table.append([k, label, frag_s, entries, round(nbytes / 2**20, 1), round(med * 1e3, 2),
                          round(nbytes / med / 1e9, 3), f"{pct:.0%}"])
        floor = ", ".join(f"{rows[i][0]} {statistics.median(ratios[i]):.0%}" for i in refs)
        cols = ["dtype", "method", "fragmentation", "entries", "MiB", "ms", "GB/s", "% of (c)"]
        report.table(title, cols, table, notes=[
            f"{os.cpu_count()} CPUs, load average {load0:.2f} at the start, {os.getloadavg()[0]:.2f} at the end.",
            f"(c) paired with itself the same way (the noise floor of the % column): {floor}"])
        report.lines("transfer_gbps", [_gbps_panel(table, k) for k in DTYPES],
                     "KV transfer throughput against page fragmentation (Mooncake TCP loopback)")
        report.done()
    finally:
        prefill.close()
        decode.close()


def _gbps_panel(table: list[list], dtype: str) -> Panel:
    """GB/s of (a) and (b) against fragmentation, (c) and (d) as flat reference lines."""
    mine = [r for r in table if r[0] == dtype]
    fracs = sorted({float(r[2].rstrip("%")) for r in mine if r[2] != "-"})
    series = []
    for method in ("(a) coalesced", "(b) page x layer"):
        pts = sorted((float(r[2].rstrip("%")), r[6]) for r in mine if r[1] == method)
        series.append(Series(method, [x for x, _ in pts], [y for _, y in pts]))
    for method in ("(c) one entry", "(d) memcpy"):
        (gbps,) = [r[6] for r in mine if r[1] == method]
        series.append(Series(method, [fracs[0], fracs[-1]], [gbps, gbps], "--"))
    return Panel(f"{dtype} KV", "pages that start a new run (%)", "GB/s", series, logy=True, xticks=fracs)


def _check_landed(plan: TransferPlan, src: LoopbackPeer, dst: LoopbackPeer, kind: str) -> None:
    got, want = dst.read(kind).reshape(-1), src.read(kind).reshape(-1)
    s0, d0 = src.layout.region(kind).base_ptr, dst.layout.region(kind).base_ptr
    for s, d, n in zip(plan.src_addrs.tolist(), plan.dst_addrs.tolist(), plan.lengths.tolist(), strict=True):
        assert np.array_equal(got[d - d0 : d - d0 + n], want[s - s0 : s - s0 + n]), f"{kind}: entry differs"


if __name__ == "__main__":
    main()
