"""`pdpair-compare`: compare a target tensor dump against a baseline; exit 1 when any tensor differs."""

from __future__ import annotations

import argparse
import sys

from pdpair.engine.debug.aligner import ALIGNERS, align
from pdpair.engine.debug.comparator import compare
from pdpair.engine.debug.format import read_runs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pdpair-compare",
        description="Compare two tensor dumps (--dump-dir of prefill-node/decode-node, PDPAIR_DUMP_DIR of the "
                    "engine) tensor by tensor. Each DIR is one run directory or a directory of runs; the runs given "
                    "for one side are read together (e.g. the prefill and the decode node of one "
                    "disaggregated run).")
    p.add_argument("--baseline", required=True, nargs="+", metavar="DIR",
                   help="the reference dump (e.g. colocated)")
    p.add_argument("--target", required=True, nargs="+", metavar="DIR",
                   help="the dump under test (e.g. disaggregated: the prefill node's and the decode node's)")
    p.add_argument("--token-aligner", default="concat_steps", choices=ALIGNERS,
                   help="concat_steps (default): per request, rows of every step and node concatenated in token "
                        "order, padding dropped, so chunked or split runs compare with one-shot ones; none: "
                        "compare file by file, step and rank as dumped")
    p.add_argument("--atol", type=float, default=1e-3,
                   help="absolute tolerance (default: 1e-3; fp32 colocated vs disaggregated SmolLM2 differs by "
                        "at most ~1e-3 in the last layer's residual, from chunked summation order)")
    p.add_argument("--rtol", type=float, default=1e-3,
                   help="relative tolerance; an element passes when |target - baseline| <= atol + rtol * "
                        "|baseline| (default: 1e-3)")
    p.add_argument("--filter", default="", metavar="REGEX", help="only tensor names matching (re.search)")
    p.add_argument("--requests", default="", metavar="REGEX",
                   help="concat_steps only: only request ids matching (re.search); requests pair up by id")
    p.add_argument("--format", default="text", choices=["text", "json"], help="report format (default: text)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        base = align(read_runs(*args.baseline), args.token_aligner, args.filter, args.requests)
        target = align(read_runs(*args.target), args.token_aligner, args.filter, args.requests)
        report = compare(base, target, args.atol, args.rtol)
    except (OSError, ValueError) as exc:
        print(f"pdpair-compare: {exc}", file=sys.stderr)
        return 2
    print(report.json() if args.format == "json" else report.text())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
