"""Pairing policies: which healthy node of one role gets the next request."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from pdpair.router.node_client import NodeClient

POLICIES = ("round_robin", "least_loaded", "cache_aware")  # cache_aware: see cache_aware.py


class Policy(Protocol):
    def pick(self, nodes: Sequence[NodeClient]) -> NodeClient: ...


class RoundRobin:
    """Cycle through the healthy nodes in order."""

    def __init__(self) -> None:
        self._next = 0

    def pick(self, nodes: Sequence[NodeClient]) -> NodeClient:
        assert nodes, "pick() needs at least one node"
        node = nodes[self._next % len(nodes)]
        self._next += 1
        return node


class LeastLoaded:
    """Fewest requests (open streams or reported queues), then most free KV pages, then list order; a
    DP-attention node counts by its best rank (see `NodeClient.load`)."""

    def pick(self, nodes: Sequence[NodeClient]) -> NodeClient:
        assert nodes, "pick() needs at least one node"
        return min(enumerate(nodes), key=lambda item: (item[1].load(), -item[1].free_fraction(), item[0]))[1]


def make_policy(name: str) -> Policy:
    """A per-role node policy (`pairing.make_pair_policy` covers every name in POLICIES)."""
    if name == "round_robin":
        return RoundRobin()
    if name == "least_loaded":
        return LeastLoaded()
    raise ValueError(f"unknown policy {name!r} for one role; choose round_robin or least_loaded")
