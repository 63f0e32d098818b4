"""`prefill-node`: turns prompts into KV pages and writes them into a decode node's pools."""

from __future__ import annotations

import argparse
import sys

from pdpair.node.config import add_common_args, config_from_args
from pdpair.node.server import serve


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prefill-node",
        description="pdpair prefill node: runs chunked prefill and writes each chunk's KV pages into the "
                    "decode node's pools through the Mooncake transfer engine.")
    add_common_args(parser)
    return parser


def _make_servicer(rt):
    from pdpair.prefill_node.servicer import PrefillServicer
    from pdpair.proto import pdpair_pb2_grpc as pb_grpc

    return PrefillServicer(rt), pb_grpc.add_PrefillNodeServicer_to_server, "pdpair.v1.PrefillNode"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args("prefill", args)
    except ValueError as exc:
        parser.error(str(exc))  # usage + message on stderr, exit 2
    return serve(cfg, _make_servicer)


if __name__ == "__main__":
    sys.exit(main())
