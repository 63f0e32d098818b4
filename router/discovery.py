"""DNS expansion of node targets: a headless Kubernetes Service name resolves to one address per pod."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket

logger = logging.getLogger(__name__)


def split_addr(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host.strip("[]"), int(port)


def join_addr(host: str, port: int) -> str:
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


async def resolve(target: str) -> list[str]:
    """Every address `target` ("host:port") resolves to, as sorted "ip:port" strings."""
    host, port = split_addr(target)
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({join_addr(info[4][0], port) for info in infos})


async def resolve_all(targets: list[str], previous: list[str]) -> list[str]:
    """The union over `targets`; a target that fails to resolve keeps `previous` (DNS blips drop nothing)."""
    results = await asyncio.gather(*(resolve(t) for t in targets), return_exceptions=True)
    out: set[str] = set()
    for target, res in zip(targets, results, strict=True):
        if isinstance(res, BaseException):
            logger.warning("cannot resolve %s: %s; keeping the known nodes", target, res)
            return previous
        out.update(res)
    return sorted(out)
