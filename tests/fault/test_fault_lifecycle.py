"""The request lifecycle under concurrent traffic, at the default quarantine and transfer timeout:
a draining prefill node finishes what it started while refusing new work; cancels return every page
within seconds (the prefill node's Abort confirms that no write is in flight); a cancel while the engine
is busy leaks nothing; a poison request fails alone and names the side that failed; a broken engine
reports NOT_SERVING and exits non-zero."""

from __future__ import annotations

import signal
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2
from pdpair.proto import FAILURE_METADATA_KEY
from pdpair.proto import pdpair_pb2 as pb

from tests.e2e._client import generate, new_rid, prompt, rpc_error, sampling, wait_all_free, wait_for
from tests.e2e._nodes import start_cluster, start_node, wait_healthy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

POISON = 7  # prompt() never produces ids below 1000
Code = grpc.StatusCode


@pytest.fixture(scope="module")
def cluster():
    c = start_cluster(env={"PDPAIR_FAULT_POISON_TOKEN": str(POISON)}, decode_args=("--chunk-size", "1024"))
    yield c
    assert c.stop() == {"prefill": 0, "decode": 0}



def _side(err: grpc.RpcError) -> str:
    return dict(err.trailing_metadata() or ()).get(FAILURE_METADATA_KEY, "")


class Background:
    """Requests run on threads: tokens or the gRPC error of each."""

    def __init__(self, stub, jobs: list[tuple[list[int], pb.SamplingParams, str]]) -> None:
        self.results: list = [None] * len(jobs)
        self._threads = [threading.Thread(target=self._run, args=(i, stub, *job), daemon=True)
                         for i, job in enumerate(jobs)]
        for t in self._threads:
            t.start()

    def _run(self, i, stub, ids, sp, addr) -> None:
        try:
            self.results[i] = generate(stub, ids, sp, prefill_addr=addr).tokens
        except grpc.RpcError as err:
            self.results[i] = err

    def join(self, timeout: float = 300.0) -> list:
        for t in self._threads:
            t.join(timeout)
        return self.results


def _references(d, jobs) -> list[list[int]]:
    return [generate(d.stub, ids, sp).tokens for ids, sp, _ in jobs]


def test_draining_prefill_node_finishes_in_flight_requests(cluster):
    """SIGTERM on a prefill node with 6 requests in flight: new requests are refused as PREFILL_DRAINING
    (the decode node keeps the shared channel open), all 6 finish with the colocated output, the prefill
    node exits 0 and no page stays held."""
    d = cluster.decode
    # the deadline is not the subject: on a loaded 2-core CI box six prefills outlast the default 30 s, and the
    # one cut at the deadline then reads as a drain that lost it
    p2 = start_node("prefill", "--drain-timeout", "300")
    try:
        wait_healthy([p2])
        jobs = [(prompt(4 * 64 + 5 * i, salt=30 + i), sampling(24, ignore_eos=True), p2.addr) for i in range(6)]
        refs = _references(d, jobs)
        before = p2.stats().requests_total
        bg = Background(d.stub, jobs)
        wait_for(lambda: p2.stats().requests_total >= before + 6, "all six to reach the prefill node")
        p2.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: p2.stats().draining, "the prefill node to drain", 30)
        late = pb.GenerateRequest(rid=new_rid("late"), token_ids=prompt(100, salt=3), sampling=sampling(4),
                                  prefill_addr=p2.addr)
        err = rpc_error(d.stub.Generate, late, timeout=60)
        assert err is not None and err.code() == Code.UNAVAILABLE and _side(err) == "PREFILL_DRAINING", err
        assert bg.join() == refs
        assert p2.proc.wait(60) == 0
    finally:
        p2.stop()
    wait_all_free(d, timeout=10)


def test_client_cancel_mid_transfer_returns_pages_within_seconds(cluster):
    """At the default 70 s quarantine: a cancelled remote prefill's pages come back at once on both nodes,
    because the prefill node confirms through Abort that its writes ended; concurrent requests still
    produce the colocated output."""
    p, d = cluster.prefill, cluster.decode
    jobs = [(prompt(150 + 20 * i, salt=40 + i), sampling(12), p.addr) for i in range(4)]
    refs = _references(d, jobs)
    for round_ in range(3):
        req = pb.GenerateRequest(rid=new_rid("cancel"), token_ids=prompt(20 * 64, salt=50 + round_),
                                 sampling=sampling(4), prefill_addr=p.addr)
        landed = p.stats().transfer_batches_total
        call = d.stub.Generate(req, timeout=300)
        # a counter, not the in-flight gauges: those are up only while a batch moves, which polls can miss;
        # the long prompt is the only request until its first chunk's pages have landed
        wait_for(lambda n=landed: p.stats().transfer_batches_total > n, "pages of the long prompt to be on the wire")
        bg = Background(d.stub, jobs)
        call.cancel()
        assert bg.join() == refs
    # within seconds, not after the 70 s quarantine
    for node in (d, p):
        st = wait_all_free(node, timeout=15)
        assert st.integrity_ok


