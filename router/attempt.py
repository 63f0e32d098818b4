"""Open a Generate stream for a job, failing over once before the first token.

A failure the decode node attributes to the prefill side (or a decode node that cannot be reached, or one
that is overloaded or draining) ejects the blamed node where that is warranted and retries once on a pair
without it. Nothing is retried after the first token: by then the client may have seen output.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import grpc
from pdpair.proto import pdpair_pb2 as pb
from pdpair.router.errors import ApiError, from_rpc_error
from pdpair.router.failover import judge
from pdpair.router.job import GenerationJob
from pdpair.router.metrics import RouterMetrics
from pdpair.router.node_client import NodeClient
from pdpair.router.pool import NodePool, Pair

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 2  # the first try and one failover
_DRAINS: set[asyncio.Task] = set()  # streams read to their end in the background (referenced until done)


@dataclass(eq=False)
class Stream:
    """An open Generate call whose first chunk arrived (`first` None: the node ended it at once)."""

    pair: Pair
    call: grpc.aio.UnaryStreamCall
    first: pb.TokenChunk | None
    released: bool = False

    @property
    def nodes(self) -> list[NodeClient]:
        return [n for n in (self.pair.decode, self.pair.prefill) if n is not None]

    def release_after_end(self, timeout_s: float = 5.0) -> None:
        """After the finish chunk: read the call to its end in the background, then release, so that the node
        sees a completed call (it counts a cancelled one as aborted) and the client is not kept waiting."""

        async def drain() -> None:
            try:
                with contextlib.suppress(grpc.aio.AioRpcError, asyncio.TimeoutError):
                    async with asyncio.timeout(timeout_s):
                        while await self.call.read() is not grpc.aio.EOF:
                            pass
            finally:
                self.release()

        task = asyncio.get_running_loop().create_task(drain())
        _DRAINS.add(task)
        task.add_done_callback(_DRAINS.discard)

    def release(self) -> None:
        """Cancel the call if still open and give back the per-node in-flight counts (idempotent)."""
        if self.released:
            return
        self.released = True
        if not self.call.done():
            self.call.cancel()
        for node in self.nodes:
            node.inflight -= 1


def _remaining(deadline: float | None, rid: str) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise ApiError(504, f"the request timed out (request id {rid})", code="deadline_exceeded")
    return left


async def open_stream(job: GenerationJob, pool: NodePool, metrics: RouterMetrics, deadline: float | None) -> Stream:
    """The first chunk of the job's stream on some pair; ApiError when no attempt got that far."""
    avoid: list[NodeClient] = []
    for attempt in range(MAX_ATTEMPTS):
        pair = pool.pick(avoid, job.prompt_ids)
        prefill_addr = pair.prefill.addr if pair.prefill is not None else ""
        req = pb.GenerateRequest(rid=job.rid, token_ids=job.prompt_ids, sampling=job.sampling,
                                 prefill_addr=prefill_addr)
        logger.debug("rid=%s attempt %d decode=%s prefill=%s", job.rid, attempt + 1, pair.decode.addr,
                     prefill_addr or "-")
        stream = Stream(pair, pair.decode.generate(req, _remaining(deadline, job.rid)), None)
        for node in stream.nodes:
            node.inflight += 1
        try:
            first = await stream.call.read()
        except grpc.aio.AioRpcError as exc:
            stream.release()
            verdict = judge(exc)
            blamed = pair.prefill if verdict.side == "prefill" else pair.decode
            if verdict.blamed and blamed is not None:
                reason = f"Generate rid={job.rid}: {exc.code().name} ({verdict.side} side)"
                if verdict.eject:
                    pool.eject(blamed, reason)
                if attempt + 1 < MAX_ATTEMPTS and verdict.retry and pool.can_avoid(blamed):
                    logger.info("rid=%s failing over from %s node %s: %s", job.rid, blamed.role, blamed.addr,
                                exc.code().name)
                    metrics.failovers.labels(side=verdict.side).inc()
                    avoid.append(blamed)
                    continue
            err = from_rpc_error(exc, pair.decode.addr, job.rid)
            if verdict.overloaded:  # every candidate was tried (or there was none other): overloaded
                err.status = 429
            raise err from None
        except BaseException:  # cancelled (client gone): the call must not outlive the request
            stream.release()
            raise
        stream.first = None if first is grpc.aio.EOF else first
        return stream
    raise AssertionError("unreachable: the last attempt returns or raises")
