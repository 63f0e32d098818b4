"""The cache_aware policy's per-node prefix tree: insert, match, edge splits, LRU eviction and its size bound
(checked against a plain list of the inserted prompts)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pdpair.router.radix import PrefixTree


def _common(a, b) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_match_is_the_longest_shared_prefix_and_splits_keep_both_branches():
    t = PrefixTree(1000)
    assert t.match([1, 2, 3]) == 0
    t.insert([1, 2, 3, 4, 5])
    t.insert([1, 2, 9])  # splits the edge after [1, 2]
    assert t.size == 6  # 1 2 | 3 4 5 | 9
    assert t.match([1, 2, 3, 4, 5, 6]) == 5
    assert t.match([1, 2, 9, 9]) == 3
    assert t.match([1, 2, 7]) == 2
    assert t.match([1, 2, 3]) == 3  # ends inside an edge
    assert t.match([2]) == 0
    t.insert([1, 2, 3])  # already held: nothing added
    assert t.size == 6


def test_eviction_drops_least_recently_inserted_first():
    t = PrefixTree(10)
    t.insert([1, 1, 1, 1])
    t.insert([2, 2, 2, 2])
    t.insert([1, 1, 1, 1, 5])  # refreshes the [1 ...] branch and extends it
    assert t.size == 9
    t.insert([3, 3, 3])  # 12 > 10: the [2 ...] branch is the oldest
    assert t.size == 8
    assert t.match([2, 2]) == 0
    assert t.match([1, 1, 1, 1, 5]) == 5 and t.match([3, 3, 3]) == 3


def test_eviction_goes_down_to_nine_tenths_of_the_bound():
    t = PrefixTree(100)
    for i in range(11):
        t.insert([i] * 10)
    assert t.size == 90
    assert [t.match([i] * 10) for i in range(11)] == [0, 0] + [10] * 9


def test_eviction_frees_a_parent_that_becomes_a_leaf():
    t = PrefixTree(5)
    t.insert([1, 2, 3])
    t.insert([1, 2, 4])  # [1 2] with leaves [3] and [4]
    t.insert([7, 7, 7, 7])  # 8 > 5: leaf [3], then leaf [4], then the bare [1 2] go
    assert t.size == 4
    assert t.match([1, 2, 4]) == 0 and t.match([7, 7, 7, 7]) == 4


def test_a_prompt_longer_than_the_bound_keeps_its_head():
    t = PrefixTree(4)
    t.insert([9, 9])
    t.insert([1, 2, 3, 4, 5, 6])
    assert t.size == 4 and t.match([1, 2, 3, 4, 5, 6]) == 4 and t.match([9]) == 0


def test_rejects_an_empty_bound():
    with pytest.raises(ValueError, match="max_tokens=0"):
        PrefixTree(0)


prompts = st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=12), min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(prompts, st.integers(1, 30), st.lists(st.integers(0, 3), max_size=12))
def test_size_bound_holds_and_matches_never_exceed_what_was_inserted(inserted, bound, query):
    t = PrefixTree(bound)
    for i, p in enumerate(inserted):
        t.insert(p)
        assert t.size <= bound
        assert t.match(p) == min(len(p), bound)  # the newest entry always survives
        assert t.match(query) <= max(_common(q, query) for q in inserted[: i + 1])


@settings(max_examples=100, deadline=None)
@given(prompts, st.lists(st.integers(0, 3), max_size=12))
def test_without_eviction_match_equals_the_best_inserted_prefix(inserted, query):
    t = PrefixTree(10_000)
    for p in inserted:
        t.insert(p)
    assert t.match(query) == max(_common(p, query) for p in inserted)
    assert t.size <= sum(len(p) for p in inserted)
