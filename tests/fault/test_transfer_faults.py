"""Transfer failures between two OS processes over loopback TCP (Mooncake)."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
from pdpair.transfer import InvalidPages, LayoutMismatch, ProtocolError, TransferPlan, check_compatible
from pdpair.transfer.loopback import LoopbackPeer

ITEM, ITEMS = 4096, 64
TIMEOUT_S = 2  # MC_TRANSFER_TIMEOUT in both processes

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]


def pair(src_dtype: str = "bfloat16", dst_dtype: str = "bfloat16", dst_page: int = 16):
    prefill = LoopbackPeer("prefill", [("kv", ITEM, ITEMS, src_dtype)], fingerprint="m", timeout_s=TIMEOUT_S)
    decode = LoopbackPeer(
        "decode", [("kv", ITEM, ITEMS, dst_dtype)], page_size=dst_page, fingerprint="m", timeout_s=TIMEOUT_S
    )
    rng = np.random.default_rng(3)
    prefill.fill("kv", rng.integers(0, 256, (ITEMS, ITEM), dtype=np.uint8))
    decode.fill("kv", rng.integers(0, 256, (ITEMS, ITEM), dtype=np.uint8))
    return prefill, decode


@pytest.fixture
def peers():
    prefill, decode = pair()
    yield prefill, decode
    prefill.close()
    decode.close()


def test_target_killed_before_write_gives_error_not_hang(peers):
    prefill, decode = peers
    target = decode.layout
    assert prefill.probe(target.session_id)
    decode.kill()
    ids = np.arange(8, dtype=np.int32)
    # the reply must come within the transfer timeout (plus process slack), or _reply raises TimeoutError
    result = prefill.send(target, {"kv": (ids, ids)}, timeout_s=TIMEOUT_S + 30)
    assert not result.ok
    assert target.session_id in result.error and result.nbytes == 0
    assert not prefill.probe(target.session_id)


def test_frozen_target_times_out_with_error(peers):
    prefill, decode = peers
    ids = np.arange(4, dtype=np.int32)
    assert prefill.send(decode.layout, {"kv": (ids, ids)}).ok  # connection established
    os.kill(decode.process.pid, signal.SIGSTOP)
    try:
        result = prefill.send(decode.layout, {"kv": (ids + 10, ids + 10)}, timeout_s=TIMEOUT_S + 30)
    finally:
        os.kill(decode.process.pid, signal.SIGCONT)
    assert not result.ok and decode.layout.session_id in result.error


def test_out_of_range_destination_moves_no_byte(peers):
    prefill, decode = peers
    before = decode.read("kv")
    src = np.array([0, 1, 2, 3], dtype=np.int32)
    for dst, bad in (([5, 6, 7, ITEMS], ITEMS), ([-1, 0, 1, 2], -1), ([5, 6, 7, 10**6], 10**6)):
        with pytest.raises(InvalidPages) as info:
            prefill.send(decode.layout, {"kv": (src, np.array(dst, dtype=np.int64))})
        assert (info.value.kind, info.value.id, info.value.bound, info.value.side) == (
            "kv",
            bad,
            ITEMS,
            "dst",
        )
    with pytest.raises(InvalidPages, match="src kv item id 64"):
        prefill.send(decode.layout, {"kv": (np.array([ITEMS]), np.array([0]))})
    with pytest.raises(ProtocolError, match="zero destinations"):
        prefill.send(decode.layout, {"kv": (src, np.zeros(0, np.int32))})
    # Mooncake reads any source address over TCP: the engine refuses entries outside its regions
    region, dst_base = prefill.layout.region("kv"), decode.layout.region("kv").base_ptr
    for src_addr, length in (
        (region.end_ptr, ITEM),
        (region.end_ptr - ITEM, 2 * ITEM),
        (region.base_ptr - ITEM, ITEM),
    ):
        rogue = TransferPlan(
            *(np.array([v], dtype=np.uint64) for v in (src_addr, dst_base, length)), np.ones(1, np.int64)
        )
        with pytest.raises(ValueError, match="outside the registered regions"):
            prefill.write(decode.layout.session_id, rogue)
    time.sleep(0.2)
    assert np.array_equal(decode.read("kv"), before)
    # the peer is not poisoned: a valid write still lands
    assert prefill.send(decode.layout, {"kv": (src, src + 5)}).ok
    assert np.array_equal(decode.read("kv")[5:9], prefill.read("kv")[0:4])


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(dst_dtype="float16"), "regions[kv].dtype"),
        (dict(dst_page=32), "page_size"),
    ],
)
def test_mismatched_layouts_raise_naming_field(kwargs, field):
    prefill, decode = pair(**kwargs)
    try:
        with pytest.raises(LayoutMismatch) as info:
            check_compatible(decode.layout, prefill.layout)
        assert info.value.field == field and field in str(info.value)
    finally:
        prefill.close()
        decode.close()


def test_mc_log_dir_is_ignored(monkeypatch, tmp_path):
    monkeypatch.setenv("MC_LOG_DIR", str(tmp_path))  # Mooncake aborts the process when this is set
    peer = LoopbackPeer("solo", [("kv", ITEM, 2, "uint8")], start_timeout_s=60)
    try:
        assert peer.probe(peer.layout.session_id)
    finally:
        peer.close()
