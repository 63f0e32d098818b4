"""Transfer plans: addresses against a per-item reference, id validation, protocol errors."""

from __future__ import annotations

import numpy as np
import pytest
from pdpair.transfer import (
    InvalidPages,
    LayoutMismatch,
    MemoryLayout,
    MemoryRegion,
    ProtocolError,
    TransferPlan,
    build_plan,
)

KV, SSM = 3 * 1024, 512


def layout(node: str, kv_base: int, kv_items: int, ssm_base: int = 0, ssm_items: int = 4) -> MemoryLayout:
    return MemoryLayout(
        node,
        f"{node}:1",
        "tcp",
        16,
        "fp",
        (
            MemoryRegion("kv", kv_base, KV, kv_items, "bfloat16"),
            MemoryRegion("ssm", ssm_base, SSM, ssm_items, "f32"),
        ),
    )


SRC, DST = layout("p", 0x100000, 50, 0x900000), layout("d", 0x4000000, 40, 0xA00000)


def expand(plan: TransferPlan, item_bytes: int) -> list[tuple[int, int]]:
    """Per-item (src, dst) address pairs covered by a plan."""
    out = []
    for s, d, n in zip(plan.src_addrs.tolist(), plan.dst_addrs.tolist(), plan.lengths.tolist(), strict=True):
        assert n % item_bytes == 0
        out += [(s + k * item_bytes, d + k * item_bytes) for k in range(n // item_bytes)]
    return out


def test_addresses_match_per_item_reference():
    rng = np.random.default_rng(1)
    src_ids = rng.permutation(50)[:30].astype(np.int32)
    src_ids[5:15] = np.arange(20, 30)  # a long run on the source side
    src_ids = np.unique(src_ids)  # unique; keep some consecutive runs
    dst_ids = np.sort(rng.permutation(40)[: src_ids.size]).astype(np.int32)
    plan = build_plan(SRC, DST, {"kv": (src_ids, dst_ids), "ssm": (np.array([2]), np.array([0]))})
    kv_ref = [
        (0x100000 + s * KV, 0x4000000 + d * KV)
        for s, d in zip(src_ids.tolist(), dst_ids.tolist(), strict=True)
    ]
    n_kv = int(np.searchsorted(plan.src_addrs, 0x900000))
    kv_plan = TransferPlan(
        *(getattr(plan, f)[:n_kv] for f in ("src_addrs", "dst_addrs", "lengths", "entry_items"))
    )
    assert expand(kv_plan, KV) == kv_ref
    assert (int(plan.src_addrs[-1]), int(plan.dst_addrs[-1]), int(plan.lengths[-1])) == (
        0x900000 + 2 * SSM,
        0xA00000,
        SSM,
    )
    assert plan.num_items == src_ids.size + 1
    assert plan.nbytes == src_ids.size * KV + SSM
    assert plan.src_addrs.dtype == plan.dst_addrs.dtype == plan.lengths.dtype == np.uint64
    # one entry per run, not per item
    breaks = np.sum((np.diff(src_ids) != 1) | (np.diff(dst_ids) != 1))
    assert len(plan) == breaks + 1 + 1


@pytest.mark.parametrize(
    "pairs,kind,bad,bound,side",
    [
        ({"kv": ([0, 1], [39, 40])}, "kv", 40, 40, "dst"),
        ({"kv": ([0, 1], [-1, 3])}, "kv", -1, 40, "dst"),
        ({"kv": ([49, 50], [0, 1])}, "kv", 50, 50, "src"),
        ({"kv": ([0], [0]), "ssm": ([0], [4])}, "ssm", 4, 4, "dst"),
    ],
)
def test_out_of_range_ids_raise_invalid_pages(pairs, kind, bad, bound, side):
    with pytest.raises(InvalidPages) as info:
        build_plan(SRC, DST, {k: (np.array(s), np.array(d)) for k, (s, d) in pairs.items()})
    assert (info.value.kind, info.value.id, info.value.bound, info.value.side) == (kind, bad, bound, side)


def test_empty_cases():
    e = np.zeros(0, np.int32)
    assert len(build_plan(SRC, DST, {"kv": (e, e)})) == 0
    assert len(build_plan(SRC, DST, {"kv": (e, np.array([1, 2]))})) == 0  # nothing to send
    assert len(build_plan(SRC, DST, {})) == 0
    with pytest.raises(ProtocolError, match="zero destinations"):
        build_plan(SRC, DST, {"kv": (np.array([1, 2]), e)})


def test_protocol_errors():
    with pytest.raises(ProtocolError, match="3 source items vs 2"):
        build_plan(SRC, DST, {"kv": (np.array([1, 2, 3]), np.array([1, 2]))})
    with pytest.raises(ProtocolError, match="no 'swa' region"):
        build_plan(SRC, DST, {"swa": (np.array([1]), np.array([1]))})
    with pytest.raises(ProtocolError, match="repeat"):
        build_plan(SRC, DST, {"kv": (np.array([1, 2]), np.array([3, 3]))})
    other = MemoryLayout("d", "d:1", "tcp", 16, "fp", (MemoryRegion("kv", 0, KV * 2, 9, "bfloat16"),))
    with pytest.raises(LayoutMismatch, match="item_bytes"):
        build_plan(SRC, other, {"kv": (np.array([1]), np.array([1]))})
    with pytest.raises(ValueError, match="integer"):
        build_plan(SRC, DST, {"kv": (np.array([1.0]), np.array([1]))})


def test_batches_split_and_concat():
    plan = build_plan(SRC, DST, {"kv": (np.arange(0, 40, 2), np.arange(0, 20))})
    assert len(plan) == 20
    parts = plan.batches(7)
    assert [len(p) for p in parts] == [7, 7, 6]
    back = TransferPlan.concat(parts)
    assert np.array_equal(back.src_addrs, plan.src_addrs) and back.nbytes == plan.nbytes == 20 * KV
    assert sum(p.num_items for p in parts) == 20
    assert TransferPlan.empty().batches(4) == []


def test_kind_totals_count_items_bytes_and_runs_per_kind():
    """Per-pool figures (TransferStats.pools): kv ids in two runs, ssm ids in one; concatenation sums them."""
    kv_src, kv_dst = np.array([3, 4, 5, 9]), np.array([10, 11, 12, 13])  # runs: 3-5 / 9
    plan = build_plan(SRC, DST, {"kv": (kv_src, kv_dst), "ssm": (np.array([1, 2]), np.array([0, 1]))})
    assert plan.kind_totals == {"kv": (4, 4 * KV, 2), "ssm": (2, 2 * SSM, 1)}
    assert sum(t[1] for t in plan.kind_totals.values()) == plan.nbytes
    assert sum(t[2] for t in plan.kind_totals.values()) == len(plan)
    both = TransferPlan.concat([plan, build_plan(SRC, DST, {"kv": (np.array([0]), np.array([0]))})])
    assert both.kind_totals == {"kv": (5, 5 * KV, 3), "ssm": (2, 2 * SSM, 1)}


def test_transfer_tally_carries_pool_figures_over_the_wire():
    from pdpair.node.tally import TransferTally

    t = TransferTally()
    t.add(6, 100, 3, 1, 0.1, kinds={"kv": (4, 60, 2), "swa": (2, 40, 1)})
    t.add(1, 15, 1, 1, 0.1, kinds={"kv": (1, 15, 1)})
    msg = t.to_proto()
    assert {p.kind: (p.items, p.bytes, p.entries) for p in msg.pools} == {"kv": (5, 75, 3), "swa": (2, 40, 1)}
    assert TransferTally.from_proto(msg).pools == {"kv": [5, 75, 3], "swa": [2, 40, 1]}
