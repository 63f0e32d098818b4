"""Prefill-node managers without a model: admission (waiting), bootstrap (handshakes), inflight transfers."""

from __future__ import annotations

import asyncio

import pytest
from pdpair.node.admission import Admission, QueueFull
from pdpair.prefill_node.bootstrap import BootstrapManager, PeerClaim, PeerRefused, UnknownPeer
from pdpair.prefill_node.inflight import InflightManager
from pdpair.transfer import LayoutMismatch, MemoryLayout, MemoryRegion, TransferResult


def _layout(node_id="d", session="127.0.0.1:1", **over) -> MemoryLayout:
    fields = dict(protocol="tcp", page_size=16, model_fingerprint="fp",
                  regions=(MemoryRegion("kv", 4096, 1024, 10, "float32"),))
    fields.update(over)
    return MemoryLayout(node_id=node_id, session_id=session, **fields)


def test_admission_bounds_and_unique_ids():
    a = Admission(2)
    a.admit("a")
    with pytest.raises(ValueError, match="already in flight"):
        a.admit("a")
    a.admit("b")
    with pytest.raises(QueueFull, match="limit 2"):
        a.admit("c")
    a.done("a")
    a.admit("c")
    assert len(a) == 2 and "c" in a and "a" not in a
    with pytest.raises(ValueError, match="empty"):
        a.admit("")


LOCAL = PeerClaim(None, "127.0.0.1")


def test_bootstrap_pairs_compatible_peers_only():
    b = BootstrapManager(_layout("p", "127.0.0.1:2"))
    with pytest.raises(UnknownPeer):
        b.peer("d")
    assert b.handshake(_layout(regions=(MemoryRegion("kv", 0, 1024, 99, "float32"),)), LOCAL).node_id == "p"
    assert b.peer("d").regions[0].num_items == 99  # item counts may differ between nodes
    with pytest.raises(LayoutMismatch) as info:
        b.handshake(_layout("d2", page_size=32), LOCAL)
    assert info.value.field == "page_size"
    with pytest.raises(LayoutMismatch, match="dtype"):
        b.handshake(_layout("d3", regions=(MemoryRegion("kv", 0, 1024, 9, "bfloat16"),)), LOCAL)
    with pytest.raises(ValueError, match="no transfer session"):
        b.handshake(_layout("d4", session=""), LOCAL)
    assert len(b) == 1
    with pytest.raises(PeerRefused, match="new id"):  # a restarted decode node comes back under a new id
        b.handshake(_layout(session="127.0.0.1:9"), LOCAL)
    assert b.peer("d").session_id == "127.0.0.1:1"


def test_inflight_tallies_results_and_reports_failures():
    async def main():
        seen = []
        m = InflightManager(on_result=seen.append)
        m.open("r")
        loop = asyncio.get_running_loop()
        f1, f2, f3 = loop.create_future(), loop.create_future(), loop.create_future()
        m.add("r", f1, items=4)
        m.add("r", f2, items=2)
        assert m.num_batches == 2 and m.num_requests == 1 and m.num_transferring == 1
        f1.set_result(TransferResult(True, 4096, 1, 1, 0.5))
        await asyncio.sleep(0)
        assert m.failed("r") is None
        f2.set_result(TransferResult(True, 2048, 2, 1, 0.25))
        tr = await m.wait("r")
        assert (tr.tally.items, tr.tally.bytes, tr.tally.entries, tr.tally.batches) == (6, 6144, 3, 2)
        assert tr.tally.seconds == pytest.approx(0.75) and m.num_batches == 0 and m.num_transferring == 0
        m.add("r", f3, items=1)
        f3.set_result(TransferResult(False, 0, 0, 1, 0.1, "write to x failed (rc=-1)"))
        await m.wait("r")
        assert "rc=-1" in m.failed("r") and len(seen) == 3
        with pytest.raises(ValueError):
            m.open("r")
        m.close("r")
        assert m.num_requests == 0

    asyncio.run(main())


def test_inflight_ignores_batches_dropped_by_cancel():
    async def main():
        m = InflightManager()
        m.open("r")
        f = asyncio.get_running_loop().create_future()
        m.add("r", f, items=3)
        f.set_result(TransferResult(False, 0, 0, 0, 0.0, "cancelled with 1 batches unsent", cancelled=True))
        tr = await m.wait("r")
        assert tr.error is None and tr.tally.items == 0

    asyncio.run(main())
