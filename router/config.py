"""The router's configuration (frozen; the CLI builds it)."""

from __future__ import annotations

from dataclasses import dataclass

from pdpair.router.cache_aware import CacheAwareConfig
from pdpair.router.discovery import parse_target
from pdpair.router.policy import POLICIES

from pdpair.tls import TlsFiles


def check_addr(addr: str) -> str:
    """Validate "host:port" (IPv6 as "[::1]:port") or "dns:///host:port"; return it unchanged."""
    host, sep, port = parse_target(addr).addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"node address must be HOST:PORT, got {addr!r}")
    return addr


@dataclass(frozen=True)
class RouterConfig:
    decode: tuple[str, ...]
    prefill: tuple[str, ...] = ()  # empty: colocated, the decode nodes prefill locally
    host: str = "127.0.0.1"
    port: int = 8000
    policy: str = "round_robin"
    cache_aware: CacheAwareConfig = CacheAwareConfig()  # the cache_aware policy's thresholds and tree bound
    poll_interval_s: float = 1.0  # Stats polling (health and load)
    rpc_timeout_s: float = 2.0  # Stats and ModelInfo calls
    request_timeout_s: float | None = 300.0  # deadline of one generation, failover included (None: none)
    max_body_bytes: int = 4 * 1024 * 1024  # larger request bodies are answered 413
    tokenize_threads: int = 2  # the bounded pool that tokenizes and renders chat templates off the event loop
    shutdown_timeout_s: float = 30.0  # SIGTERM: how long in-flight requests may finish
    dns_refresh_s: float = 0.0  # > 0: resolve every node target (a headless Service) this often
    api_keys: tuple[str, ...] = ()  # bearer keys /v1/* requires (none: open)
    tls: TlsFiles | None = None  # mutual TLS on the channels to the nodes

    def __post_init__(self) -> None:
        if not self.decode:
            raise ValueError("at least one --decode node is needed")
        for addr in self.decode + self.prefill:
            check_addr(addr)
        if len(set(self.decode)) != len(self.decode) or len(set(self.prefill)) != len(self.prefill):
            raise ValueError("a node address is listed twice")
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; choose one of {', '.join(POLICIES)}")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port out of range: {self.port}")
        if self.poll_interval_s <= 0 or self.rpc_timeout_s <= 0:
            raise ValueError("poll interval and RPC timeout must be positive")
        if self.dns_refresh_s < 0:
            raise ValueError("DNS refresh interval must be >= 0")
        if self.request_timeout_s is not None and self.request_timeout_s <= 0:
            raise ValueError("request timeout must be positive")
        if self.max_body_bytes < 1024:
            raise ValueError(f"max body size must be at least 1024 bytes, got {self.max_body_bytes}")
        if self.tokenize_threads < 1:
            raise ValueError(f"tokenize threads must be >= 1, got {self.tokenize_threads}")
