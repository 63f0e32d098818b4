"""PrefillPeers: one gRPC channel and one completed Handshake per prefill node address, cached."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import grpc
from pdpair.node.layout import layout_from_proto, layout_to_proto
from pdpair.node.server import GRPC_OPTIONS
from pdpair.proto import pdpair_pb2 as pb
from pdpair.proto import pdpair_pb2_grpc as pb_grpc
from pdpair.transfer import MemoryLayout, check_compatible

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class Peer:
    addr: str
    channel: grpc.aio.Channel
    stub: pb_grpc.PrefillNodeStub
    layout: MemoryLayout


class PrefillPeers:
    def __init__(self, local: MemoryLayout, handshake_timeout: float = 30.0) -> None:
        self.local = local
        self._peers: dict[str, Peer] = {}
        self._stale: list[grpc.aio.Channel] = []  # channels of forgotten peers: calls may still run on them
        self._locks: dict[str, asyncio.Lock] = {}
        self._timeout = handshake_timeout

    async def get(self, addr: str) -> Peer:
        """The paired peer at addr, handshaking first if needed.

        Raises grpc.aio.AioRpcError (peer down, or FAILED_PRECONDITION from its side) or LayoutMismatch.
        """
        peer = self._peers.get(addr)
        if peer is not None:
            return peer
        lock = self._locks.setdefault(addr, asyncio.Lock())
        async with lock:
            peer = self._peers.get(addr)
            if peer is None:
                peer = await self._handshake(addr)
                self._peers[addr] = peer
        return peer

    async def _handshake(self, addr: str) -> Peer:
        channel = grpc.aio.insecure_channel(addr, options=GRPC_OPTIONS)
        stub = pb_grpc.PrefillNodeStub(channel)
        try:
            resp = await stub.Handshake(pb.HandshakeRequest(decode_layout=layout_to_proto(self.local)),
                                        timeout=self._timeout)
            remote = layout_from_proto(resp.prefill_layout)
            check_compatible(self.local, remote)
        except BaseException:
            await channel.close()
            raise
        logger.info("paired with prefill node %s at %s (session %s)", remote.node_id, addr, remote.session_id)
        return Peer(addr, channel, stub, remote)

    def forget(self, addr: str) -> None:
        """Drop the cached Handshake (the peer restarted): the next request handshakes again. The channel
        stays open until shutdown, since closing a channel cancels every call still running on it."""
        peer = self._peers.pop(addr, None)
        if peer is not None:
            self._stale.append(peer.channel)

    async def close(self) -> None:
        for addr in list(self._peers):
            self.forget(addr)
        for channel in self._stale:
            await channel.close()
        self._stale.clear()
