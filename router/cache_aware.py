"""The `cache_aware` pairing policy: send a prompt where its prefix was sent before.

The router keeps one `PrefixTree` per node of the prompts it routed there: an approximation of the node's
prefix cache (the node may have evicted since, or restarted; a node that leaves the pool drops its tree).
For each role, a node whose load is out of balance with the least loaded one is not considered for cache
affinity; among the others, the node with the longest match is chosen when that match covers at least
`match_threshold` of the prompt, else the least loaded node. Matches are prefixes of one prompt, so the
decode node and the prefill node chosen this way are also the pair that both hold the longest prefix (a
pair's shared prefix is the shorter of its two matches, largest when each side's match is): no search over
pairs is needed to pair two nodes that both hold it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from pdpair.router.node_client import NodeClient
from pdpair.router.policy import LeastLoaded
from pdpair.router.radix import PrefixTree

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheAwareConfig:
    match_threshold: float = 0.3  # matched share of the prompt below which the load decides
    balance_abs_threshold: int = 32  # a node is overloaded when it has this many more requests than the least
    balance_rel_threshold: float = 1.5  # ... and more than this times the least loaded node's requests
    max_tree_tokens: int = 1 << 20  # token ids remembered per node (LRU beyond)

    def __post_init__(self) -> None:
        if not 0.0 <= self.match_threshold <= 1.0:
            raise ValueError(f"cache threshold must be within [0, 1], got {self.match_threshold}")
        if self.balance_abs_threshold < 0 or self.balance_rel_threshold < 1.0:
            raise ValueError(f"balance thresholds must be >= 0 (absolute) and >= 1 (relative), got "
                             f"{self.balance_abs_threshold} and {self.balance_rel_threshold}")
        if self.max_tree_tokens < 1:
            raise ValueError(f"the prefix tree needs room for at least one token, got {self.max_tree_tokens}")


# told of every choice: (role, "prefix" or "load", the matched prefix length the chosen node is expected to hold)
ChoiceObserver = Callable[[str, str, int], None]


class CacheAware:
    def __init__(self, config: CacheAwareConfig, observe: ChoiceObserver | None = None):
        self.config = config
        self._observe = observe
        self._trees: dict[NodeClient, PrefixTree] = {}
        self._least_loaded = LeastLoaded()

    def tree(self, node: NodeClient) -> PrefixTree:
        tree = self._trees.get(node)
        if tree is None:
            tree = self._trees[node] = PrefixTree(self.config.max_tree_tokens)
        return tree

    def retain(self, live: Collection[NodeClient]) -> None:
        for node in [n for n in self._trees if n not in live]:
            del self._trees[node]

    def pick_pair(self, decode: Sequence[NodeClient], prefill: Sequence[NodeClient] | None,
                  prompt: Sequence[int]) -> tuple[NodeClient, NodeClient | None]:
        assert decode and (prefill is None or prefill), "pick_pair() needs a node of every role it picks"
        d_match = self._matches(decode, prompt)
        if prefill is None:
            d, p = self._choose(decode, d_match, len(prompt)), None
        else:
            d = self._choose(decode, d_match, len(prompt))
            p = self._choose(prefill, self._matches(prefill, prompt), len(prompt))
        for node in (d, p):
            if node is not None:
                self.tree(node).insert(prompt)
        return d, p

    def _matches(self, nodes: Sequence[NodeClient], prompt: Sequence[int]) -> dict[NodeClient, int]:
        """Matched prefix length on every node that is not overloaded."""
        least = min(n.load() for n in nodes)
        c = self.config
        return {n: (self._trees[n].match(prompt) if n in self._trees else 0) for n in nodes
                if not (n.load() - least > c.balance_abs_threshold and n.load() > c.balance_rel_threshold * least)}

    def _enough(self, matched: int, length: int) -> bool:
        return matched > 0 and matched >= self.config.match_threshold * length

    def _choose(self, nodes: Sequence[NodeClient], matches: dict[NodeClient, int], length: int) -> NodeClient:
        """The longest match (then the lighter load, then list order) when long enough, else least loaded."""
        order = {n: i for i, n in enumerate(nodes)}
        best = max(matches, key=lambda n: (matches[n], -n.load(), -order[n]))
        if self._enough(matches[best], length):
            logger.debug("cache_aware: %s node %s holds %d of %d prompt tokens", best.role, best.addr,
                         matches[best], length)
            node, by = best, "prefix"
        else:
            node, by = self._least_loaded.pick(nodes), "load"
            logger.debug("cache_aware: %s node %s by load (best match %d of %d tokens on %d of %d nodes not "
                         "overloaded)", node.role, node.addr, matches[best], length, len(matches), len(nodes))
        if self._observe is not None:
            self._observe(node.role, by, matches.get(node, 0))
        return node
