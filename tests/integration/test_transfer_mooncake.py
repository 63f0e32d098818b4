"""Two OS processes, two Mooncake engines over loopback TCP: pages land byte for byte."""

from __future__ import annotations

import numpy as np
import pytest
from pdpair.transfer import TransferPlan, build_plan, check_compatible
from pdpair.transfer.loopback import LoopbackPeer

LAYERS, KV_HEADS, HEAD_DIM, PAGE = 30, 3, 64, 16
PAGE_BYTES = LAYERS * 2 * PAGE * KV_HEADS * HEAD_DIM * 2  # page-major [layer, k/v, slot, head, dim] in bf16
SRC_PAGES, DST_PAGES = 56, 48  # ~40 MiB of shared memory in all
SMALL_BYTES, SMALL_ITEMS = 64, 12_500

SMALL = ("small", SMALL_BYTES, SMALL_ITEMS, "uint8")

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]


@pytest.fixture(scope="module")
def peers():
    prefill = LoopbackPeer("prefill", [("kv", PAGE_BYTES, SRC_PAGES, "bfloat16"), SMALL], fingerprint="m")
    decode = LoopbackPeer("decode", [("kv", PAGE_BYTES, DST_PAGES, "bfloat16"), SMALL], fingerprint="m")
    rng = np.random.default_rng(7)
    for peer in (prefill, decode):
        for kind in ("kv", "small"):
            region = peer.layout.region(kind)
            peer.fill(kind, rng.integers(0, 256, (region.num_items, region.item_bytes), dtype=np.uint8))
    yield prefill, decode
    prefill.close()
    decode.close()


def fragmented(rng: np.random.Generator, pool: int, n: int) -> np.ndarray:
    """``n`` distinct pages of a pool of ``pool``, in increasing order: runs of random length."""
    return np.sort(rng.choice(pool, size=n, replace=False)).astype(np.int32)


@pytest.mark.parametrize("order", ["sorted", "shuffled"])
def test_fragmented_kv_pages_land_byte_exact(peers, order):
    prefill, decode = peers
    check_compatible(decode.layout, prefill.layout)
    rng = np.random.default_rng(11 if order == "sorted" else 12)
    n = 32
    src_ids = fragmented(rng, SRC_PAGES, n)
    dst_ids = fragmented(rng, DST_PAGES, n)
    if order == "shuffled":
        dst_ids = rng.permutation(dst_ids)
    before = decode.read("kv")
    expected = before.copy()
    expected[dst_ids] = prefill.read("kv")[src_ids]
    assert not np.array_equal(expected, before)

    result = prefill.send(decode.layout, {"kv": (src_ids, dst_ids)})

    assert result.ok, result.error
    runs = 1 + int(np.sum((np.diff(src_ids) != 1) | (np.diff(dst_ids) != 1)))
    assert (result.entries, result.nbytes) == (runs, n * PAGE_BYTES)
    after, source = decode.read("kv"), prefill.read("kv")
    assert np.array_equal(after[dst_ids], source[src_ids])  # destination pages = source pages
    assert np.array_equal(after, expected)  # and no other destination byte changed
    # the page-major layout holds every layer's K and V of a page in the item: spot-check one layer's view
    view = after.reshape(DST_PAGES, LAYERS, 2, PAGE, KV_HEADS, HEAD_DIM * 2)
    src_view = source.reshape(SRC_PAGES, LAYERS, 2, PAGE, KV_HEADS, HEAD_DIM * 2)
    assert np.array_equal(view[dst_ids, 17, 1], src_view[src_ids, 17, 1])


def test_plan_with_more_than_5000_entries(peers):
    prefill, decode = peers
    src_ids = np.arange(0, 2 * 6_000, 2, dtype=np.int32)  # every other item: no two entries merge
    dst_ids = np.arange(SMALL_ITEMS - 1, SMALL_ITEMS - 1 - 6_000, -1, dtype=np.int32)  # descending
    plan = build_plan(prefill.layout, decode.layout, {"small": (src_ids, dst_ids)})
    assert len(plan) == 6_000
    before = decode.read("small")
    expected = before.copy()
    expected[dst_ids] = prefill.read("small")[src_ids]

    result = prefill.write(decode.layout.session_id, plan)

    assert result.ok, result.error
    assert (result.entries, result.batches, result.nbytes) == (6_000, 6, 6_000 * SMALL_BYTES)
    assert np.array_equal(decode.read("small"), expected)
    # the peer is still healthy afterwards
    one = build_plan(prefill.layout, decode.layout, {"small": (np.array([1]), np.array([0]))})
    assert prefill.write(decode.layout.session_id, one).ok
    assert np.array_equal(decode.read("small")[0], prefill.read("small")[1])


def test_probe_and_single_entry(peers):
    prefill, decode = peers
    assert prefill.probe(decode.layout.session_id)
    src, dst = prefill.layout.region("kv"), decode.layout.region("kv")
    plan = TransferPlan(
        np.array([src.base_ptr], np.uint64),
        np.array([dst.base_ptr + PAGE_BYTES], np.uint64),
        np.array([3 * PAGE_BYTES], np.uint64),
        np.array([3]),
    )
    assert prefill.write(decode.layout.session_id, plan).ok
    assert np.array_equal(decode.read("kv")[1:4], prefill.read("kv")[0:3])


def test_worker_threads_share_one_engine(peers):
    """Several requests through TransferWorkers (two threads, small batches) into one peer."""
    prefill, decode = peers
    rng = np.random.default_rng(5)
    src_ids = rng.permutation(SMALL_ITEMS)[:4_000].astype(np.int32)
    dst_ids = rng.permutation(SMALL_ITEMS)[:4_000].astype(np.int32)
    requests = [{"small": (src_ids[i::4], dst_ids[i::4])} for i in range(4)]
    expected = decode.read("small")
    expected[dst_ids] = prefill.read("small")[src_ids]

    results = prefill.send_many(decode.layout, requests)

    assert all(r.ok for r in results), [r.error for r in results]
    assert sum(r.nbytes for r in results) == 4_000 * SMALL_BYTES
    assert all(r.batches == 1 for r in results)  # 1,000 entries each: one engine call
    assert np.array_equal(decode.read("small"), expected)
