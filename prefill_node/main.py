"""`prefill-node`: turns prompts into KV pages and writes them into a decode node's pools."""

from __future__ import annotations

import argparse
import sys

from pdpair.node.config import add_common_args
from pdpair.node.server import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prefill-node",
        description="pdpair prefill node: runs chunked prefill and writes each chunk's KV pages into the "
                    "decode node's pools through the Mooncake transfer engine.")
    add_common_args(parser)
    return parser


def _make_servicer(rt):
    from pdpair.prefill_node.servicer import PrefillServicer

    return PrefillServicer(rt), "PrefillNode"


def main(argv: list[str] | None = None) -> int:
    return run_cli("prefill", build_parser(), _make_servicer, argv)


if __name__ == "__main__":
    sys.exit(main())
