"""Contiguous-run coalescing: the SEEDS.md §1 contract cases and properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pdpair.transfer import contiguous_runs, group_concurrent_contiguous


def ids(*xs: int) -> np.ndarray:
    return np.array(xs, dtype=np.int32)


def as_lists(runs):
    return [r.tolist() for r in runs[0]], [r.tolist() for r in runs[1]]


def test_one_contiguous_run():
    assert as_lists(group_concurrent_contiguous(ids(3, 4, 5, 6), ids(10, 11, 12, 13))) == (
        [[3, 4, 5, 6]],
        [[10, 11, 12, 13]],
    )


def test_split_on_gap_in_src_only():
    assert as_lists(group_concurrent_contiguous(ids(1, 2, 7, 8), ids(5, 6, 7, 8))) == (
        [[1, 2], [7, 8]],
        [[5, 6], [7, 8]],
    )


def test_split_on_gap_in_dst_only():
    assert as_lists(group_concurrent_contiguous(ids(1, 2, 3, 4), ids(5, 9, 10, 2))) == (
        [[1], [2, 3], [4]],
        [[5], [9, 10], [2]],
    )


def test_both_empty():
    assert group_concurrent_contiguous(ids(), ids()) == ([], [])


def test_empty_src_nonempty_dst():
    assert group_concurrent_contiguous(ids(), ids(1, 2, 3)) == ([], [])


def test_nonempty_src_empty_dst():
    # used to reach the vectorised diff and crash with a broadcast error
    assert group_concurrent_contiguous(ids(1, 2, 3), ids()) == ([], [])
    starts_s, starts_d, lengths = contiguous_runs(ids(1, 2, 3), ids())
    assert starts_s.size == starts_d.size == lengths.size == 0


def test_mismatched_lengths_raise_naming_both():
    with pytest.raises(ValueError, match=r"3 src ids vs 2 dst ids"):
        group_concurrent_contiguous(ids(1, 2, 3), ids(4, 5))


def test_descending_and_repeated_ids_split():
    assert as_lists(group_concurrent_contiguous(ids(5, 4, 4, 5), ids(0, 1, 2, 3))) == (
        [[5], [4], [4, 5]],
        [[0], [1], [2, 3]],
    )


def test_uint32_ids_do_not_wrap():
    s = np.array([0, 1, 2], dtype=np.uint32)
    d = np.array([2**32 - 3, 2**32 - 2, 2**32 - 1], dtype=np.uint32)
    src_runs, _ = group_concurrent_contiguous(s, d)
    assert len(src_runs) == 1


pairs = st.integers(0, 60).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 40), min_size=n, max_size=n),
        st.lists(st.integers(0, 40), min_size=n, max_size=n),
    )
)


def consecutive(a: np.ndarray) -> bool:
    return bool(np.all(np.diff(a.astype(np.int64)) == 1))


@settings(max_examples=300, deadline=None)
@given(pairs)
def test_properties(pair):
    s, d = np.array(pair[0], dtype=np.int32), np.array(pair[1], dtype=np.int32)
    src_runs, dst_runs = group_concurrent_contiguous(s, d)
    if s.size == 0:
        assert src_runs == dst_runs == []
        return
    # concatenation gives back the inputs
    assert np.array_equal(np.concatenate(src_runs), s)
    assert np.array_equal(np.concatenate(dst_runs), d)
    for a, b in zip(src_runs, dst_runs, strict=True):
        assert a.size == b.size > 0
        assert consecutive(a) and consecutive(b)
    # maximal: no two neighbouring runs could be merged
    for i in range(len(src_runs) - 1):
        joins = src_runs[i + 1][0] == src_runs[i][-1] + 1 and dst_runs[i + 1][0] == dst_runs[i][-1] + 1
        assert not joins
    # the start/length form agrees with the split form
    ss, ds, n = contiguous_runs(s, d)
    assert ss.tolist() == [r[0] for r in src_runs]
    assert ds.tolist() == [r[0] for r in dst_runs]
    assert n.tolist() == [r.size for r in src_runs]
