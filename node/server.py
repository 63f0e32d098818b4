"""serve(): the grpc.aio server of a node — servicer, health service, metrics, SIGTERM drain."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import time
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from pdpair.engine.heap import freeze_startup_heap, thaw_heap
from pdpair.node.config import NodeConfig
from pdpair.node.runtime import NodeRuntime, load_engine
from pdpair.node.wire import add_service

from pdpair.tls import add_port, warn_if_exposed

logger = logging.getLogger(__name__)

# builds (servicer, service name in pdpair.proto) for a runtime
MakeServicer = Callable[[NodeRuntime], tuple[Any, str]]

GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.so_reuseport", 0),
]


def setup_logging(level: str, fmt: str = "text") -> None:
    """Text or JSON lines (`--log-format`), each with the request id of the gRPC call it belongs to."""
    from pdpair.logfmt import setup_logging as setup

    setup(level, fmt)


async def _set_health(health: Any, service_names: list[str], status: int) -> None:
    for name in ["", *service_names]:
        await health.set(name, status)


# the least time gRPC's own shutdown gives calls still open after the drain (their responses on the wire, an
# Abort or a Stats poll) before it cancels them; it returns as soon as the last one completes
STOP_GRACE_S = 2.0


async def _drain(rt: NodeRuntime, health: Any, service_names: list[str]) -> float:
    """Stop admitting (health NOT_SERVING, new calls UNAVAILABLE), wait for in-flight calls, bounded; returns
    the deadline of the drain budget."""
    rt.draining = True
    await _set_health(health, service_names, health_pb2.HealthCheckResponse.NOT_SERVING)
    deadline = time.monotonic() + rt.cfg.drain_timeout
    while rt.inflight > 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if rt.inflight:
        logger.warning("drain timeout (%.0fs): %d requests still in flight", rt.cfg.drain_timeout, rt.inflight)
    else:
        logger.info("drained")
    return deadline


async def _serve(cfg: NodeConfig, make_servicer: MakeServicer) -> int:
    loop = asyncio.get_running_loop()
    engine = await loop.run_in_executor(None, load_engine, cfg)
    rt = NodeRuntime(cfg, engine)
    stop = asyncio.Event()
    fatal: list[BaseException] = []

    def on_fatal(exc: BaseException) -> None:  # the engine cannot step any more: stop serving, exit non-zero
        logger.critical("engine failed repeatedly (%r): reporting NOT_SERVING and exiting", exc)
        fatal.append(exc)
        rt.draining = True
        loop.create_task(_set_health(health, [service_name], health_pb2.HealthCheckResponse.NOT_SERVING))
        stop.set()

    rt.attach(loop, on_fatal=on_fatal)
    servicer, service = make_servicer(rt)
    rt.start()
    server = grpc.aio.server(options=GRPC_OPTIONS)
    service_name = add_service(server, servicer, service)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    warn_if_exposed(cfg.host, cfg.tls, f"{cfg.role} node gRPC server")
    port = add_port(server, f"{cfg.host}:{cfg.port}", cfg.tls)
    if port == 0:
        raise OSError(f"cannot bind {cfg.host}:{cfg.port}")
    await server.start()
    await health.set(service_name, health_pb2.HealthCheckResponse.SERVING)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    logger.info("%s node serving on %s:%d (advertised %s:%d, %s)", cfg.role, cfg.host, port, cfg.advertise_host, port,
                "mutual TLS" if cfg.tls else "plaintext")
    frozen = freeze_startup_heap()  # see engine/heap.py
    logger.debug("froze %d startup objects", frozen)
    try:
        await stop.wait()
        deadline = time.monotonic()
        if not fatal:
            logger.info("shutdown requested: draining")
            deadline = await _drain(rt, health, [service_name])
        # a handler that returned has its response still to send: the rest of the drain budget (not a fixed
        # second, which a loaded box outlasts) is the bound, and gRPC stops waiting once every call ended
        await server.stop(grace=max(deadline - time.monotonic(), STOP_GRACE_S))
        for close in rt.on_shutdown:
            await close()
    finally:
        thaw_heap()
        await loop.run_in_executor(None, rt.close)
    logger.info("%s node stopped", cfg.role)
    return 1 if fatal else 0


def serve(cfg: NodeConfig, make_servicer: MakeServicer) -> int:
    """Run a node until SIGTERM/SIGINT; returns the process exit code."""
    setup_logging(cfg.log_level, cfg.log_format)
    return asyncio.run(_serve(cfg, make_servicer))


def run_cli(role: str, parser: argparse.ArgumentParser, make_servicer: MakeServicer,
            argv: list[str] | None = None) -> int:
    """A daemon's `main`: parse flags, build the config (errors as usage messages, exit 2), serve."""
    from pdpair.node.config import config_from_args

    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(role, args)
    except ValueError as exc:
        parser.error(str(exc))
    return serve(cfg, make_servicer)
