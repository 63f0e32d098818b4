"""Hostile gRPC messages against real nodes (bounded hypothesis runs): random Generate, Prefill, Handshake
and Abort messages and raw garbage bytes get a typed status — never UNKNOWN, INTERNAL or a crash — and
afterwards both nodes are SERVING with every page free."""

from __future__ import annotations

import collections
import itertools
import math

import grpc
import pytest
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pdpair.proto import pdpair_pb2 as pb

from tests.e2e._client import wait_all_free
from tests.e2e._nodes import start_cluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
           grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.RESOURCE_EXHAUSTED}
COUNTS: collections.Counter = collections.Counter()
U32, U64 = (1 << 32) - 1, (1 << 64) - 1

floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32),
                   st.sampled_from([0.0, 1.0, -1.0, 1e-38, 2.0, 100.0]))
token_ids = st.lists(st.one_of(st.integers(0, 60000), st.integers(0, U32)), max_size=40)
sampling = st.builds(
    pb.SamplingParams, max_new_tokens=st.integers(0, 3), temperature=floats, top_p=floats,
    top_k=st.integers(-(1 << 31), (1 << 31) - 1), min_p=floats, seed=st.one_of(st.none(), st.integers(0, U64)),
    stop=st.lists(st.text(max_size=5), max_size=3), stop_token_ids=st.lists(st.integers(0, U32), max_size=3),
    ignore_eos=st.booleans(), presence_penalty=floats, frequency_penalty=floats, repetition_penalty=floats,
    logit_bias=st.dictionaries(st.integers(0, U32), floats, max_size=3))
# mostly valid knobs at their edges: what a poison request looks like once it passes validation
edge_sampling = st.builds(
    pb.SamplingParams, max_new_tokens=st.integers(1, 3),
    temperature=st.sampled_from([0.0, 1e-38, 1e-6, 0.7, 2.0]), top_p=st.sampled_from([0.0, 1e-6, 0.5, 1.0]),
    top_k=st.sampled_from([-1, 0, 1, 5, (1 << 31) - 1]), min_p=st.sampled_from([0.0, 0.5, 1.0]),
    seed=st.one_of(st.none(), st.sampled_from([0, 1, (1 << 63) - 1, 1 << 63, U64])),
    ignore_eos=st.booleans(), presence_penalty=st.sampled_from([0.0, -2.0, 2.0]),
    frequency_penalty=st.sampled_from([0.0, -2.0, 2.0]), repetition_penalty=st.sampled_from([0.0, 1.0, 1.5]),
    logit_bias=st.dictionaries(st.integers(0, 49151), st.sampled_from([-100.0, 0.0, 100.0]), max_size=2))
region = st.builds(pb.MemoryRegion, kind=st.sampled_from(["kv", "swa", "", "x" * 300]),
                   base_ptr=st.integers(0, U64), item_bytes=st.integers(0, U64), num_items=st.integers(0, U64),
                   dtype=st.sampled_from(["float32", "bfloat16", "?"]))
layout = st.builds(pb.MemoryLayout, node_id=st.text(max_size=20), session_id=st.text(max_size=30),
                   protocol=st.sampled_from(["tcp", "rdma", ""]), page_size=st.integers(0, U32),
                   model_fingerprint=st.text(max_size=10), regions=st.lists(region, max_size=3))
registration = st.builds(pb.PageRegistration, decode_node_id=st.text(max_size=20),
                         pools=st.lists(st.builds(pb.ItemIds, kind=st.sampled_from(["kv", "swa", "?"]),
                                                  ids=st.lists(st.integers(0, U32), max_size=20)), max_size=3))
rids = st.text(max_size=40)
_serial = itertools.count()


@pytest.fixture(scope="module")
def cluster():
    c = start_cluster()
    yield c
    assert c.stop() == {"prefill": 0, "decode": 0}


def _call(fn, msg, stream: bool = False) -> grpc.StatusCode:
    try:
        out = fn(msg, timeout=60)
        if stream:
            list(out)
        return grpc.StatusCode.OK
    except grpc.RpcError as err:
        return err.code()


def _check(what: str, code: grpc.StatusCode) -> None:
    COUNTS[f"{what} {code.name}"] += 1
    assert code in ALLOWED, f"{what} answered {code}"


SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@SETTINGS
@given(rid=rids, ids=token_ids, sp=sampling, addr=st.sampled_from(["", "nonsense", "10.0.0.1:1", "[::1]:99999"]))
def test_fuzz_generate(cluster, rid, ids, sp, addr):
    msg = pb.GenerateRequest(rid=rid, token_ids=ids, sampling=sp, prefill_addr=addr)
    _check("Generate", _call(cluster.decode.stub.Generate, msg, stream=True))


@SETTINGS
@given(ids=st.lists(st.integers(0, 49151), min_size=1, max_size=40), sp=edge_sampling, remote=st.booleans())
def test_fuzz_generate_edges(cluster, ids, sp, remote):
    msg = pb.GenerateRequest(rid=f"edge-{next(_serial)}", token_ids=ids, sampling=sp,
                             prefill_addr=cluster.prefill.addr if remote else "")
    _check("Generate(edges)", _call(cluster.decode.stub.Generate, msg, stream=True))


@SETTINGS
@given(rid=rids, ids=token_ids, sp=sampling, reg=registration, lay=layout, abort_rid=rids)
def test_fuzz_prefill_side(cluster, rid, ids, sp, reg, lay, abort_rid):
    p = cluster.prefill.stub
    _check("Handshake", _call(p.Handshake, pb.HandshakeRequest(decode_layout=lay)))
    _check("Prefill", _call(p.Prefill, pb.PrefillRequest(rid=rid, token_ids=ids, sampling=sp, registration=reg)))
    _check("Abort", _call(p.Abort, pb.AbortRequest(rid=abort_rid, decode_node_id=reg.decode_node_id)))


@SETTINGS
@given(raw=st.binary(max_size=200), method=st.sampled_from(
    ["PrefillNode/Handshake", "PrefillNode/Prefill", "PrefillNode/Abort", "DecodeNode/Generate"]))
def test_fuzz_raw_bytes(cluster, raw, method):
    node = cluster.prefill if method.startswith("Prefill") else cluster.decode
    with grpc.insecure_channel(node.addr) as ch:
        stream = method.endswith("Generate")
        fn = (ch.unary_stream if stream else ch.unary_unary)(f"/pdpair.v1.{method}")
        code = _call(fn, raw, stream=stream)
    _check(method, code)


def test_nodes_survive_the_fuzz(cluster):
    print("\nfuzz statuses:", dict(sorted(COUNTS.items())))
    for node in cluster.nodes:
        assert node.proc.poll() is None, node.log_tail()
        assert node.health() == health_pb2.HealthCheckResponse.SERVING
        st_ = wait_all_free(node)
        assert st_.integrity_ok and not math.isnan(st_.requests_total)
