"""Cancelling a generation mid-prefill or mid-decode frees its pages on both nodes; a dead prefill peer
answers UNAVAILABLE; the pair keeps serving correct output afterwards. Last, SIGTERM drains both nodes:
they stop admitting (health NOT_SERVING, new calls UNAVAILABLE), finish what they hold, and exit 0."""

from __future__ import annotations

import signal

import grpc
import pytest
from grpc_health.v1 import health_pb2
from pdpair.proto import pdpair_pb2 as pb

from tests.e2e._client import generate, new_rid, prompt, rpc_error, sampling, wait_all_free, wait_for
from tests.e2e._nodes import free_port, start_cluster, start_node, wait_healthy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


# The decode node's drain deadline is not what the last test is about: on a loaded 2-core CI box its 150 decode
# tokens outlast the default 30 s, and a request cut at the deadline would read as a drain that lost it. The
# prefill node drains one prefill there, at the default deadline.
DECODE_DRAIN = ("--drain-timeout", "300")


@pytest.fixture(scope="module")
def cluster():
    c = start_cluster(decode_args=DECODE_DRAIN)
    yield c
    assert c.stop() == {"prefill": 0, "decode": 0}



def _cancelled(call) -> None:
    call.cancel()
    with pytest.raises(grpc.RpcError) as info:
        for _ in call:
            pass
    assert info.value.code() == grpc.StatusCode.CANCELLED


def _aborted(node) -> int:
    return node.stats().requests_aborted


def test_cancel_mid_prefill_frees_pages_on_both_nodes(cluster):
    p, d = cluster.prefill, cluster.decode
    before = _aborted(p), _aborted(d)
    req = pb.GenerateRequest(rid=new_rid("cancel-prefill"), token_ids=prompt(20 * 64), sampling=sampling(4),
                             prefill_addr=p.addr)
    call = d.stub.Generate(req, timeout=300)
    wait_for(lambda: p.stats().prefilling > 0, "the prefill node to start prefilling")
    _cancelled(call)
    wait_for(lambda: _aborted(p) > before[0], "the prefill node to abort the request")
    # the decode node counts its abort once the cancelled handler unwinds, which may follow the Abort it sent
    wait_for(lambda: _aborted(d) > before[1], "the decode node to count the abort")
    wait_all_free(p)
    wait_all_free(d)


def test_cancel_mid_decode_frees_pages_on_both_nodes(cluster):
    p, d = cluster.prefill, cluster.decode
    req = pb.GenerateRequest(rid=new_rid("cancel-decode"), token_ids=prompt(100),
                             sampling=sampling(1000, ignore_eos=True), prefill_addr=p.addr)
    call = d.stub.Generate(req, timeout=300)
    stream = iter(call)
    first = next(stream)
    assert first.prefilled_remotely
    for _ in range(3):
        next(stream)
    assert d.stats().running == 1
    _cancelled(call)
    wait_all_free(d)
    wait_all_free(p)


def test_cancel_colocated_prefill_frees_pages(cluster):
    d = cluster.decode
    req = pb.GenerateRequest(rid=new_rid("cancel-local"), token_ids=prompt(20 * 64, salt=2), sampling=sampling(4))
    call = d.stub.Generate(req, timeout=300)
    wait_for(lambda: d.stats().prefilling > 0, "the decode node to start prefilling")
    _cancelled(call)
    wait_all_free(d)


def test_unreachable_prefill_node_is_unavailable(cluster):
    d = cluster.decode
    req = pb.GenerateRequest(rid=new_rid("dead"), token_ids=prompt(40), sampling=sampling(4),
                             prefill_addr=f"127.0.0.1:{free_port()}")
    err = rpc_error(d.stub.Generate, req, timeout=60)
    assert err is not None and err.code() == grpc.StatusCode.UNAVAILABLE, err
    wait_all_free(d)


