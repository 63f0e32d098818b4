"""A gRPC (grpc.aio) client for one prefill or decode node, with its health and last Stats."""

from __future__ import annotations

import logging
import math
import time

import grpc
from pdpair.proto import pdpair_pb2 as pb
from pdpair.proto import pdpair_pb2_grpc as pb_grpc

from pdpair.logfmt import bind_rid
from pdpair.tls import TlsFiles, aio_channel

logger = logging.getLogger(__name__)

_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),  # ModelInfo carries the tokenizer JSON
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


SLOW_POLLS_LIMIT = 3


class NodeClient:
    """One node: `role` is "prefill" or "decode"; `addr` is "host:port"."""

    def __init__(self, addr: str, role: str, tls: TlsFiles | None = None):
        if role not in ("prefill", "decode"):
            raise ValueError(f"role must be 'prefill' or 'decode', got {role!r}")
        self.addr = addr
        self.role = role
        self.channel = aio_channel(addr, tls, _CHANNEL_OPTIONS)  # mutual TLS when tls is set
        stub_cls = pb_grpc.DecodeNodeStub if role == "decode" else pb_grpc.PrefillNodeStub
        self.stub = stub_cls(self.channel)
        self.healthy = False
        self.stats: pb.NodeStats | None = None
        self.stats_at = 0.0
        self.inflight = 0  # requests this router has open on the node
        self.last_error = "not polled yet"
        self.slow_polls = 0  # consecutive Stats deadlines (a busy node answers late, a dead one not at all)

    def __repr__(self) -> str:
        return f"NodeClient({self.role}@{self.addr}, healthy={self.healthy}, inflight={self.inflight})"

    async def poll(self, timeout: float) -> bool:
        """Refresh Stats; the node is healthy when it answers and is not draining.

        A refused connection takes the node out at once; deadlines only after SLOW_POLLS_LIMIT in a row,
        so that a node saturated by work is not mistaken for a dead one.
        """
        try:
            stats = await self.stub.Stats(pb.StatsRequest(), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            slow = exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            self.slow_polls = self.slow_polls + 1 if slow else 0
            if not slow or self.slow_polls >= SLOW_POLLS_LIMIT:
                self.mark_unhealthy(f"Stats: {exc.code().name}: {exc.details()}")
            return False
        self.slow_polls = 0
        self.stats, self.stats_at = stats, time.monotonic()
        if stats.draining:
            self.mark_unhealthy("draining")
            return False
        if not self.healthy:
            logger.info("%s node %s is healthy", self.role, self.addr)
        self.healthy, self.last_error = True, ""
        return True

    def mark_unhealthy(self, reason: str) -> None:
        if self.healthy:
            logger.warning("%s node %s unhealthy: %s", self.role, self.addr, reason)
        self.healthy, self.last_error = False, reason

    async def model_info(self, timeout: float) -> pb.ModelInfoResponse:
        return await self.stub.ModelInfo(pb.ModelInfoRequest(), timeout=timeout)

    def generate(self, req: pb.GenerateRequest, timeout: float | None) -> grpc.aio.UnaryStreamCall:
        assert self.role == "decode", f"Generate is a decode-node call, {self.addr} is {self.role}"
        bind_rid(req.rid)  # the calling request's task logs with this id from here on
        return self.stub.Generate(req, timeout=timeout)

    def load(self) -> int:
        """Requests a new one would queue behind: the larger of our own open streams and the node's last
        reported queues.

        A DP-attention node (Stats lists its ranks) counts as its least loaded rank, not as the sum: its front
        door hands a new request to its shortest rank queue, so that rank's queue is what the request waits
        behind, and a node of D ranks is then compared like D independent nodes would be. The requests the
        node holds outside any rank's queue (pages still arriving) and our own open streams are spread evenly
        over the ranks.
        """
        if self.stats is None:
            return self.inflight
        s = self.stats
        reported = s.waiting + s.prefilling + s.transferring + s.running
        if len(s.ranks) < 2:
            return max(self.inflight, reported)
        per_rank = [r.waiting + r.prefilling + r.running for r in s.ranks]
        outside = max(0, reported - sum(per_rank))
        return max(math.ceil(self.inflight / len(per_rank)), min(per_rank) + math.ceil(outside / len(per_rank)))

    def free_fraction(self) -> float:
        """Free share of the node's tightest pool kind (1.0 when unknown): a request needs room in every kind the
        model has (kv, swa, mamba slots). On a DP-attention node, of its freest rank. Pages the prefix cache holds
        count as free: the node evicts them as soon as an allocation needs them."""
        if self.stats is None:
            return 1.0
        tightest: dict[int, float] = {}
        for p in self.stats.pools:
            if p.total:
                share = (p.free + p.cached) / p.total
                tightest[p.dp_rank] = min(tightest.get(p.dp_rank, 1.0), share)
        return max(tightest.values(), default=1.0)

    async def close(self) -> None:
        await self.channel.close(grace=None)
