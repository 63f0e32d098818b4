"""Failover before the first token: blame from the trailing metadata, ejection of the blamed node, one retry."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from pdpair.proto import FAILURE_METADATA_KEY
from pdpair.proto import pdpair_pb2 as pb
from pdpair.router.attempt import open_stream
from pdpair.router.errors import ApiError
from pdpair.router.failover import judge
from pdpair.router.job import GenerationJob
from pdpair.router.metrics import RouterMetrics
from pdpair.router.pool import NodePool

OK = "ok"


def _err(code: grpc.StatusCode, side: str | None = None) -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata((FAILURE_METADATA_KEY, side)) if side else grpc.aio.Metadata()
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details="at 10.0.0.9:7000")


class FakeCall:
    def __init__(self, outcome):
        self.outcome, self.cancelled = outcome, False

    async def read(self):
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return pb.TokenChunk(token_ids=[5], finish_reason="length")

    def done(self) -> bool:
        return isinstance(self.outcome, Exception) or self.cancelled

    def cancel(self) -> None:
        self.cancelled = True


class Cluster:
    """A NodePool of fake clients: each decode node answers Generate from a per-(decode, prefill) script."""

    def __init__(self, n_decode: int, n_prefill: int, outcomes: dict[tuple[int, int | None], object]):
        self.pool = NodePool([f"127.0.0.1:{7000 + i}" for i in range(n_decode)],
                             [f"127.0.0.1:{7100 + i}" for i in range(n_prefill)])
        self.calls: list[tuple[int, int | None]] = []
        for node in self.pool.nodes:
            node.healthy = True
        for d, node in enumerate(self.pool.decode):
            node.generate = self._generate_on(d, outcomes)

    def _generate_on(self, d: int, outcomes):
        def generate(req: pb.GenerateRequest, timeout):
            p = next((i for i, n in enumerate(self.pool.prefill) if n.addr == req.prefill_addr), None)
            self.calls.append((d, p))
            return FakeCall(outcomes.get((d, p), OK))
        return generate

    async def run(self):
        metrics = RouterMetrics()
        job = GenerationJob("r1", "completion", [1, 2, 3], pb.SamplingParams(max_new_tokens=4), (), False, False)
        try:
            stream = await open_stream(job, self.pool, metrics, None)
            stream.release()
            return stream, metrics
        finally:
            assert all(n.inflight == 0 for n in self.pool.nodes), "in-flight counts leaked"


def _run(n_decode, n_prefill, outcomes):
    async def body():
        c = Cluster(n_decode, n_prefill, outcomes)
        try:
            stream, metrics = await c.run()
            return c, stream, metrics, None
        except ApiError as err:
            return c, None, None, err
    return asyncio.run(body())


@pytest.mark.parametrize("side", ["PREFILL_UNAVAILABLE", "TRANSFER_FAILED", "PREFILL_FAILED", "PREFILL_DRAINING"])
def test_prefill_blame_ejects_the_prefill_node_and_retries_on_another(side):
    c, stream, metrics, err = _run(1, 2, {(0, 0): _err(grpc.StatusCode.UNAVAILABLE, side)})
    assert err is None and c.calls == [(0, 0), (0, 1)]
    assert stream.pair.prefill is c.pool.prefill[1]
    assert not c.pool.prefill[0].healthy and c.pool.decode[0].healthy and c.pool.prefill[1].healthy
    assert metrics.failovers.labels(side="prefill")._value.get() == 1


def test_refused_decode_connection_ejects_the_decode_node_and_retries():
    c, stream, _, err = _run(2, 1, {(0, 0): _err(grpc.StatusCode.UNAVAILABLE)})
    assert err is None and c.calls == [(0, 0), (1, 0)]
    assert not c.pool.decode[0].healthy and c.pool.prefill[0].healthy


def test_only_one_retry_and_no_address_reaches_the_client():
    down = _err(grpc.StatusCode.UNAVAILABLE, "PREFILL_UNAVAILABLE")
    c, _, _, err = _run(1, 3, {(0, 0): down, (0, 1): down, (0, 2): down})
    assert len(c.calls) == 2 and err.status == 503
    assert "10.0.0.9" not in err.message and "7000" not in err.message


def test_no_other_pair_means_no_retry():
    c, _, _, err = _run(1, 1, {(0, 0): _err(grpc.StatusCode.UNAVAILABLE, "PREFILL_UNAVAILABLE")})
    assert c.calls == [(0, 0)] and err.status == 503 and not c.pool.prefill[0].healthy


def test_overload_is_429_only_when_every_candidate_is_overloaded():
    busy = _err(grpc.StatusCode.RESOURCE_EXHAUSTED, "DECODE_OVERLOADED")
    c, stream, _, err = _run(2, 1, {(0, 0): busy})
    assert err is None and stream.pair.decode is c.pool.decode[1]
    assert all(n.healthy for n in c.pool.nodes)  # overload is not a reason to eject
    c, _, _, err = _run(2, 1, {(0, 0): busy, (1, 0): busy})
    assert err.status == 429 and len(c.calls) == 2
    c, _, _, err = _run(1, 2, {(0, 0): _err(grpc.StatusCode.UNAVAILABLE, "PREFILL_OVERLOADED"),
                               (0, 1): _err(grpc.StatusCode.UNAVAILABLE, "PREFILL_OVERLOADED")})
    assert err.status == 429 and all(n.healthy for n in c.pool.nodes)


def test_the_requests_own_fault_is_not_retried_nor_blamed():
    c, _, _, err = _run(2, 2, {(0, 0): _err(grpc.StatusCode.INVALID_ARGUMENT)})
    assert c.calls == [(0, 0)] and err.status == 400 and all(n.healthy for n in c.pool.nodes)


def test_unknown_metadata_falls_back_to_the_status():
    assert judge(_err(grpc.StatusCode.UNAVAILABLE, "SOMETHING_NEW")).side == "decode"
    assert judge(_err(grpc.StatusCode.INTERNAL, "TRANSFER_FAILED")).side == "prefill"
    assert not judge(_err(grpc.StatusCode.INTERNAL)).blamed
