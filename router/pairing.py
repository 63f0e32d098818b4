"""How a pool picks a (decode, prefill) pair: per-role node policies, or cache-aware pairing over the prompt."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol

from pdpair.router.cache_aware import CacheAware, CacheAwareConfig, ChoiceObserver
from pdpair.router.node_client import NodeClient
from pdpair.router.policy import make_policy


class PairPolicy(Protocol):
    def pick_pair(self, decode: Sequence[NodeClient], prefill: Sequence[NodeClient] | None,
                  prompt: Sequence[int]) -> tuple[NodeClient, NodeClient | None]:
        """A decode node and (unless `prefill` is None: colocated) a prefill node; both lists non-empty."""
        ...

    def retain(self, live: Collection[NodeClient]) -> None:
        """Forget what is known about nodes not in `live` (ejected, unhealthy, gone from discovery)."""
        ...


class PerRole:
    """One node policy per role, each picking on its own; the prompt plays no part."""

    def __init__(self, name: str):
        self._decode, self._prefill = make_policy(name), make_policy(name)

    def pick_pair(self, decode: Sequence[NodeClient], prefill: Sequence[NodeClient] | None,
                  prompt: Sequence[int]) -> tuple[NodeClient, NodeClient | None]:
        return self._decode.pick(decode), None if prefill is None else self._prefill.pick(prefill)

    def retain(self, live: Collection[NodeClient]) -> None:
        pass


def make_pair_policy(name: str, cache_aware: CacheAwareConfig | None = None,
                     observe: ChoiceObserver | None = None) -> PairPolicy:
    if name == "cache_aware":
        return CacheAware(cache_aware or CacheAwareConfig(), observe)
    return PerRole(name)