def test_bad_generate_requests_are_invalid_argument(cluster):
    d = cluster.decode
    for ids, sp in [([], sampling(4)), ([10**6], sampling(4)), ([5, 6], sampling(0)),
                    ([5, 6], sampling(4, temperature=-1.0)), (prompt(9000), sampling(4))]:
        err = rpc_error(d.stub.Generate, pb.GenerateRequest(rid=new_rid("bad"), token_ids=ids, sampling=sp),
                        timeout=60)
        assert err is not None and err.code() == grpc.StatusCode.INVALID_ARGUMENT, (len(ids), sp, err)


def test_pair_still_serves_correct_output(cluster):
    ids, sp = prompt(150, salt=9), sampling(8)
    colocated = generate(cluster.decode.stub, ids, sp).tokens
    assert generate(cluster.decode.stub, ids, sp, prefill_addr=cluster.prefill.addr).tokens == colocated
    for node in cluster.nodes:
        st = wait_all_free(node)
        assert st.integrity_ok


def test_prefill_node_restart_and_crash(cluster):
    """A restarted prefill node (new transfer session) is paired again transparently; one killed during a
    prefill fails the request with UNAVAILABLE, and the decode node quarantines that request's pages (no
    one can confirm its writes stopped) while every other page is free."""
    d = cluster.decode
    ids, sp = prompt(100, salt=4), sampling(6)
    reference = generate(d.stub, ids, sp).tokens
    first = start_node("prefill")
    wait_healthy([first])
    assert generate(d.stub, ids, sp, prefill_addr=first.addr).tokens == reference
    first.proc.kill()
    first.proc.wait()
    second = start_node("prefill", port=first.port)
    try:
        wait_healthy([second])
        out = generate(d.stub, ids, sp, prefill_addr=second.addr)  # same address, unknown to the new node
        assert out.tokens == reference and out.first.prefilled_remotely
        req = pb.GenerateRequest(rid=new_rid("crash"), token_ids=prompt(20 * 64, salt=5), sampling=sp,
                                 prefill_addr=second.addr)
        call = d.stub.Generate(req, timeout=300)
        wait_for(lambda: second.stats().prefilling > 0, "the prefill node to start prefilling")
        second.proc.kill()
        with pytest.raises(grpc.RpcError) as info:
            list(call)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value
        pages = -(-len(req.token_ids) // 16)
        wait_for(lambda: d.stats().pools[0].quarantined == pages, f"{pages} pages in quarantine", 60)
        kv = d.stats().pools[0]
        assert kv.free + kv.cached + kv.quarantined == kv.total, kv
    finally:
        second.stop()


def _not_serving(node) -> bool:
    try:
        return node.health() != health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def test_sigterm_drains_in_flight_requests_and_exits_zero(cluster):
    """Runs last in this module: it stops the cluster."""
    p, d = cluster.prefill, cluster.decode
    # 1. the prefill node is told to stop while it prefills: the request still completes
    req = pb.GenerateRequest(rid=new_rid("drain-p"), token_ids=prompt(12 * 64), prefill_addr=p.addr,
                             sampling=sampling(40, ignore_eos=True))
    call = d.stub.Generate(req, timeout=300)
    wait_for(lambda: p.stats().prefilling > 0, "the prefill node to start prefilling")
    p.proc.send_signal(signal.SIGTERM)
    tokens = [t for chunk in call for t in chunk.token_ids]
    assert len(tokens) == 40
    assert p.proc.wait(60) == 0

    # 2. the decode node is told to stop while it decodes: it stops admitting and finishes the stream
    req = pb.GenerateRequest(rid=new_rid("drain-d"), token_ids=prompt(30),
                             sampling=sampling(150, ignore_eos=True))
    call = d.stub.Generate(req, timeout=300)
    stream = iter(call)
    first = next(stream)
    d.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: _not_serving(d), "the decode node to report NOT_SERVING")
    late = pb.GenerateRequest(rid=new_rid("late"), token_ids=prompt(30), sampling=sampling(4))
    err = rpc_error(d.stub.Generate, late, timeout=30)
    assert err is not None and err.code() == grpc.StatusCode.UNAVAILABLE, err
    rest = list(stream)
    assert len(first.token_ids) + sum(len(ch.token_ids) for ch in rest) == 150
    assert rest[-1].finish_reason == "length"
    assert d.proc.wait(60) == 0
