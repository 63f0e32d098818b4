"""`RadixTree`: cached pages of context keyed by their tokens, one page per edge, with reference counts and
LRU eviction of unreferenced leaves. It knows item ids, never allocators (see `PrefixCache`)."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(eq=False)
class Node:
    """One cached page: its tokens (`key`), its item id per pool kind, and how many requests use it (a request
    holding a node holds every node on its path to the root)."""

    key: tuple[int, ...]
    items: dict[str, int]
    parent: Node | None
    children: dict[tuple[int, ...], Node] = field(default_factory=dict)
    ref: int = 0
    last_used: int = 0
    depth: int = 0  # pages from the root to this node, itself included

    @property
    def is_root(self) -> bool:
        return self.parent is None


class RadixTree:
    """A trie over page-sized token tuples. `match` finds the longest cached run of whole pages, `insert`
    adopts a sequence's pages (handing back the ones already cached under the same tokens), `lock`/`unlock`
    count users along a path, `evict` drops least recently used unreferenced leaves."""

    def __init__(self, page_size: int, kinds: Sequence[str]) -> None:
        assert page_size > 0 and kinds, f"radix tree needs a page size and kinds, got {page_size}, {kinds}"
        self.page_size = page_size
        self.kinds = tuple(kinds)
        self.root = Node((), {}, None)
        self.root.ref = 1  # never evicted
        self._clock = 0
        self.num_pages = 0
        self.num_evictable = 0  # cached pages no request references
        # evictable leaves by last use, kept as they change (entries that went stale are skipped on the way
        # out), so eviction costs O(log n) per page instead of a walk over every cached page
        self._heap: list[tuple[int, int, Node]] = []
        self._seq = itertools.count()

    def _offer(self, node: Node) -> None:
        """Queue `node` for eviction if it is an unreferenced leaf (call after its use or shape changed)."""
        if not node.children and node.ref == 0 and not node.is_root:
            heapq.heappush(self._heap, (node.last_used, next(self._seq), node))
            if len(self._heap) > 4 * self.num_pages + 64:  # stale entries outnumber live ones: rebuild
                self._heap = [e for e in self._heap if self._live(e)]
                heapq.heapify(self._heap)

    @staticmethod
    def _live(entry: tuple[int, int, Node]) -> bool:
        used, _, node = entry
        return (node.parent.children.get(node.key) is node and not node.children and node.ref == 0
                and node.last_used == used)

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def _keys(self, tokens: Sequence[int]) -> list[tuple[int, ...]]:
        ps = self.page_size
        return [tuple(tokens[i : i + ps]) for i in range(0, len(tokens) - ps + 1, ps)]

    def match(self, tokens: Sequence[int]) -> tuple[Node, dict[str, np.ndarray]]:
        """The deepest node whose path spells a prefix of `tokens` (whole pages only) and that path's item ids
        per kind, in page order. Touches the path (LRU)."""
        node, ids, now = self.root, [], self._tick()
        for key in self._keys(tokens):
            child = node.children.get(key)
            if child is None:
                break
            node = child
            node.last_used = now
            ids.append(node.items)
        self._offer(node)
        return node, {k: np.array([it[k] for it in ids], dtype=np.int32) for k in self.kinds}

    def insert(self, tokens: Sequence[int], items: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Adopt the pages of `tokens` (whole pages; `items[kind][i]` holds page i). Pages already cached under
        the same tokens with other ids are not adopted: they are returned per kind, for the caller to free."""
        keys = self._keys(tokens)
        assert all(len(items[k]) >= len(keys) for k in self.kinds), (
            f"insert of {len(keys)} pages with {({k: len(v) for k, v in items.items()})} items")
        node, now, dup = self.root, self._tick(), []
        for i, key in enumerate(keys):
            page = {k: int(items[k][i]) for k in self.kinds}
            child = node.children.get(key)
            if child is None:
                child = Node(key, page, node, depth=node.depth + 1)
                node.children[key] = child
                self.num_pages += 1
                self.num_evictable += 1
            elif child.items != page:
                dup.append(page)
            child.last_used = now
            node = child
        self._offer(node)
        return {k: np.array([p[k] for p in dup], dtype=np.int32) for k in self.kinds}

    def lock(self, node: Node) -> None:
        """A request uses `node` and every page above it: none of them may be evicted."""
        while not node.is_root:
            if node.ref == 0:
                self.num_evictable -= 1
            node.ref += 1
            node = node.parent

    def unlock(self, node: Node) -> None:
        while not node.is_root:
            assert node.ref > 0, f"unlock of an unreferenced cached page at depth {node.depth}"
            node.ref -= 1
            if node.ref == 0:
                self.num_evictable += 1
                self._offer(node)
            node = node.parent

    def evict(self, num_pages: int) -> dict[str, np.ndarray]:
        """Remove up to `num_pages` unreferenced pages, least recently used leaves first; their ids per kind."""
        out: list[dict[str, int]] = []
        while self._heap and len(out) < num_pages:
            entry = heapq.heappop(self._heap)
            if not self._live(entry):
                continue
            node = entry[2]
            parent = node.parent
            del parent.children[node.key]
            out.append(node.items)
            self.num_pages -= 1
            self.num_evictable -= 1
            self._offer(parent)
        return {k: np.array([p[k] for p in out], dtype=np.int32) for k in self.kinds}

    def _nodes(self):
        stack = list(self.root.children.values())
        while stack:
            node = stack.pop()
            stack.extend(node.children.values())
            yield node

    def items(self) -> dict[str, np.ndarray]:
        """Every cached item id per kind (for integrity checks)."""
        nodes = list(self._nodes())
        return {k: np.array([n.items[k] for n in nodes], dtype=np.int32) for k in self.kinds}

    def check(self) -> None:
        """Raise AssertionError unless counts, references and parent links are consistent."""
        nodes = list(self._nodes())
        assert len(nodes) == self.num_pages, f"tree holds {len(nodes)} pages, counted {self.num_pages}"
        free = sum(1 for n in nodes if n.ref == 0)
        assert free == self.num_evictable, f"{free} unreferenced pages, counted {self.num_evictable}"
        for n in nodes:
            assert n.parent.children.get(n.key) is n, f"page at depth {n.depth} is not its parent's child"
            assert n.ref >= sum(c.ref for c in n.children.values()), f"page at depth {n.depth}: ref below children's"
            assert len(n.key) == self.page_size and set(n.items) == set(self.kinds), f"malformed page {n.depth}"
