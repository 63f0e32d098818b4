"""A prefill node facing bad peers: layout mismatches -> FAILED_PRECONDITION naming the field, malformed
page registrations -> INVALID_ARGUMENT, a dead transfer target -> ABORTED; it keeps serving and every
page comes back."""

from __future__ import annotations

import re
import time

import grpc
import pytest
from pdpair.proto import pdpair_pb2 as pb

from tests.e2e._client import new_rid, prompt, rpc_error, sampling, wait_all_free
from tests.e2e._nodes import start_cluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PAGE = 16
ITEM_BYTES = 30 * 2 * PAGE * 3 * 64 * 4  # one fp32 KV page of SmolLM2-135M
DECODE_ITEMS = 100
HOLD = 8  # quarantine seconds
SMALL_POOL = 40  # pages of the decode node
Code = grpc.StatusCode


@pytest.fixture(scope="module")
def pair():
    """The prefill node under test, and a decode node with a small pool (for the exhaustion test)."""
    c = start_cluster(prefill_args=("--quarantine-seconds", str(HOLD)),
                      decode_args=("--max-pages", str(SMALL_POOL), "--prealloc-timeout", "1"))
    yield c
    assert c.stop() == {"prefill": 0, "decode": 0}


@pytest.fixture(scope="module")
def node(pair):
    return pair.prefill


def _layout(**over) -> pb.MemoryLayout:
    fields = dict(node_id="fake-decode", session_id="127.0.0.1:1", protocol="tcp", page_size=PAGE,
                  model_fingerprint="?", regions=[pb.MemoryRegion(kind="kv", base_ptr=1 << 30, item_bytes=ITEM_BYTES,
                                                                  num_items=DECODE_ITEMS, dtype="float32")])
    fields.update(over)
    return pb.MemoryLayout(**fields)


def _handshake_error(node, layout) -> grpc.RpcError:
    err = rpc_error(node.stub.Handshake, pb.HandshakeRequest(decode_layout=layout), timeout=30)
    assert err is not None, "handshake with a mismatched layout succeeded"
    return err


@pytest.fixture(scope="module")
def paired(node) -> pb.MemoryLayout:
    """Pair a fake decode node: learn the fingerprint from the mismatch message, then handshake for real."""
    err = _handshake_error(node, _layout())
    assert err.code() == Code.FAILED_PRECONDITION and "model_fingerprint" in err.details()
    fingerprint = re.search(r"local '([^']+)'", err.details()).group(1)
    layout = _layout(model_fingerprint=fingerprint)
    resp = node.stub.Handshake(pb.HandshakeRequest(decode_layout=layout), timeout=30)
    assert resp.prefill_layout.page_size == PAGE and resp.prefill_layout.model_fingerprint == fingerprint
    assert resp.prefill_layout.regions[0].item_bytes == ITEM_BYTES and resp.prefill_layout.session_id
    return layout


@pytest.mark.parametrize("field, change", [
    ("page_size", dict(page_size=32)),
    ("protocol", dict(protocol="rdma")),
    ("regions[kv].item_bytes", dict(regions=[pb.MemoryRegion(kind="kv", base_ptr=1, item_bytes=ITEM_BYTES // 2,
                                                              num_items=10, dtype="float32")])),
    ("regions", dict(regions=[pb.MemoryRegion(kind="swa", base_ptr=1, item_bytes=ITEM_BYTES, num_items=10,
                                              dtype="float32")])),
])
def test_handshake_mismatch_names_the_field(node, paired, field, change):
    err = _handshake_error(node, _layout(model_fingerprint=paired.model_fingerprint, **change))
    assert err.code() == Code.FAILED_PRECONDITION
    assert f"mismatch on {field}:" in err.details(), err.details()


def _prefill(node, ids, pools, decode_node_id="fake-decode"):
    req = pb.PrefillRequest(rid=new_rid("bad"), token_ids=ids, sampling=sampling(max_new_tokens=4),
                            registration=pb.PageRegistration(decode_node_id=decode_node_id, pools=pools))
    return rpc_error(node.stub.Prefill, req, timeout=60)


IDS = prompt(5 * PAGE + 3)  # 6 pages
GOOD = list(range(10, 16))
BAD_REGISTRATIONS = {
    "out_of_range": [pb.ItemIds(kind="kv", ids=GOOD[:-1] + [DECODE_ITEMS])],
    "duplicated": [pb.ItemIds(kind="kv", ids=GOOD[:-1] + [GOOD[0]])],
    "wrong_kind": [pb.ItemIds(kind="swa", ids=GOOD)],
    "kind_twice": [pb.ItemIds(kind="kv", ids=GOOD), pb.ItemIds(kind="kv", ids=GOOD)],
    "too_few": [pb.ItemIds(kind="kv", ids=GOOD[:-1])],
    "too_many": [pb.ItemIds(kind="kv", ids=GOOD + [20])],
    "missing": [],
}


@pytest.mark.parametrize("case", list(BAD_REGISTRATIONS))
def test_malformed_registration_is_invalid_argument(node, paired, case):
    err = _prefill(node, IDS, BAD_REGISTRATIONS[case])
    assert err is not None and err.code() == Code.INVALID_ARGUMENT, (case, err)


