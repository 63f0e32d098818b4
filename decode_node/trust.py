"""PrefillTrust: the prefill nodes a decode node may dial for a request's `prefill_addr`.

A decode node hands its node id, Mooncake session and pool layout to every prefill node it handshakes, and
lets it write into its pools: it must not dial whatever address a request names. `--prefill-allow` lists
what it may dial: IP addresses, CIDRs or host names, each optionally with `:PORT` (a name stands for every
address it resolves to). Default: loopback only without TLS; with mutual TLS every server presenting a
certificate signed by the CA (the channel checks it), narrowed further by `--prefill-allow` when given.
A target host name is resolved (off the event loop) and every address it resolves to must be allowed.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import socket
import time
from dataclasses import dataclass

logger = logging.getLogger(__name__)

IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK = "127.0.0.0/8,::1"
RESOLVE_TIMEOUT_S = 5.0
NAME_CACHE_S = 30.0
NAME_RECHECK_S = 1.0  # a miss re-resolves allowed names older than this (new pods behind a headless Service)


class UntrustedPrefill(ValueError):
    """A request names a prefill node outside the allowed set (INVALID_ARGUMENT at the servicer edge)."""


@dataclass(frozen=True)
class AllowEntry:
    net: IPNet | None = None  # an address or a CIDR
    name: str | None = None  # a host name, resolved when checked
    port: int | None = None  # None: any port

    def describe(self) -> str:
        host = self.name or str(self.net)
        return f"{host}:{self.port}" if self.port else host


def split_host_port(addr: str) -> tuple[str, int | None]:
    """"h", "h:p", "[v6]", "[v6]:p", or a bare IPv6 address / CIDR; ValueError on a bad port."""
    addr = addr.strip()
    if addr.startswith("["):
        host, bracket, rest = addr[1:].partition("]")
        if not bracket:
            raise ValueError(f"bad address {addr!r}: no closing ']'")
        port = rest[1:] if rest.startswith(":") else None
        if rest and port is None:
            raise ValueError(f"bad address {addr!r}")
    elif addr.count(":") == 1:
        host, port = addr.split(":")
    else:
        host, port = addr, None
    if port is not None:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bad port in {addr!r}")
        return host, int(port)
    return host, None


def parse_allow(spec: str) -> tuple[AllowEntry, ...]:
    """Comma-separated addresses, CIDRs or host names, each with an optional :PORT; ValueError when bad."""
    entries = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        host, port = split_host_port(item)
        if not host:
            raise ValueError(f"--prefill-allow entry {item!r} has no host")
        try:
            entries.append(AllowEntry(net=ipaddress.ip_network(host, strict=False), port=port))
        except ValueError:
            if "/" in host or not all(c.isalnum() or c in "-._" for c in host):
                raise ValueError(f"--prefill-allow entry {item!r} is not an address, CIDR or host name") from None
            entries.append(AllowEntry(name=host.lower().rstrip("."), port=port))
    return tuple(entries)


def allow_spec(text: str) -> str:
    """argparse `type=` for --prefill-allow: validates, returns the text."""
    try:
        parse_allow(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


class PrefillTrust:
    def __init__(self, spec: str, tls: bool) -> None:
        self.any_signed = tls and not spec.strip()  # mutual TLS and no list: the CA decides
        self.entries = parse_allow(spec or LOOPBACK)
        self._names: dict[str, tuple[float, frozenset[str]]] = {}
        logger.info("prefill nodes this node may dial: %s", "any with a CA-signed certificate"
                    if self.any_signed else ", ".join(e.describe() for e in self.entries))

    async def check(self, addr: str) -> None:
        """Returns when addr ("host:port") may be dialled; raises UntrustedPrefill otherwise."""
        try:
            host, port = split_host_port(addr)
        except ValueError as exc:
            raise UntrustedPrefill(f"prefill_addr {addr!r}: {exc}") from None
        if not host or port is None:
            raise UntrustedPrefill(f"prefill_addr must be HOST:PORT, got {addr!r}")
        if self.any_signed:
            return
        name = host.lower().rstrip(".")
        if any(e.name == name and e.port in (None, port) for e in self.entries):
            return
        addrs = await self._resolve(name)
        if not addrs:
            raise UntrustedPrefill(f"prefill_addr {addr!r}: cannot resolve {host!r}")
        for ip in addrs:
            if not (await self._allowed(ipaddress.ip_address(ip), port, NAME_CACHE_S)
                    or await self._allowed(ipaddress.ip_address(ip), port, NAME_RECHECK_S)):
                raise UntrustedPrefill(f"prefill_addr {addr!r} ({ip}) is not an allowed prefill node "
                                       f"(--prefill-allow: {', '.join(e.describe() for e in self.entries)})")

    async def _allowed(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, max_age: float) -> bool:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        for e in self.entries:
            if e.port not in (None, port):
                continue
            if e.net is not None and ip.version == e.net.version and ip in e.net:
                return True
            if e.name is not None and str(ip) in await self._resolve(e.name, max_age):
                return True
        return False

    async def _resolve(self, name: str, max_age: float = NAME_CACHE_S) -> frozenset[str]:
        """The addresses of name (an IP literal is itself), resolved at most max_age ago; empty when it fails."""
        try:
            return frozenset([str(ipaddress.ip_address(name))])
        except ValueError:
            pass
        hit = self._names.get(name)
        if hit is not None and time.monotonic() - hit[0] < max_age:
            return hit[1]
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(loop.getaddrinfo(name, None, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_S)
        except (OSError, TimeoutError):
            infos = []
        addrs = frozenset(str(ipaddress.ip_address(i[4][0].split("%")[0])) for i in infos)
        if len(self._names) > 1024:
            self._names.clear()
        self._names[name] = (time.monotonic(), addrs)
        return addrs
