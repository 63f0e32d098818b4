"""PrefillPeers: one gRPC channel and one completed Handshake per prefill node address, cached.

A channel is shared by every call to that node, and closing it cancels them all: so a failed or stale
Handshake drops the cached layout (`forget`), never the channel. Channels close at shutdown, or once an
address has been evicted from the bounded table for longer than any call on it may last.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import grpc
from pdpair.node.layout import layout_from_proto, layout_to_proto
from pdpair.node.server import GRPC_OPTIONS
from pdpair.proto import pdpair_pb2 as pb
from pdpair.proto import pdpair_pb2_grpc as pb_grpc
from pdpair.transfer import MemoryLayout, check_compatible

from pdpair.tls import TlsFiles, aio_channel

logger = logging.getLogger(__name__)

DEFAULT_MAX_PEERS = 256
DEFAULT_RETIRE_GRACE_S = 900.0  # longer than any call's deadline (Prefill: --prefill-timeout, 600 s by default)


@dataclass(eq=False)
class Peer:
    addr: str
    channel: grpc.aio.Channel
    stub: pb_grpc.PrefillNodeStub
    layout: MemoryLayout


@dataclass(eq=False)
class _Conn:
    channel: grpc.aio.Channel
    stub: pb_grpc.PrefillNodeStub
    peer: Peer | None = None  # None: no (valid) Handshake yet
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class PrefillPeers:
    def __init__(self, local: MemoryLayout, handshake_timeout: float = 30.0, *, tls: TlsFiles | None = None,
                 max_peers: int = DEFAULT_MAX_PEERS, retire_grace_s: float = DEFAULT_RETIRE_GRACE_S) -> None:
        if max_peers < 1:
            raise ValueError(f"max_peers must be at least 1, got {max_peers}")
        self.local = local
        self.tls = tls
        self.max_peers, self.retire_grace_s = max_peers, retire_grace_s
        self._conns: OrderedDict[str, _Conn] = OrderedDict()
        self._retired: list[tuple[float, grpc.aio.Channel]] = []
        self._closing: set[asyncio.Task] = set()
        self._timeout = handshake_timeout

    def __len__(self) -> int:
        return len(self._conns)

    async def get(self, addr: str) -> Peer:
        """The paired peer at addr, handshaking first if needed.

        Raises grpc.aio.AioRpcError (peer down, or FAILED_PRECONDITION / PERMISSION_DENIED from its side) or
        LayoutMismatch; the channel stays open either way.
        """
        conn = self._conn(addr)
        if conn.peer is not None:
            return conn.peer
        async with conn.lock:
            if conn.peer is None:
                conn.peer = await self._handshake(addr, conn)
        return conn.peer

    def _conn(self, addr: str) -> _Conn:
        conn = self._conns.get(addr)
        if conn is not None:
            self._conns.move_to_end(addr)
            return conn
        self._close_retired(time.monotonic())
        channel = aio_channel(addr, self.tls, GRPC_OPTIONS)
        conn = self._conns[addr] = _Conn(channel, pb_grpc.PrefillNodeStub(channel))
        while len(self._conns) > self.max_peers:
            old, evicted = self._conns.popitem(last=False)
            logger.info("prefill peer table full (%d): retiring the channel to %s", self.max_peers, old)
            self._retired.append((time.monotonic() + self.retire_grace_s, evicted.channel))
        return conn

    async def _handshake(self, addr: str, conn: _Conn) -> Peer:
        resp = await conn.stub.Handshake(pb.HandshakeRequest(decode_layout=layout_to_proto(self.local)),
                                         timeout=self._timeout)
        remote = layout_from_proto(resp.prefill_layout)
        check_compatible(self.local, remote)
        logger.info("paired with prefill node %s at %s (session %s)", remote.node_id, addr, remote.session_id)
        return Peer(addr, conn.channel, conn.stub, remote)

    async def forget(self, addr: str) -> None:
        """Drop the cached Handshake of addr (it restarted or refused us): the next `get` handshakes again
        over the same channel. Calls in flight on the channel are untouched."""
        conn = self._conns.get(addr)
        if conn is not None:
            conn.peer = None

    drop = forget  # the older name

    def _close_retired(self, now: float) -> None:
        due = [ch for t, ch in self._retired if t <= now]
        self._retired = [(t, ch) for t, ch in self._retired if t > now]
        for ch in due:
            task = asyncio.get_running_loop().create_task(ch.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Shutdown: close every channel (cancelling what still runs on them)."""
        channels = [c.channel for c in self._conns.values()] + [ch for _, ch in self._retired]
        self._conns.clear()
        self._retired.clear()
        for ch in channels:
            await ch.close()