@pytest.mark.parametrize("cached, ids", [
    (PAGE + 1, GOOD[2:]),  # not whole pages
    (6 * PAGE, []),  # past the prompt (83 tokens)
    (2 * PAGE, GOOD),  # whole pages, but the ids still cover the cached prefix
    (2 * PAGE, GOOD[3:]),  # one page short of the uncached suffix
])
def test_inconsistent_cached_prefix_is_invalid_argument(node, paired, cached, ids):
    req = pb.PrefillRequest(rid=new_rid("cached"), token_ids=IDS, sampling=sampling(max_new_tokens=4),
                            registration=pb.PageRegistration(decode_node_id="fake-decode", cached_prefix_len=cached,
                                                             pools=[pb.ItemIds(kind="kv", ids=ids)]))
    err = rpc_error(node.stub.Prefill, req, timeout=60)
    assert err is not None and err.code() == Code.INVALID_ARGUMENT, (cached, err)
    assert "cached_prefix_len" in err.details() or "the prompt needs exactly 4" in err.details(), err.details()


def test_registration_for_a_dp_rank_without_region_set_is_invalid_argument(node, paired):
    req = pb.PrefillRequest(rid=new_rid("dp"), token_ids=IDS, sampling=sampling(max_new_tokens=4),
                            registration=pb.PageRegistration(decode_node_id="fake-decode", dp_rank=1,
                                                             pools=[pb.ItemIds(kind="kv", ids=GOOD)]))
    err = rpc_error(node.stub.Prefill, req, timeout=60)
    assert err is not None and err.code() == Code.INVALID_ARGUMENT
    assert "DP rank 1 has no region set" in err.details() and "DP ranks [0]" in err.details(), err.details()


def test_handshake_checks_every_dp_rank_region_set(node, paired):
    """A decode layout with two DP ranks: the second rank's head split (item bytes) must match too."""
    def region(dp_rank, item_bytes):
        return pb.MemoryRegion(kind="kv", base_ptr=(1 << 30) * (dp_rank + 1), item_bytes=item_bytes,
                               num_items=DECODE_ITEMS, dtype="float32", dp_rank=dp_rank)

    fp = paired.model_fingerprint
    err = _handshake_error(node, _layout(model_fingerprint=fp, regions=[region(0, ITEM_BYTES),
                                                                          region(1, ITEM_BYTES // 2)]))
    assert err.code() == Code.FAILED_PRECONDITION and "mismatch on regions[kv].item_bytes" in err.details()


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative numbers: two's complement, ten bytes
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, payload: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def test_negative_ids_on_the_wire_are_invalid_argument(node, paired):
    """A peer that encodes -1 (as int64 varints do) into the uint32 id list."""
    ids = [10, 11, 12, 13, 14, -1]
    item = _field(1, b"kv") + _field(2, b"".join(_varint(i) for i in ids))
    registration = _field(1, b"fake-decode") + _field(2, item)
    head = pb.PrefillRequest(rid=new_rid("neg"), token_ids=IDS, sampling=sampling(max_new_tokens=4))
    raw = head.SerializeToString() + _field(4, registration)
    call = node.channel.unary_unary("/pdpair.v1.PrefillNode/Prefill", request_serializer=lambda b: b,
                                    response_deserializer=pb.PrefillResult.FromString)
    err = rpc_error(call, raw, timeout=60)
    assert err is not None and err.code() == Code.INVALID_ARGUMENT and "out of range" in err.details()


def test_bad_prompts_and_unknown_peers(node, paired):
    good = [pb.ItemIds(kind="kv", ids=GOOD)]
    assert _prefill(node, IDS, good, decode_node_id="never-paired").code() == Code.FAILED_PRECONDITION
    assert _prefill(node, [], []).code() == Code.INVALID_ARGUMENT
    assert _prefill(node, IDS[:-1] + [10**6], good).code() == Code.INVALID_ARGUMENT


def test_dead_transfer_target_aborts_and_pages_come_back(node, paired):
    """The fake decode session does not exist: the first chunk's write fails -> ABORTED."""
    err = _prefill(node, IDS, [pb.ItemIds(kind="kv", ids=GOOD)])
    assert err is not None and err.code() == Code.ABORTED and "transfer failed" in err.details()
    kv = node.stats().pools[0]
    # the failed write may still land: the request's 6 source pages are held, not freed (for HOLD seconds)
    assert kv.quarantined == 6 and kv.free + kv.cached + kv.quarantined == kv.total, kv


def test_no_room_for_the_prompt_is_resource_exhausted(pair):
    """The decode node cannot preallocate while a long local prefill holds its pool: after
    --prealloc-timeout the request fails with RESOURCE_EXHAUSTED before reaching the prefill node."""
    p, d = pair.prefill, pair.decode
    hog = d.stub.Generate(pb.GenerateRequest(rid=new_rid("hog"), token_ids=prompt(37 * PAGE + 5),
                                             sampling=sampling(11, ignore_eos=True)),
                          timeout=300)  # 38 of the 40 pages, through its prefill and all 11 decode steps
    deadline = time.monotonic() + 120
    while d.stats().pools[0].free > 2:
        assert time.monotonic() < deadline, "the long prompt never took its pages"
        time.sleep(0.05)
    before = p.stats().requests_total
    req = pb.GenerateRequest(rid=new_rid("no-room"), token_ids=prompt(3 * PAGE), sampling=sampling(4),
                             prefill_addr=p.addr)
    err = rpc_error(d.stub.Generate, req, timeout=60)
    assert err is not None and err.code() == Code.RESOURCE_EXHAUSTED, err
    assert p.stats().requests_total == before
    hog.cancel()
    wait_all_free(d)


def test_node_still_serves_and_holds_no_pages(node, paired):
    from grpc_health.v1 import health_pb2

    assert node.health() == health_pb2.HealthCheckResponse.SERVING
    st = wait_all_free(node, timeout=HOLD + 30)
    assert st.integrity_ok and st.waiting == st.prefilling == st.transferring == 0
    assert node.stub.ModelInfo(pb.ModelInfoRequest(), timeout=30).role == "prefill"
