"""RemotePrefill: have a prefill node fill our preallocated pages — wait for pages, handshake once per
peer, call Prefill with the registration, then activate the request with the first token."""

from __future__ import annotations

import asyncio
import logging

import grpc
from pdpair.decode_node.peers import PrefillPeers
from pdpair.decode_node.prealloc import PreallocManager
from pdpair.decode_node.transfers import TransferManager, must_quarantine
from pdpair.engine import Request
from pdpair.node.runtime import NodeRuntime
from pdpair.node.status import RpcError
from pdpair.proto import pdpair_pb2 as pb
from pdpair.transfer import LayoutMismatch

logger = logging.getLogger(__name__)
Code = grpc.StatusCode


class RemotePrefill:
    def __init__(self, rt: NodeRuntime) -> None:
        self.rt = rt
        self.prealloc = PreallocManager()
        self.transfers = TransferManager()
        self.peers = PrefillPeers(rt.layout, tls=rt.cfg.tls)
        rt.thread.add_hook(lambda: self.prealloc.poll(rt.engine.scheduler.preallocate))

    async def run(self, req: Request, sampling: pb.SamplingParams, addr: str) -> pb.PrefillResult:
        """Returns once the prompt's pages landed and the request is running (first token pending as an event)."""
        peer = await self._peer(addr)
        items = await self._preallocate(req)
        registration = pb.PageRegistration(
            decode_node_id=self.rt.layout.node_id,
            pools=[pb.ItemIds(kind=k, ids=v.tolist()) for k, v in items.items()])
        msg = pb.PrefillRequest(rid=req.rid, token_ids=req.input_ids, sampling=sampling, registration=registration)
        self.transfers.begin(req.rid, addr, items)
        code: grpc.StatusCode | None = Code.CANCELLED
        try:
            for attempt in (0, 1):
                call = peer.stub.Prefill(msg, timeout=self.rt.cfg.prefill_timeout)
                try:
                    result = await call
                    code = None
                    break
                except asyncio.CancelledError:
                    call.cancel()
                    raise
                except grpc.aio.AioRpcError as err:
                    code = err.code()
                    if code in (Code.FAILED_PRECONDITION, Code.UNAVAILABLE):
                        await self.peers.drop(addr)  # the peer restarted or went away: handshake again
                    if code == Code.FAILED_PRECONDITION and attempt == 0:
                        peer = await self._peer(addr)
                        continue
                    raise RpcError(code, f"prefill on {addr}: {err.details()}") from None
        finally:
            self.transfers.end(req.rid)
            if code == Code.ABORTED:
                self.rt.metrics.transfer_failures.inc()
            if code is not None:
                quarantine = must_quarantine(code)
                await self.rt.thread.call(lambda e: self._drop(e, req.rid, quarantine))
        self._count(result.transfer)
        try:
            await self.rt.thread.call(lambda e: e.scheduler.activate(req.rid, result.first_token))
        except ValueError as exc:  # a first token outside the vocabulary
            await self.rt.thread.call(lambda e: e.scheduler.abort(req.rid))
            raise RpcError(Code.INTERNAL, f"prefill on {addr} answered a bad first token: {exc}") from None
        return result

    def _count(self, t: pb.TransferStats) -> None:
        """Bytes received, as the prefill node reported them."""
        self.rt.counters.transfer_bytes_total += t.bytes
        self.rt.counters.transfer_batches_total += t.batches
        self.rt.metrics.transfer_bytes.inc(t.bytes)
        self.rt.metrics.transfer_batches.inc(t.batches)

    def _drop(self, engine, rid: str, quarantine: bool) -> None:
        """Engine thread: forget a preallocated request; its pages are quarantined when a write may land."""
        self.prealloc.remove(rid)
        if quarantine:
            try:
                self.rt.hold(engine.scheduler.detach(rid))
            except KeyError:
                pass
        else:
            engine.scheduler.abort(rid)

    async def _peer(self, addr: str):
        try:
            return await self.peers.get(addr)
        except LayoutMismatch as exc:
            raise RpcError(Code.FAILED_PRECONDITION, f"prefill node {addr} cannot pair: {exc}") from None
        except grpc.aio.AioRpcError as err:
            code = err.code() if err.code() == Code.FAILED_PRECONDITION else Code.UNAVAILABLE
            raise RpcError(code, f"handshake with prefill node {addr}: {err.details()}") from None

    async def _preallocate(self, req: Request) -> dict:
        """Destination items for the prompt; waits (bounded) while the pools cannot hold it."""
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
            loop.call_soon_threadsafe(deliver, items)

        await self.rt.thread.call(lambda e: self.prealloc.add(req, on_ready))
        try:
            return await asyncio.wait_for(asyncio.shield(fut), self.rt.cfg.prealloc_timeout)
        except ValueError as exc:
            raise RpcError(Code.INVALID_ARGUMENT, f"request {req.rid!r}: {exc}") from None
        except TimeoutError:
            await self.rt.thread.call(lambda e: self._drop(e, req.rid, False))
            raise RpcError(Code.RESOURCE_EXHAUSTED,
                           f"request {req.rid!r}: no room for {len(req.input_ids)} prompt tokens after "
                           f"{self.rt.cfg.prealloc_timeout:.0f}s") from None
        except asyncio.CancelledError:
            await self.rt.thread.call(lambda e: self._drop(e, req.rid, False))
            raise
