"""Router discovery: dns:/// targets follow a headless Service's pods as they come and go, health-checked.

DNS is a stand-in resolver (a dict the test edits); the nodes behind the addresses are real grpc.aio servers
answering Stats, and a port with nothing listening stands for a pod that died.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from pdpair.proto import pdpair_pb2 as pb
from pdpair.proto import pdpair_pb2_grpc as pb_grpc
from pdpair.router.config import RouterConfig
from pdpair.router.discovery import Discovery, parse_target
from pdpair.router.errors import ApiError
from pdpair.router.pool import NodePool


class FakeDns:
    """name -> addresses; a name mapped to an exception raises it (SERVFAIL)."""

    def __init__(self) -> None:
        self.answers: dict[str, list[str] | Exception] = {}
        self.calls = 0

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls += 1
        answer = self.answers.get(host, OSError(f"{host}: name not known"))
        if isinstance(answer, Exception):
            raise answer
        # an entry with its own port stands for a pod on 127.0.0.1 (the test's pods share one address)
        return [a if ":" in a else f"{a}:{port}" for a in answer]


class StatsOnly(pb_grpc.DecodeNodeServicer):
    def __init__(self, draining: bool = False) -> None:
        self.draining = draining

    async def Stats(self, request, context):
        return pb.NodeStats(role="decode", draining=self.draining)


async def _server(servicer) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    pb_grpc.add_DecodeNodeServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


def test_targets_parse_in_grpc_form():
    assert parse_target("dns:///prefill-node.ns.svc:50051").addr == "prefill-node.ns.svc:50051"
    assert parse_target("dns://10.0.0.10/decode:1").dynamic
    assert not parse_target("10.0.0.1:50051").dynamic and parse_target("a:1", all_dynamic=True).dynamic
    with pytest.raises(ValueError, match="dns:///HOST:PORT"):
        parse_target("dns://decode-node:50051")
    cfg = RouterConfig(decode=("dns:///decode-node:50051",), prefill=("10.0.0.7:50051",))
    assert cfg.decode == ("dns:///decode-node:50051",)
    with pytest.raises(ValueError, match="HOST:PORT"):
        RouterConfig(decode=("dns:///decode-node",))


def test_discovery_keeps_nodes_through_a_dns_failure_and_drops_them_when_the_service_empties():
    dns = FakeDns()
    disc = Discovery("decode", ["dns:///decode-node:50051", "10.9.9.9:50051"], resolver=dns)
    assert disc.addresses() == ["10.9.9.9:50051"]  # static targets need no resolution
    dns.answers["decode-node"] = ["10.0.0.2", "10.0.0.1"]
    assert asyncio.run(disc.refresh()) == ["10.0.0.1:50051", "10.0.0.2:50051", "10.9.9.9:50051"]
    dns.answers["decode-node"] = OSError("SERVFAIL")
    assert asyncio.run(disc.refresh()) == ["10.0.0.1:50051", "10.0.0.2:50051", "10.9.9.9:50051"]
    dns.answers["decode-node"] = []
    assert asyncio.run(disc.refresh()) == ["10.9.9.9:50051"]


def test_pool_follows_pods_as_they_come_and_go_and_health_checks_each():
    async def body():
        dns = FakeDns()
        live_a, port_a = await _server(StatsOnly())
        live_b, port_b = await _server(StatsOnly())
        drain, port_d = await _server(StatsOnly(draining=True))
        dead_port = port_a + 1 if port_a + 1 not in (port_b, port_d) else port_a + 2
        dns.answers["decode-node"] = []
        pool = NodePool(["dns:///decode-node:0"], [], resolver=dns, dns_refresh_s=0.01, rpc_timeout_s=1.0)
        assert pool.dns_refresh_s == 0.01 and pool.decode == []
        seen = {}
        dns.answers["decode-node"] = [f"127.0.0.1:{port_a}", f"127.0.0.1:{dead_port}", f"127.0.0.1:{port_d}"]
        await pool.poll_once()
        seen["first"] = {n.addr: n.healthy for n in pool.decode}
        first_a = next(n for n in pool.decode if n.addr.endswith(f":{port_a}"))
        await asyncio.sleep(0.02)
        dns.answers["decode-node"] = [f"127.0.0.1:{port_b}", f"127.0.0.1:{port_a}"]  # a scale-up, two pods gone
        await pool.poll_once()
        seen["second"] = {n.addr: n.healthy for n in pool.decode}
        seen["kept"] = any(n is first_a for n in pool.decode)
        seen["picks"] = {pool.pick().decode.addr for _ in range(4)}
        await asyncio.sleep(0.02)
        dns.answers["decode-node"] = []  # the Service lost every ready pod
        await pool.poll_once()
        with pytest.raises(ApiError) as err:
            pool.pick()
        seen["empty"] = err.value.status
        await pool.close()
        for server in (live_a, live_b, drain):
            await server.stop(None)
        return seen, port_a, port_b, port_d, dead_port

    seen, a, b, d, dead = asyncio.run(body())
    assert seen["first"] == {f"127.0.0.1:{a}": True, f"127.0.0.1:{dead}": False, f"127.0.0.1:{d}": False}
    assert seen["second"] == {f"127.0.0.1:{a}": True, f"127.0.0.1:{b}": True}
    assert seen["kept"], "a pod still in DNS must keep its client (and its in-flight streams)"
    assert seen["picks"] == {f"127.0.0.1:{a}", f"127.0.0.1:{b}"}
    assert seen["empty"] == 503
