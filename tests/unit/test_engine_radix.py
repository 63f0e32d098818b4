"""Radix tree and prefix cache without a model: match, insert, lock counts, LRU eviction, and a property test over
random operation sequences checking that every item is free, cached or held by a user — exactly once."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pdpair.engine.cache import PrefixCache, RadixTree
from pdpair.engine.memory import KVPool, PoolSet

PS = 2


def _tree_ids(n):
    return {"kv": np.arange(100, 100 + n, dtype=np.int32)}


def test_match_finds_the_longest_whole_page_prefix():
    t = RadixTree(PS, ["kv"])
    assert t.insert([1, 2, 3, 4, 5, 6], _tree_ids(3))["kv"].size == 0
    node, pages = t.match([1, 2, 3, 4, 9, 9, 9])
    assert pages["kv"].tolist() == [100, 101] and node.depth == 2
    _, pages = t.match([1, 2, 3])  # the partial page never matches
    assert pages["kv"].tolist() == [100]
    _, pages = t.match([2, 1])
    assert pages["kv"].size == 0
    assert t.num_pages == 3 and t.num_evictable == 3
    t.check()


def test_insert_returns_pages_cached_under_the_same_tokens():
    t = RadixTree(PS, ["kv"])
    t.insert([1, 2, 3, 4], _tree_ids(2))
    dup = t.insert([1, 2, 3, 4, 5, 6], {"kv": np.array([7, 8, 9], dtype=np.int32)})
    assert dup["kv"].tolist() == [7, 8]  # pages 0-1 were cached already; page 2 (9) is adopted
    assert sorted(t.items()["kv"].tolist()) == [9, 100, 101]
    same = t.insert([1, 2, 3, 4], {"kv": np.array([100, 101], dtype=np.int32)})
    assert same["kv"].size == 0  # re-inserting the very pages (a borrower ending) returns nothing
    t.check()


def test_locked_pages_are_never_evicted_and_lru_goes_first():
    t = RadixTree(PS, ["kv"])
    t.insert([1, 1, 2, 2], {"kv": np.array([10, 11], dtype=np.int32)})
    t.insert([3, 3, 4, 4], {"kv": np.array([20, 21], dtype=np.int32)})
    t.insert([5, 5], {"kv": np.array([30], dtype=np.int32)})
    node, _ = t.match([1, 1, 2, 2])
    t.lock(node)
    assert t.num_evictable == 3
    t.match([5, 5])  # touched: more recent than [3 3 4 4]
    out = t.evict(2)
    assert out["kv"].tolist() == [21, 20]  # leaf first, then its parent, least recently used branch
    assert t.evict(10)["kv"].tolist() == [30]  # the locked branch stays
    assert t.num_pages == 2 and t.num_evictable == 0
    t.unlock(node)
    assert t.num_evictable == 2
    with pytest.raises(AssertionError, match="unreferenced"):
        t.unlock(node)
    t.check()


def _pools(n):
    kv = KVPool(n, 1, PS, 1, 2, torch.float32, "cpu")
    return PoolSet([kv], PS)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["start", "end", "abort"]), st.integers(0, 7), st.integers(1, 9)),
                max_size=60))
def test_random_operations_keep_every_item_accounted_for(ops):
    """Users borrow a match, allocate the rest (evicting when short), then give their pages to the cache or
    free them; after every operation each item is free, cached, or owned by one user."""
    pools = _pools(24)
    alloc = pools.allocator("kv")
    cache = PrefixCache(pools)
    users = []  # (node, shared ids, owned ids, tokens)
    for op, seed, length in ops:
        if op == "start":
            tokens = [seed % 3] * 2 + [(seed + i) % 4 for i in range(2 * length)]
            node, shared = cache.match(tokens)
            need = -(-len(tokens) // PS) - len(shared["kv"])
            if not cache.make_room("kv", need):
                cache.unlock(node)
                continue
            users.append((node, shared["kv"], alloc.alloc(need), tokens))
        elif users:
            node, shared, owned, tokens = users.pop(seed % len(users))
            if op == "end":  # whole pages go to the cache; what it already held is freed
                ids = np.concatenate([shared, owned])
                full = len(tokens) // PS
                dup = cache.insert(tokens[: full * PS], {"kv": ids[:full]})["kv"]
                alloc.free(np.concatenate([dup, ids[full:]]))
            else:
                alloc.free(owned)
            cache.unlock(node)
        held = [u[2] for u in users] + [cache.items()["kv"]]
        alloc.check_accounted(np.concatenate(held))
        alloc.check_integrity()
        cache.check()
        borrowed = {int(i) for u in users for i in u[1]}
        assert borrowed <= set(cache.items()["kv"].tolist()), "a borrowed page left the cache"


def test_the_cache_is_refused_for_sliding_window_and_state_pools():
    from pdpair.engine.cache import cache_unsupported
    from pdpair.engine.memory import SWA_KIND

    full = KVPool(8, 1, PS, 1, 2, torch.float32, "cpu")
    swa = KVPool(8, 1, PS, 1, 2, torch.float32, "cpu", kind=SWA_KIND, window=4)
    assert cache_unsupported(PoolSet([full], PS)) is None
    assert "sliding-window" in cache_unsupported(PoolSet([full, swa], PS))


def _evict_by_scan(tree: RadixTree, num_pages: int) -> set[int]:
    """The eviction order by definition: repeatedly the least recently used unreferenced leaf, found by walking
    the whole tree (what `RadixTree.evict`'s maintained heap must reproduce)."""
    out: set[int] = set()
    while len(out) < num_pages:
        leaves = [n for n in tree._nodes() if not n.children and n.ref == 0]
        if not leaves:
            break
        victim = min(leaves, key=lambda n: n.last_used)
        del victim.parent.children[victim.key]
        out.add(victim.items["kv"])
    return out


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["insert", "lock", "unlock", "evict"]), st.integers(0, 11),
                          st.integers(1, 5)), max_size=50))
def test_eviction_follows_lru_over_any_history(ops):
    """After any mix of inserts, matches (locks), unlocks and evictions, `evict` removes exactly the pages a
    whole-tree scan for the least recently used unreferenced leaf would, and the tree stays consistent."""
    import copy

    tree, next_id, locked = RadixTree(PS, ["kv"]), 0, []
    for op, seed, n in ops:
        tokens = [seed % 3] * PS + [(seed * 7 + i) % 5 for i in range(n * PS)]
        if op == "insert":
            pages = len(tokens) // PS
            tree.insert(tokens, {"kv": np.arange(next_id, next_id + pages)})
            next_id += pages
        elif op == "lock":
            node, _ = tree.match(tokens)
            tree.lock(node)
            locked.append(node)
        elif op == "unlock" and locked:
            tree.unlock(locked.pop(seed % len(locked)))
        elif op == "evict":
            want = _evict_by_scan(copy.deepcopy(tree), n)
            assert set(tree.evict(n)["kv"].tolist()) == want
        tree.check()
