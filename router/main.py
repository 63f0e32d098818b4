"""`pdpair-router`: the OpenAI-compatible front door that pairs prefill and decode nodes."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from aiohttp import web
from pdpair.router.app import build_app
from pdpair.router.auth import ENV_VAR, collect_keys
from pdpair.router.cache_aware import CacheAwareConfig
from pdpair.router.config import RouterConfig
from pdpair.router.policy import POLICIES
from pdpair.router.state import STATE

from pdpair.logfmt import add_log_format_arg, setup_logging
from pdpair.tls import add_tls_args, is_loopback, tls_from_args

logger = logging.getLogger(__name__)

_DEFAULTS = RouterConfig(decode=("localhost:1",))
_CACHE = _DEFAULTS.cache_aware


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pdpair-router",
        description="OpenAI-compatible HTTP router over pdpair prefill and decode nodes. Each request goes to one "
        "decode node, which pulls the prompt's KV pages from one prefill node; with no --prefill the decode nodes "
        "serve colocated (they prefill locally).",
    )
    p.add_argument("--prefill", nargs="+", action="extend", default=[], metavar="HOST:PORT",
                   help="prefill node gRPC addresses (repeatable, or comma-separated); dns:///NAME:PORT stands for "
                   "every address NAME resolves to (a headless Service), re-resolved as pods come and go; none: "
                   "colocated on the decode nodes")
    p.add_argument("--decode", nargs="+", action="extend", default=[], metavar="HOST:PORT", required=True,
                   help="decode node gRPC addresses (repeatable, or comma-separated; dns:///NAME:PORT as for --prefill)")
    p.add_argument("--host", default=_DEFAULTS.host,
                   help="HTTP listen address (default: %(default)s, this machine only; 0.0.0.0 to serve others, "
                   "with --api-key)")
    p.add_argument("--port", type=int, default=_DEFAULTS.port, help="HTTP listen port (default: %(default)s)")
    p.add_argument("--policy", choices=POLICIES, default=_DEFAULTS.policy,
                   help="pairing policy: round_robin; least_loaded (fewest requests from the nodes' Stats, a "
                   "DP-attention node counted by its least loaded rank, then most free KV pages); or cache_aware "
                   "(the nodes whose remembered prompts share the longest prefix with this one, a prefill and a "
                   "decode node that both hold it when possible; least_loaded when the match is short or the node "
                   "overloaded) (default: %(default)s)")
    p.add_argument("--cache-threshold", type=float, default=_CACHE.match_threshold, metavar="RATIO",
                   help="cache_aware: the share of the prompt (0..1) a node's remembered prefix must cover to be "
                   "chosen for it; below, the least loaded node is (default: %(default)s)")
    p.add_argument("--balance-abs-threshold", type=int, default=_CACHE.balance_abs_threshold, metavar="REQUESTS",
                   help="cache_aware: a node with this many more requests than the least loaded node of its role, "
                   "and --balance-rel-threshold times as many, is overloaded: it gets no prefix-matched work "
                   "(default: %(default)s)")
    p.add_argument("--balance-rel-threshold", type=float, default=_CACHE.balance_rel_threshold, metavar="FACTOR",
                   help="cache_aware: see --balance-abs-threshold (default: %(default)s)")
    p.add_argument("--max-tree-tokens", type=int, default=_CACHE.max_tree_tokens, metavar="TOKENS",
                   help="cache_aware: token ids of recently routed prompts remembered per node; the least recently "
                   "routed are forgotten first (default: %(default)s)")
    p.add_argument("--health-interval", type=float, default=_DEFAULTS.poll_interval_s, metavar="SECONDS",
                   help="how often every node's Stats is polled, for health and load (default: %(default)s)")
    p.add_argument("--rpc-timeout", type=float, default=_DEFAULTS.rpc_timeout_s, metavar="SECONDS",
                   help="deadline of the Stats and ModelInfo calls (default: %(default)s)")
    p.add_argument("--request-timeout", type=float, default=_DEFAULTS.request_timeout_s, metavar="SECONDS",
                   help="deadline of one generation from the router's first call to the last token, a failover "
                   "retry included; 504 when exceeded before the first token; 0 = none (default: %(default)s)")
    p.add_argument("--max-body-bytes", type=int, default=_DEFAULTS.max_body_bytes, metavar="BYTES",
                   help="largest accepted HTTP request body; larger ones are answered 413 (default: %(default)s)")
    p.add_argument("--shutdown-timeout", type=float, default=_DEFAULTS.shutdown_timeout_s, metavar="SECONDS",
                   help="on SIGTERM, how long in-flight requests may finish (default: %(default)s)")
    p.add_argument("--dns-refresh", type=float, default=_DEFAULTS.dns_refresh_s, metavar="SECONDS",
                   help="how often dns:/// targets are re-resolved (0: every 5 s); > 0 also treats every plain node "
                   "address as a DNS name standing for all the addresses it resolves to (default: %(default)s)")
    p.add_argument("--api-key", action="append", default=[], metavar="KEY",
                   help=f"require 'Authorization: Bearer KEY' on every /v1/* route, else 401 (repeatable, or "
                   f"comma-separated; also ${ENV_VAR}, comma-separated); /health and /metrics stay open "
                   f"(default: no key)")
    add_tls_args(p)
    p.add_argument("--log-level", default="INFO", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="log level (default: %(default)s)")
    add_log_format_arg(p)
    return p


def _split(addrs: list[str]) -> tuple[str, ...]:
    return tuple(a.strip() for arg in addrs for a in arg.split(",") if a.strip())


def config_from_args(args: argparse.Namespace) -> RouterConfig:
    return RouterConfig(
        decode=_split(args.decode),
        prefill=_split(args.prefill),
        host=args.host,
        port=args.port,
        policy=args.policy,
        cache_aware=CacheAwareConfig(args.cache_threshold, args.balance_abs_threshold, args.balance_rel_threshold,
                                     args.max_tree_tokens),
        poll_interval_s=args.health_interval,
        rpc_timeout_s=args.rpc_timeout,
        request_timeout_s=args.request_timeout or None,
        max_body_bytes=args.max_body_bytes,
        shutdown_timeout_s=args.shutdown_timeout,
        dns_refresh_s=args.dns_refresh,
        api_keys=collect_keys(args.api_key),
        tls=tls_from_args(args),
    )


async def serve(config: RouterConfig) -> int:
    """Serve until SIGTERM/SIGINT, then let in-flight requests finish (bounded); the exit status (1 when the
    startup task failed)."""
    app = build_app(config)
    stop = asyncio.Event()
    app[STATE].on_fatal = stop.set
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=config.shutdown_timeout_s,
                           access_log=None)
    await runner.setup()
    if not is_loopback(config.host):
        if config.tls is None:
            logger.warning("pdpair-router binds %s while its links to the nodes are plaintext (no --tls-*)",
                           config.host)
        if not config.api_keys:
            logger.warning("pdpair-router binds %s without an API key: anyone who reaches it may use it "
                           "(--api-key or $%s)", config.host, ENV_VAR)
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    mode = f"prefill {', '.join(config.prefill)}" if config.prefill else "colocated"
    logger.info("pdpair-router on http://%s:%d (decode %s; %s; policy %s)", config.host, config.port,
                ", ".join(config.decode), mode, config.policy)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logger.info("shutting down")
    await runner.cleanup()
    return 1 if app[STATE].fatal is not None else 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))  # usage + message on stderr, exit 2
    return asyncio.run(serve(config))


if __name__ == "__main__":
    sys.exit(main())
