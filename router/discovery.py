"""Node discovery: static "host:port" targets, and "dns:///name:port" targets that stand for every address the
name resolves to (a headless Kubernetes Service: one address per ready pod), re-resolved as pods come and go.

`Discovery` owns the targets of one role; `addresses()` is the current set. A resolver is any
`async (host, port) -> list[str]`, so unit tests pass a stand-in for DNS.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)

DNS_SCHEME = "dns://"
DEFAULT_DNS_REFRESH_S = 5.0  # dns:/// targets with --dns-refresh 0
Resolver = Callable[[str, int], Awaitable[list[str]]]


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


@dataclass(frozen=True)
class Target:
    addr: str  # "host:port" without the scheme
    dynamic: bool  # resolve to every address of the name, again and again


def parse_target(target: str, *, all_dynamic: bool = False) -> Target:
    """"dns:///host:port" (gRPC's form; "dns://authority/host:port" ignores the authority) or "host:port"."""
    if target.startswith(DNS_SCHEME):
        rest = target[len(DNS_SCHEME):]
        authority, slash, addr = rest.partition("/")
        if not slash or not addr:
            raise ValueError(f"DNS target must look like dns:///HOST:PORT, got {target!r}")
        return Target(addr, True)
    return Target(target, all_dynamic)


async def getaddrinfo_resolver(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, as sorted "ip:port" strings (the system resolver, no cache)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({join_addr(info[4][0], port) for info in infos})


async def resolve(target: str) -> list[str]:
    return await getaddrinfo_resolver(*split_addr(target))


class Discovery:
    """The node addresses of one role: static targets as given, dynamic ones as last resolved.

    A name that fails to resolve keeps its previous addresses (a DNS blip drops no node; health polling takes
    dead ones out); a name that resolves to nothing drops its nodes (the Service has no ready pod).
    """

    def __init__(self, role: str, targets: Sequence[str], *, all_dynamic: bool = False,
                 resolver: Resolver = getaddrinfo_resolver):
        self.role = role
        self.targets = [parse_target(t, all_dynamic=all_dynamic) for t in targets]
        self._resolver = resolver
        self._resolved: dict[str, list[str]] = {}

    @property
    def dynamic(self) -> bool:
        return any(t.dynamic for t in self.targets)

    def addresses(self) -> list[str]:
        out: list[str] = []
        for t in self.targets:
            for addr in self._resolved.get(t.addr, []) if t.dynamic else [t.addr]:
                if addr not in out:
                    out.append(addr)
        return out

    async def refresh(self) -> list[str]:
        """Re-resolve every dynamic target; returns `addresses()`."""
        dynamic = [t for t in self.targets if t.dynamic]
        results = await asyncio.gather(*(self._resolver(*split_addr(t.addr)) for t in dynamic),
                                       return_exceptions=True)
        for target, res in zip(dynamic, results, strict=True):
            if isinstance(res, BaseException):
                logger.warning("cannot resolve %s node target %s: %s; keeping its %d known nodes", self.role,
                               target.addr, res, len(self._resolved.get(target.addr, [])))
                continue
            self._resolved[target.addr] = sorted(set(res))
        return self.addresses()
