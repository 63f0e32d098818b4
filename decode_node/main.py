"""`decode-node`: receives prompt pages from prefill nodes (or prefills locally) and streams tokens."""

from __future__ import annotations

import argparse
import sys

from pdpair.decode_node.trust import allow_spec
from pdpair.node.config import add_common_args
from pdpair.node.server import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="decode-node",
        description="pdpair decode node: preallocates pages for each prompt, has a prefill node write the "
                    "prompt's KV into them, then decodes and streams tokens. Alone it is a complete "
                    "colocated server.")
    add_common_args(parser)
    parser.add_argument("--local-prefill-below", type=int, default=0, metavar="N",
                        help="prefill prompts shorter than N tokens on this node (default: 0 = never; "
                             "requests without a prefill node are always prefilled here)")
    parser.add_argument("--prealloc-timeout", type=float, default=60.0,
                        help="seconds a request may wait for free pages before RESOURCE_EXHAUSTED (default: 60)")
    parser.add_argument("--prefill-allow", type=allow_spec, default="", metavar="LIST",
                        help="prefill nodes this node may dial for a request's prefill address: comma-separated "
                             "IP addresses, CIDRs or host names, each optionally with :PORT (a name allows every "
                             "address it resolves to); any other prefill address is INVALID_ARGUMENT (default: "
                             "loopback only; with --tls-* every server whose certificate the CA signed)")
    return parser


def _make_servicer(rt):
    from pdpair.decode_node.servicer import DecodeServicer

    return DecodeServicer(rt), "DecodeNode"


def main(argv: list[str] | None = None) -> int:
    return run_cli("decode", build_parser(), _make_servicer, argv)


if __name__ == "__main__":
    sys.exit(main())