def test_cancel_while_the_engine_is_busy_leaks_nothing(cluster):
    """Cancels that land while the decode node's engine thread runs a long step (a 900-token local
    prefill in one chunk): each remote request is dropped from whatever stage it reached."""
    p, d = cluster.prefill, cluster.decode
    for i in range(4):
        busy = Background(d.stub, [(prompt(900, salt=60 + i), sampling(2), "")])
        wait_for(lambda: _engine_busy(d), "the decode node's engine to run a long step", 60)
        req = pb.GenerateRequest(rid=new_rid("busy"), token_ids=prompt(200, salt=70 + i), sampling=sampling(4),
                                 prefill_addr=p.addr)
        call = d.stub.Generate(req, timeout=300)
        time.sleep(0.05 * i)
        call.cancel()
        assert isinstance(busy.join()[0], list)
    for node in (d, p):
        st = wait_all_free(node, timeout=15)
        assert st.integrity_ok


def _engine_busy(node) -> bool:
    """Stats waits 0.25 s for the engine thread, then answers from a snapshot: a slow answer means a step
    is running."""
    t0 = time.monotonic()
    node.stats()
    return time.monotonic() - t0 >= 0.2


def test_poison_request_fails_alone(cluster):
    """A request whose forward raises fails with INTERNAL (naming the prefill side when the prefill node
    failed it); the healthy requests batched with it finish with their reference output, and both nodes
    stay SERVING."""
    p, d = cluster.prefill, cluster.decode
    jobs = [(prompt(90 + 10 * i, salt=80 + i), sampling(16), p.addr if i % 2 else "") for i in range(6)]
    refs = _references(d, jobs)
    poison = [POISON, *prompt(120, salt=90)]
    for addr in ("", p.addr):
        bg = Background(d.stub, jobs)
        bad = pb.GenerateRequest(rid=new_rid("poison"), token_ids=poison, sampling=sampling(8), prefill_addr=addr)
        err = rpc_error(d.stub.Generate, bad, timeout=120)
        assert err is not None and err.code() == Code.INTERNAL, err
        assert _side(err) == ("PREFILL_FAILED" if addr else ""), err.trailing_metadata()
        assert bg.join() == refs
    for node in (p, d):
        assert node.health() == health_pb2.HealthCheckResponse.SERVING
        assert wait_all_free(node).integrity_ok


def test_counters_count_what_they_name(cluster):
    """Concurrent successful requests are not counted as aborted on either node."""
    p, d = cluster.prefill, cluster.decode
    before = [(n.stats().requests_total, n.stats().requests_aborted) for n in (p, d)]
    jobs = [(prompt(60 + i, salt=100 + i), sampling(3), p.addr) for i in range(12)]
    assert all(isinstance(r, list) for r in Background(d.stub, jobs).join())
    for node, (total, aborted) in zip((p, d), before, strict=True):
        st = node.stats()
        assert st.requests_total == total + 12 and st.requests_aborted == aborted, st


def test_abort_before_prefill_arrives_is_refused_and_abort_is_owner_only(cluster):
    """PrefillNode.Abort from a decode node that never handshook is FAILED_PRECONDITION; an abort for a
    request not seen yet leaves a tombstone that refuses the Prefill arriving after it."""
    p, d = cluster.prefill, cluster.decode
    err = rpc_error(p.stub.Abort, pb.AbortRequest(rid="x", decode_node_id="nobody"), timeout=10)
    assert err is not None and err.code() == Code.FAILED_PRECONDITION, err
    # learn the real decode node's id from a handshake the decode node made (it pairs on its first request)
    generate(d.stub, prompt(40, salt=110), sampling(2), prefill_addr=p.addr)
    resp = p.stub.Abort(pb.AbortRequest(rid="never-sent", decode_node_id=_decode_id(d)), timeout=10)
    assert not resp.found and resp.writes_drained


def _decode_id(d) -> str:
    """The decode node's id, from its log line 'decode node <id>: model ...'."""
    for line in d.log.read_text().splitlines():
        if "decode node decode-" in line:
            return line.split("decode node ", 1)[1].split(":", 1)[0]
    raise AssertionError("decode node id not in its log")


def test_malformed_messages_are_invalid_argument(cluster):
    for node, methods in ((cluster.prefill, ("Handshake", "Prefill", "Abort", "Stats")),
                          (cluster.decode, ("Generate", "ModelInfo"))):
        service = "PrefillNode" if node is cluster.prefill else "DecodeNode"
        with grpc.insecure_channel(node.addr) as ch:
            for m in methods:
                call = ch.unary_stream if m == "Generate" else ch.unary_unary
                fn = call(f"/pdpair.v1.{service}/{m}")
                with pytest.raises(grpc.RpcError) as info:
                    out = fn(b"\x0a\xff\xff\xff\xff\x0f", timeout=10)
                    if m == "Generate":
                        list(out)
                assert info.value.code() == Code.INVALID_ARGUMENT, (m, info.value)


def test_broken_engine_reports_not_serving_and_exits_non_zero():
    node = start_node("decode", env={"PDPAIR_FAULT_STEP_ERROR": "1"})
    try:
        wait_healthy([node])
        codes = []
        while node.proc.poll() is None and len(codes) < 5:  # each request fails the step it is in
            req = pb.GenerateRequest(rid=new_rid("broken"), token_ids=prompt(20), sampling=sampling(4))
            err = rpc_error(node.stub.Generate, req, timeout=60)
            codes.append(err.code() if err is not None else None)
            time.sleep(0.5)
        assert codes[:3] == [Code.INTERNAL] * 3, codes
        assert node.proc.wait(60) == 1
        assert "engine failed" in node.log_tail(80)
    finally:
        node.stop()
