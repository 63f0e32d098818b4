"""An approximate prefix tree of the prompts recently routed to one node (the router's guess at its cache).

Edges hold runs of token ids (a radix tree). The size is the number of token ids stored, bounded by
`max_tokens`: past it, the least recently inserted leaves go first, down to 90 % of the bound. Matching does
not refresh recency, so that asking every candidate node does not keep the losers' entries alive.
Deterministic: recency is a logical clock, not wall time.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence


class _Node:
    __slots__ = ("edge", "children", "parent", "touched")

    def __init__(self, edge: tuple[int, ...], parent: _Node | None, touched: int):
        self.edge = edge
        self.children: dict[int, _Node] = {}  # keyed by the child's first token id
        self.parent = parent
        self.touched = touched


def _common(edge: tuple[int, ...], tokens: tuple[int, ...], start: int) -> int:
    """How many of `edge`'s tokens equal tokens[start:]."""
    if tokens[start:start + len(edge)] == edge:  # the usual case, compared in C
        return len(edge)
    n = min(len(edge), len(tokens) - start)
    i = 0
    while i < n and edge[i] == tokens[start + i]:
        i += 1
    return i


class PrefixTree:
    def __init__(self, max_tokens: int):
        if max_tokens < 1:
            raise ValueError(f"a prefix tree needs room for at least one token, got max_tokens={max_tokens}")
        self.max_tokens = max_tokens
        self._root = _Node((), None, 0)
        self._size = 0
        self._clock = 0

    @property
    def size(self) -> int:
        """Token ids stored (every edge's length summed)."""
        return self._size

    def match(self, tokens: Sequence[int]) -> int:
        """Length of the longest stored prefix of `tokens`."""
        tokens = tuple(tokens)
        node, i = self._root, 0
        while i < len(tokens):
            child = node.children.get(tokens[i])
            if child is None:
                break
            k = _common(child.edge, tokens, i)
            i += k
            if k < len(child.edge):
                break
            node = child
        return i

    def insert(self, tokens: Sequence[int]) -> None:
        """Store `tokens` (its first `max_tokens` when longer) as the most recent entry, then evict."""
        tokens = tuple(tokens[: self.max_tokens])
        self._clock += 1
        node, i = self._root, 0
        while i < len(tokens):
            child = node.children.get(tokens[i])
            if child is None:
                node.children[tokens[i]] = _Node(tokens[i:], node, self._clock)
                self._size += len(tokens) - i
                break
            k = _common(child.edge, tokens, i)
            if k < len(child.edge):  # split the edge: a node for the shared part, the rest below it
                mid = _Node(child.edge[:k], node, child.touched)
                node.children[tokens[i]] = mid
                child.edge, child.parent = child.edge[k:], mid
                mid.children[child.edge[0]] = child
                child = mid
            child.touched = self._clock
            node, i = child, i + k
        self._evict()

    def _evict(self) -> None:
        """Past the bound, drop least recently touched leaves down to 90 % of it (so that the scan for leaves
        runs once per tenth of the bound inserted, not on every insert). The entry just inserted is the most
        recent and at most `max_tokens` long: it stays, and the bound holds once everything older is gone."""
        if self._size <= self.max_tokens:
            return
        target = self.max_tokens - self.max_tokens // 10
        leaves = [(n.touched, id(n), n) for n in self._nodes() if not n.children]
        heapq.heapify(leaves)
        while self._size > target and leaves and leaves[0][0] < self._clock:
            _, _, leaf = heapq.heappop(leaves)
            parent = leaf.parent
            assert parent is not None
            del parent.children[leaf.edge[0]]
            self._size -= len(leaf.edge)
            if parent is not self._root and not parent.children:
                heapq.heappush(leaves, (parent.touched, id(parent), parent))
        assert self._size <= self.max_tokens, f"prefix tree holds {self._size} > {self.max_tokens} tokens"

    def _nodes(self) -> list[_Node]:
        out, stack = [], list(self._root.children.values())
        while stack:
            n = stack.pop()
            out.append(n)
            stack.extend(n.children.values())
        return out
