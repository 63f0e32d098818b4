"""RemotePrefill: have a prefill node fill our preallocated pages — wait for pages, handshake once per
peer, call Prefill with the registration, then activate the request with the first token.

Every ending other than success disposes of the destination pages exactly once, through the runtime's
one abort entry point: freed at once when nothing can have been written (the prefill node refused the
request before any write) or when its `Abort` confirms every write ended without failing; quarantined
when a write failed or the prefill node cannot confirm (a failed write may still land later)."""

from __future__ import annotations

import asyncio
import logging

import grpc
from pdpair.decode_node.peers import PrefillPeers
from pdpair.decode_node.prealloc import PreallocManager
from pdpair.decode_node.transfers import TransferManager, nothing_sent
from pdpair.engine import Request
from pdpair.engine.debug.fault import corrupt_transferred
from pdpair.node.runtime import NodeRuntime
from pdpair.node.status import RpcError, failure_side
from pdpair.proto import pdpair_pb2 as pb
from pdpair.transfer import LayoutMismatch, transfer_timeout_s

logger = logging.getLogger(__name__)
Code = grpc.StatusCode

ABORT_MARGIN_S = 30.0  # Abort waits for in-flight writes, each bounded by the transfer timeout


def _side_of(err: grpc.aio.AioRpcError) -> int:
    """Which side a failed Prefill call blames: the prefill node's own word, else the status code."""
    side = failure_side(err)
    if side != pb.FAILURE_UNSPECIFIED:
        return side
    code = err.code()
    if code in (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED):
        return pb.PREFILL_UNAVAILABLE
    if code == Code.RESOURCE_EXHAUSTED:
        return pb.PREFILL_OVERLOADED
    if code == Code.ABORTED:
        return pb.TRANSFER_FAILED
    if code == Code.INVALID_ARGUMENT:
        return pb.FAILURE_UNSPECIFIED
    return pb.PREFILL_FAILED


async def _finish_shielded(task: asyncio.Future) -> None:
    """Wait for task even when cancelled meanwhile (it must run to its end); re-raise that cancellation."""
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    task.result()
    if cancelled:
        raise asyncio.CancelledError


