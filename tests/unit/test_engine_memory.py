"""Allocator, request table and KV pool: integrity, region byte math, strided views aliasing the buffer."""

import numpy as np
import pytest
import torch
from pdpair.engine.memory import KVPool, PageAllocator, PoolSet, ReqToTokenPool


def test_allocator_alloc_free_integrity():
    a = PageAllocator(10)
    x = a.alloc(4)
    assert x.dtype == np.int32 and x.tolist() == [0, 1, 2, 3]
    y = a.alloc(6)
    assert sorted(np.concatenate([x, y]).tolist()) == list(range(10))
    assert a.alloc(1) is None and a.num_free == 0
    a.check_integrity()
    a.free(x)
    assert a.num_free == 4 and a.num_used == 6
    a.check_integrity()
    z = a.alloc(4)
    assert sorted(z.tolist()) == [0, 1, 2, 3]
    a.free(y)
    a.free(z)
    assert a.num_free == a.num_total == 10
    a.check_integrity()


def test_allocator_rejects_double_free_and_detects_corruption():
    a = PageAllocator(8)
    x = a.alloc(3)
    a.free(x[:1])
    with pytest.raises(AssertionError, match="double free"):
        a.free(x[:1])
    a._in_use[7] = True  # simulate a leak bookkeeping bug
    with pytest.raises(AssertionError, match="free 6 \\+ used 3 != total 8"):
        a.check_integrity()


def test_allocator_random_churn_keeps_integrity():
    rng = np.random.default_rng(0)
    a = PageAllocator(64)
    held = []
    for _ in range(500):
        if held and rng.random() < 0.5:
            a.free(held.pop(rng.integers(len(held))))
        else:
            ids = a.alloc(int(rng.integers(0, 9)))
            if ids is not None:
                held.append(ids)
        a.check_integrity()
    assert a.num_used == sum(len(h) for h in held)
    all_held = np.concatenate(held) if held else np.zeros(0)
    assert np.unique(all_held).size == all_held.size


def test_kv_pool_regions_and_views_alias_buffer():
    pool = KVPool(num_pages=5, num_layers=3, page_size=4, kv_heads=2, head_dim=8, dtype=torch.float16,
                  device="cpu")
    region = pool.region()
    assert region.kind == "kv" and region.num_items == 5 and region.dtype == "float16"
    assert region.item_bytes == 3 * 2 * 4 * 2 * 8 * 2
    assert region.item_bytes == KVPool.page_bytes(3, 4, 2, 8, torch.float16)
    assert region.base_ptr == pool.buffer.data_ptr()
    assert region.item_bytes * region.num_items == pool.buffer.nbytes
    # a layer view is strided over the one buffer, not a copy
    k1 = pool.k_layers[1]
    assert k1.shape == (5, 4, 2, 8) and k1.data_ptr() == pool.buffer[0, 1, 0].data_ptr()
    assert k1.stride(0) == 3 * 2 * 4 * 2 * 8
    k1[2, 3] = 7.0
    assert (pool.buffer[2, 1, 0, 3] == 7.0).all()
    # write/read by token slot lands on (page, offset) of the item-major buffer
    slots = torch.tensor([2 * 4 + 1, 4 * 4 + 3])
    k = torch.randn(2, 2, 8).half()
    v = torch.randn(2, 2, 8).half()
    pool.write(2, slots, k, v)
    assert torch.equal(pool.buffer[2, 2, 0, 1], k[0]) and torch.equal(pool.buffer[4, 2, 1, 3], v[1])
    rk, rv = pool.read(2, slots)
    assert torch.equal(rk, k) and torch.equal(rv, v)


def test_pool_set_by_kind():
    pool = KVPool(6, 2, 16, 1, 4, torch.float32, "cpu")
    ps = PoolSet([pool], page_size=16)
    assert ps.kinds == ("kv",) and ps.page_size == 16
    assert [r.kind for r in ps.regions()] == ["kv"]
    a = ps.allocator("kv")
    assert a.num_total == 6
    ids = a.alloc(2)
    ps.check_integrity()
    assert not ps.all_free()
    a.free(ids)
    assert ps.all_free()


def test_req_to_token_assign_pages():
    t = ReqToTokenPool(num_rows=2, max_context=10, page_size=4, device="cpu")
    row = t.alloc()
    t.assign_pages(row, 0, np.array([5, 2], dtype=np.int32))
    t.assign_pages(row, 2, np.array([7], dtype=np.int32))
    assert t.table[row, :12].tolist() == [20, 21, 22, 23, 8, 9, 10, 11, 28, 29, 30, 31]
    assert t.alloc() is not None and t.alloc() is None
    t.free(row)
    assert t.num_free == 1


def test_req_to_token_batched_writes_equal_one_by_one():
    """Inside `batched()` writes wait for the exit and land in one scatter per kind, equal to writing each at
    once; a lone write takes the plain path."""
    writes = [(0, 0, [7, 2], "kv"), (3, 1, [5], "kv"), (1, 2, [9, 4, 1], "swa"), (2, 0, [3], "kv"),
              (1, 0, [8], "swa")]
    plain = ReqToTokenPool(num_rows=4, max_context=24, page_size=4, device="cpu", kinds=("kv", "swa"))
    for row, first, pages, kind in writes:
        plain.assign_pages(row, first, np.array(pages), kind)
    grouped = ReqToTokenPool(num_rows=4, max_context=24, page_size=4, device="cpu", kinds=("kv", "swa"))
    with grouped.batched():
        for row, first, pages, kind in writes:
            grouped.assign_pages(row, first, np.array(pages, dtype=np.int32), kind)
        assert not grouped.tables["kv"].any() and not grouped.tables["swa"].any()  # nothing written yet
    for kind in ("kv", "swa"):
        assert torch.equal(grouped.tables[kind], plain.tables[kind]), kind
    assert plain.tables["kv"][3, 4:8].tolist() == [20, 21, 22, 23]  # page 5, page index 1 of row 3
    with grouped.batched():
        grouped.assign_pages(0, 2, np.array([6]), "kv")
    assert grouped.tables["kv"][0, 8:12].tolist() == [24, 25, 26, 27]


def test_batched_writes_reach_a_table_mirror_once_each():
    """A multi-rank leader's table writes made inside `batched()` are logged once each and a follower replaying
    the log ends with the leader's table."""
    from pdpair.engine.distributed.rank_graphs import TableMirror

    leader, follower = ReqToTokenPool(4, 64, 4, "cpu"), ReqToTokenPool(4, 64, 4, "cpu")
    mirror = TableMirror(leader)
    with leader.batched():
        leader.assign_pages(2, 0, np.array([5, 7]))
        leader.assign_pages(0, 3, np.array([1]))
    log = mirror.take()
    assert len(log) == 2
    TableMirror.apply(follower, log)
    assert torch.equal(follower.table, leader.table) and leader.table[0, 12:16].tolist() == [4, 5, 6, 7]
