"""PrefillPeers over real gRPC: forgetting a Handshake, a refused Handshake and eviction from the bounded
table never cancel a call in flight on the shared channel."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from pdpair.decode_node.peers import PrefillPeers
from pdpair.node.layout import layout_to_proto
from pdpair.proto import pdpair_pb2 as pb
from pdpair.proto import pdpair_pb2_grpc as pb_grpc
from pdpair.transfer import MemoryLayout, MemoryRegion


def _layout(node_id: str) -> MemoryLayout:
    return MemoryLayout(node_id=node_id, session_id="127.0.0.1:1", protocol="tcp", page_size=16,
                        model_fingerprint="fp", regions=(MemoryRegion("kv", 4096, 1024, 10, "float32"),))


class SlowPrefill(pb_grpc.PrefillNodeServicer):
    def __init__(self, name: str) -> None:
        self.name, self.handshakes, self.refuse_next = name, 0, False

    async def Handshake(self, request, context):
        self.handshakes += 1
        if self.refuse_next:
            self.refuse_next = False
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "refused")
        return pb.HandshakeResponse(prefill_layout=layout_to_proto(_layout(self.name)))

    async def Prefill(self, request, context):
        await asyncio.sleep(1.0)
        return pb.PrefillResult(rid=request.rid, first_token=7)


async def _serve(servicer) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    pb_grpc.add_PrefillNodeServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def test_forget_refusal_and_eviction_keep_calls_in_flight():
    async def main():
        a, b = SlowPrefill("pa"), SlowPrefill("pb")
        (sa, addr_a), (sb, addr_b) = await _serve(a), await _serve(b)
        peers = PrefillPeers(_layout("d"), max_peers=1)
        try:
            peer = await peers.get(addr_a)
            assert peer.layout.node_id == "pa" and a.handshakes == 1
            first = asyncio.ensure_future(peer.stub.Prefill(pb.PrefillRequest(rid="r1"), timeout=30))
            await asyncio.sleep(0.2)
            await peers.forget(addr_a)  # the decode node's retry path after FAILED_PRECONDITION
            a.refuse_next = True
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await peers.get(addr_a)  # a refused re-handshake must not close the channel either
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            again = await peers.get(addr_a)
            assert a.handshakes == 3 and again.channel is peer.channel
            second = asyncio.ensure_future(again.stub.Prefill(pb.PrefillRequest(rid="r2"), timeout=30))
            await asyncio.sleep(0.1)
            other = await peers.get(addr_b)  # evicts addr_a from the table of one
            assert len(peers) == 1 and other.layout.node_id == "pb"
            assert (await first).first_token == 7 and (await second).first_token == 7
        finally:
            await peers.close()
            await sa.stop(None)
            await sb.stop(None)

    asyncio.run(main())