class RemotePrefill:
    def __init__(self, rt: NodeRuntime) -> None:
        self.rt = rt
        self.prealloc = PreallocManager()
        self.transfers = TransferManager()
        self.peers = PrefillPeers(rt.layout, tls=rt.cfg.tls)
        rt.thread.add_hook(lambda: self.prealloc.poll(rt.engine.scheduler.preallocate))
        rt.add_abort_hook(self._forget_waiting)
        rt.on_shutdown.append(self.peers.close)

    async def run(self, req: Request, sampling: pb.SamplingParams, addr: str) -> pb.PrefillResult:
        """Returns once the prompt's pages landed and the request is running (first token pending as an event)."""
        peer = await self._peer(addr)
        items, dp_rank = await self._preallocate(req)
        # pages our prefix cache lent the request (set on the engine thread before the items were delivered):
        # registered as held, so that only the pages after them are sent
        cached = req.shared_pages * self.rt.engine.pools.page_size
        registration = pb.PageRegistration(
            decode_node_id=self.rt.layout.node_id, cached_prefix_len=cached, dp_rank=dp_rank,
            pools=[pb.ItemIds(kind=k, ids=v.tolist()) for k, v in items.items()])
        msg = pb.PrefillRequest(rid=req.rid, token_ids=req.input_ids, sampling=sampling, registration=registration)
        self.transfers.begin(req.rid, addr, items)
        try:
            result = await self._call(peer, addr, msg)
        except BaseException as exc:
            await _finish_shielded(asyncio.ensure_future(self._dispose(addr, req.rid, exc)))
            raise
        finally:
            self.transfers.end(req.rid)
        self._count(result.transfer)
        if dp_rank == 0:  # test-only fault hook on this process's pools; a no-op unless its env is set
            corrupt_transferred(self.rt.engine.pools, items)
        try:
            await self.rt.thread.call(lambda e: e.scheduler.activate(req.rid, result.first_token))
        except ValueError as exc:  # a first token outside the vocabulary
            await self.rt.thread.call(lambda e: self.rt.abort_request(e, req.rid))
            raise RpcError(Code.INTERNAL, f"prefill on {addr} answered a bad first token: {exc}",
                           pb.PREFILL_FAILED) from None
        return result

    async def _call(self, peer, addr: str, msg: pb.PrefillRequest) -> pb.PrefillResult:
        for attempt in (0, 1):
            call = peer.stub.Prefill(msg, timeout=self.rt.cfg.prefill_timeout)
            try:
                return await call
            except asyncio.CancelledError:
                call.cancel()
                raise
            except grpc.aio.AioRpcError as err:
                code = err.code()
                if code == Code.FAILED_PRECONDITION and attempt == 0:
                    # the prefill node no longer knows us (it restarted): handshake again, once
                    await self.peers.forget(addr)
                    peer = await self._peer(addr)
                    continue
                raise RpcError(code, f"prefill on {addr}: {err.details()}", _side_of(err)) from None
        raise AssertionError("unreachable")

    async def _dispose(self, addr: str, rid: str, exc: BaseException) -> None:
        """Free or quarantine the destination pages of a Prefill that did not succeed."""
        hold = False
        if not (isinstance(exc, RpcError) and nothing_sent(exc.code, exc.side)):
            hold = not await self._confirm_abort(addr, rid)
        if hold:
            self.rt.metrics.transfer_failures.inc()
        await self.rt.thread.call(lambda e: self.rt.abort_request(e, rid, hold=hold))
        logger.debug("remote prefill %s ended early (%s): pages %s", rid, type(exc).__name__,
                     "quarantined" if hold else "freed")

    async def _confirm_abort(self, addr: str, rid: str) -> bool:
        """Ask the prefill node to abort rid; True when it confirms every write ended and none failed."""
        try:
            peer = await self.peers.get(addr)
            resp = await peer.stub.Abort(pb.AbortRequest(rid=rid, decode_node_id=self.rt.layout.node_id),
                                         timeout=transfer_timeout_s() + ABORT_MARGIN_S)
        except (grpc.aio.AioRpcError, LayoutMismatch) as err:
            logger.info("abort of %s on prefill node %s not confirmed: %s", rid, addr, err)
            return False
        return resp.writes_drained and not resp.transfer_failed

    def _count(self, t: pb.TransferStats) -> None:
        """Bytes received, as the prefill node reported them."""
        self.rt.counters.transfer_bytes_total += t.bytes
        self.rt.counters.transfer_batches_total += t.batches
        self.rt.metrics.transfer_bytes.inc(t.bytes)
        self.rt.metrics.transfer_batches.inc(t.batches)

    async def _peer(self, addr: str):
        try:
            return await self.peers.get(addr)
        except LayoutMismatch as exc:
            raise RpcError(Code.FAILED_PRECONDITION, f"prefill node {addr} cannot pair: {exc}",
                           pb.PREFILL_FAILED) from None
        except grpc.aio.AioRpcError as err:
            code = err.code() if err.code() == Code.FAILED_PRECONDITION else Code.UNAVAILABLE
            side = pb.PREFILL_FAILED if code == Code.FAILED_PRECONDITION else pb.PREFILL_UNAVAILABLE
            raise RpcError(code, f"handshake with prefill node {addr}: {err.details()}", side) from None

    def _forget_waiting(self, rid: str) -> bool:
        """Abort hook (engine thread): rid stops waiting for destination items, wherever they were asked for."""
        if not self.prealloc.remove(rid):
            return False
        cancel = getattr(self.rt.engine.scheduler, "cancel_prealloc", None)  # DP attention: another rank's
        if cancel is not None:
            cancel(rid)
        return True

    async def _preallocate(self, req: Request) -> tuple[dict, int]:
        """(destination items for the prompt, the DP rank whose pools hold them); waits (bounded) while the
        pools cannot hold it."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def deliver(items) -> None:  # loop thread
            if fut.done():
                return
            if isinstance(items, Exception):
                fut.set_exception(items)
            else:
                fut.set_result(items)

        def on_ready(items) -> None:  # engine thread
            if not isinstance(items, Exception):
                owner = getattr(self.rt.engine.scheduler, "dp_rank_of", None)  # DP attention: any DP rank
                items = (items, owner(req.rid) if owner is not None else 0)
            loop.call_soon_threadsafe(deliver, items)

        added = self.rt.thread.call(lambda e: self.prealloc.add(req, on_ready))
        try:
            await added
            return await asyncio.wait_for(asyncio.shield(fut), self.rt.cfg.prealloc_timeout)
        except ValueError as exc:
            raise RpcError(Code.INVALID_ARGUMENT, f"request {req.rid!r}: {exc}") from None
        except TimeoutError:
            await self.rt.thread.call(lambda e: self.rt.abort_request(e, req.rid))
            raise RpcError(Code.RESOURCE_EXHAUSTED,
                           f"request {req.rid!r}: no room for {len(req.input_ids)} prompt tokens after "
                           f"{self.rt.cfg.prealloc_timeout:.0f}s", pb.DECODE_OVERLOADED) from None
        except asyncio.CancelledError:
            # queued after the add, so it finds the request pending or preallocated: one disposal either way
            await self.rt.thread.call(lambda e: self.rt.abort_request(e, req.rid))
            raise
