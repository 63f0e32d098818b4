"""BootstrapManager: decode peers that completed a Handshake, by node id, each bound to who handshook it.

A node id belongs to the first peer that handshook it: its certificate identity under mutual TLS, and the
network host it called from. A Handshake or a Prefill naming a bound id from another peer, or a Handshake
declaring another layout (another Mooncake session, other regions) under it, is refused: nobody can
redirect a decode node's pages to their own session, or write into its pools. Without TLS the declared
Mooncake session must also be on the caller's own host. Entries expire after `ttl_s` without use and the
table keeps at most `max_peers` (least recently used evicted); an evicted decode node gets
FAILED_PRECONDITION on its next Prefill and handshakes again.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from pdpair.transfer import MemoryLayout, check_compatible

from pdpair.tls import is_loopback, peer_host, peer_identity

logger = logging.getLogger(__name__)

DEFAULT_TTL_S = 600.0
DEFAULT_MAX_PEERS = 1024


class UnknownPeer(KeyError):
    """A registration names a decode node that never completed a Handshake with this node (or expired)."""


class PeerRefused(Exception):
    """A caller claims a node id bound to another peer, or a session that is not its own."""


@dataclass(frozen=True)
class PeerClaim:
    """Who is calling: the client certificate's name under mutual TLS (None without) and the network host."""

    identity: str | None
    host: str

    def describe(self) -> str:
        return f"certificate {self.identity!r} at {self.host}" if self.identity else f"host {self.host}"


def peer_claim(context) -> PeerClaim:
    """The claim of a gRPC call's client (servicer context)."""
    return PeerClaim(peer_identity(context), peer_host(context))


@dataclass(eq=False)
class _Entry:
    layout: MemoryLayout
    claim: PeerClaim
    expires: float


def _same_host(a: str, b: str) -> bool:
    """IP literals equal (IPv4-mapped IPv6 unwrapped), or both loopback."""
    def norm(h: str):
        ip = ipaddress.ip_address(h.strip("[]"))
        return ip.ipv4_mapped or ip if isinstance(ip, ipaddress.IPv6Address) else ip

    if is_loopback(a) and is_loopback(b):
        return True
    try:
        return norm(a) == norm(b)
    except ValueError:
        return False


class BootstrapManager:
    def __init__(self, local: MemoryLayout, ttl_s: float = DEFAULT_TTL_S, max_peers: int = DEFAULT_MAX_PEERS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if ttl_s <= 0 or max_peers < 1:
            raise ValueError(f"ttl_s ({ttl_s}) must be positive and max_peers ({max_peers}) at least 1")
        self.local = local
        self.ttl_s, self.max_peers, self._clock = ttl_s, max_peers, clock
        self._peers: OrderedDict[str, _Entry] = OrderedDict()

    def handshake(self, remote: MemoryLayout, claim: PeerClaim) -> MemoryLayout:
        """Check the decode node's layout (LayoutMismatch names the field) and bind its id to claim; returns
        ours. PeerRefused when the id is bound to another peer or layout, or (plaintext) the session is not
        on the caller's host."""
        check_compatible(self.local, remote)
        if not remote.session_id:
            raise ValueError(f"decode layout of {remote.node_id!r} has no transfer session id")
        if claim.identity is None:
            for session in remote.sessions:  # its ranks' sessions too: each receives writes
                if not _same_host(session.rsplit(":", 1)[0], claim.host):
                    raise PeerRefused(f"decode node {remote.node_id!r} declares transfer session {session} "
                                      f"but calls from {claim.host}: without mutual TLS a node may only pair its "
                                      f"own host's sessions (advertise the address it connects from)")
        self._expire()
        entry = self._peers.get(remote.node_id)
        if entry is not None:
            if entry.claim != claim:
                raise PeerRefused(f"decode node id {remote.node_id!r} is bound to {entry.claim.describe()}; "
                                  f"{claim.describe()} may not claim it")
            if entry.layout != remote:
                raise PeerRefused(f"decode node id {remote.node_id!r} is bound to transfer session "
                                  f"{entry.layout.session_id} and its declared regions; a Handshake may not "
                                  f"change them (a restarted node comes back under a new id)")
            self._touch(remote.node_id, entry)
            return self.local
        self._peers[remote.node_id] = _Entry(remote, claim, self._clock() + self.ttl_s)
        while len(self._peers) > self.max_peers:
            old, _ = self._peers.popitem(last=False)
            logger.info("peer table full (%d): forgot decode node %s", self.max_peers, old)
        logger.info("paired with decode node %s (session %s, %s)", remote.node_id, remote.session_id,
                    claim.describe())
        return self.local

    def peer(self, node_id: str, claim: PeerClaim | None = None) -> MemoryLayout:
        """The layout bound to node_id (refreshing its expiry); PeerRefused when claim is not its binding."""
        self._expire()
        entry = self._peers.get(node_id)
        if entry is None:
            raise UnknownPeer(f"decode node {node_id!r} has not completed a Handshake (or it expired)")
        if claim is not None and entry.claim != claim:
            raise PeerRefused(f"decode node id {node_id!r} is bound to {entry.claim.describe()}; "
                              f"{claim.describe()} may not use it")
        self._touch(node_id, entry)
        return entry.layout

    def _touch(self, node_id: str, entry: _Entry) -> None:
        entry.expires = self._clock() + self.ttl_s
        self._peers.move_to_end(node_id)

    def _expire(self) -> None:
        now = self._clock()
        while self._peers:
            node_id, entry = next(iter(self._peers.items()))
            if entry.expires > now:
                break  # least recently used first: the rest expire later
            del self._peers[node_id]
            logger.info("decode node %s expired (unused for %.0f s)", node_id, self.ttl_s)

    def __len__(self) -> int:
        return len(self._peers)
