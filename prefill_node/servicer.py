"""PrefillNode gRPC servicer: Handshake, Prefill (chunked prefill with per-chunk page transfers),
ModelInfo, Stats. Proto messages are converted to internal types here and nowhere else."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
import numpy as np
from pdpair.engine import ChunkEvent, Request
from pdpair.node.admission import Admission, QueueFull
from pdpair.node.convert import check_prompt, sampling_from_proto
from pdpair.node.engine_thread import EngineFailure
from pdpair.node.layout import layout_from_proto, layout_to_proto
from pdpair.node.runtime import NodeRuntime
from pdpair.node.status import RpcError, rpc_edge
from pdpair.prefill_node.bootstrap import BootstrapManager, UnknownPeer
from pdpair.prefill_node.inflight import InflightManager
from pdpair.prefill_node.validate import expected_items, validate_registration
from pdpair.proto import pdpair_pb2 as pb
from pdpair.proto import pdpair_pb2_grpc as pb_grpc
from pdpair.transfer import LayoutMismatch, MemoryLayout, build_plan

logger = logging.getLogger(__name__)
Code = grpc.StatusCode


class PrefillServicer(pb_grpc.PrefillNodeServicer):
    def __init__(self, rt: NodeRuntime) -> None:
        self.rt = rt
        self.bootstrap = BootstrapManager(rt.layout)
        self.waiting = Admission(rt.cfg.max_queue)
        self.inflight = InflightManager(on_result=self._on_result)
        rt.set_stage_counts(lambda: {"transferring": self.inflight.num_transferring,
                                     "inflight_transfers": self.inflight.num_batches})
        self._info = rt.model_info()

    def _on_result(self, res) -> None:
        self.rt.metrics.observe_batch(res.ok, res.nbytes, res.seconds)
        if res.ok:
            self.rt.counters.transfer_bytes_total += res.nbytes
            self.rt.counters.transfer_batches_total += 1

    # -- Handshake -------------------------------------------------------------------------------
    @rpc_edge
    async def Handshake(self, request: pb.HandshakeRequest, context) -> pb.HandshakeResponse:
        try:
            remote = layout_from_proto(request.decode_layout)
        except ValueError as exc:
            raise RpcError(Code.INVALID_ARGUMENT, f"bad decode layout: {exc}") from None
        try:
            local = self.bootstrap.handshake(remote)
        except LayoutMismatch as exc:
            raise RpcError(Code.FAILED_PRECONDITION, str(exc)) from None
        except ValueError as exc:
            raise RpcError(Code.INVALID_ARGUMENT, str(exc)) from None
        return pb.HandshakeResponse(prefill_layout=layout_to_proto(local))

    # -- Prefill ---------------------------------------------------------------------------------
    def _validate(self, request: pb.PrefillRequest) -> tuple[MemoryLayout, object, dict[str, np.ndarray]]:
        try:
            peer = self.bootstrap.peer(request.registration.decode_node_id)
        except UnknownPeer as exc:
            raise RpcError(Code.FAILED_PRECONDITION, str(exc.args[0])) from None
        info = self._info
        try:
            sampling = sampling_from_proto(request.sampling)
            check_prompt(list(request.token_ids), info.vocab_size, info.context_length)
            expected = expected_items(self.rt.engine.pools.windows(), len(request.token_ids), info.page_size)
            num_items = {r.kind: r.num_items for r in peer.regions}
            dst = validate_registration(((p.kind, p.ids) for p in request.registration.pools), num_items, expected)
        except ValueError as exc:
            raise RpcError(Code.INVALID_ARGUMENT, f"request {request.rid!r}: {exc}") from None
        return peer, sampling, dst

    @rpc_edge
    async def Prefill(self, request: pb.PrefillRequest, context) -> pb.PrefillResult:
        if self.rt.draining:
            raise RpcError(Code.UNAVAILABLE, "prefill node is draining")
        peer, sampling, dst = self._validate(request)
        rid = request.rid
        try:
            self.waiting.admit(rid)
        except QueueFull as exc:
            raise RpcError(Code.RESOURCE_EXHAUSTED, str(exc)) from None
        except ValueError as exc:
            raise RpcError(Code.INVALID_ARGUMENT, str(exc)) from None
        self.rt.inflight += 1
        self.rt.counters.requests_total += 1
        self.rt.metrics.requests.inc()
        try:
            return await self._prefill(rid, list(request.token_ids), sampling, peer, dst)
        except (RpcError, asyncio.CancelledError):
            self.rt.counters.requests_aborted += 1
            self.rt.metrics.aborted.inc()
            raise
        finally:
            self.waiting.done(rid)
            self.rt.inflight -= 1

    async def _prefill(self, rid: str, ids: list[int], sampling, peer: MemoryLayout,
                       dst: dict[str, np.ndarray]) -> pb.PrefillResult:
        t0 = time.perf_counter()
        thread = self.rt.thread
        req = Request(rid=rid, input_ids=ids, sampling=sampling)
        stream = thread.open_stream(rid)
        self.inflight.open(rid)
        try:
            try:
                await thread.call(lambda e: e.scheduler.submit(req, prefill_only=True))
            except ValueError as exc:
                raise RpcError(Code.INVALID_ARGUMENT, f"request {rid!r}: {exc}") from None
            first_token, t_first_chunk = await self._stream_chunks(rid, stream, peer, dst)
            tr = await self.inflight.wait(rid)
            if tr.error is not None:
                raise RpcError(Code.ABORTED, f"request {rid!r}: page transfer failed: {tr.error}")
            await thread.call(lambda e: e.scheduler.release(rid))
            t_end = time.perf_counter()
            logger.debug("prefill %s: %d tokens, %d items, %d batches, %.3fs", rid, len(ids), tr.tally.items,
                         tr.tally.batches, t_end - t0)
            return pb.PrefillResult(rid=rid, first_token=first_token, queue_seconds=t_first_chunk - t0,
                                    prefill_seconds=t_end - t0, transfer=tr.tally.to_proto())
        except BaseException:
            await self._cleanup(rid)
            raise
        finally:
            thread.close_stream(rid)
            self.inflight.close(rid)

    async def _stream_chunks(self, rid: str, stream: asyncio.Queue, peer: MemoryLayout,
                             dst: dict[str, np.ndarray]) -> tuple[int, float]:
        """Consume the request's events; send each chunk's completed pages as soon as it is reported."""
        sent = dict.fromkeys(dst, 0)
        t_first = None
        while True:
            ev = await stream.get()
            if isinstance(ev, EngineFailure):
                raise RpcError(Code.INTERNAL, f"request {rid!r}: engine failure: {ev.error}")
            if not isinstance(ev, ChunkEvent):
                if ev.finish_reason is not None:
                    raise RpcError(Code.ABORTED, f"request {rid!r} ended during prefill ({ev.finish_reason})")
                continue
            t_first = t_first or time.perf_counter()
            pairs = {}
            for kind, src in ev.kind_pages.items():
                lo, n = ev.kind_starts[kind], len(src)
                assert lo + n <= len(dst[kind]), f"{kind}: pages [{lo}, {lo + n}) past {len(dst[kind])} registered"
                pairs[kind] = (np.asarray(src), dst[kind][lo:lo + n])
                sent[kind] = lo + n
            plan = build_plan(self.rt.layout, peer, pairs)
            if len(plan):
                cf = self.rt.workers.submit(rid, peer.session_id, plan)
                self.inflight.add(rid, asyncio.wrap_future(cf), plan.num_items, plan.kind_totals)
            error = self.inflight.failed(rid)
            if error is not None:
                raise RpcError(Code.ABORTED, f"request {rid!r}: page transfer failed: {error}")
            if ev.is_last:
                for kind, n in sent.items():
                    assert n == len(dst[kind]), f"{kind}: sent {n} pages, {len(dst[kind])} registered"
                assert ev.first_token is not None, "last chunk without a first token"
                return int(ev.first_token), t_first

    async def _cleanup(self, rid: str) -> None:
        """Cancelled or failed: drop batches not yet started and let started ones end (a completed worker
        future means nothing of it moves any more). Then free the pages, or quarantine them when a write
        failed (it may still land)."""
        self.rt.workers.cancel(rid)
        tr = await self.inflight.wait(rid)
        if tr.error is not None:
            await self.rt.thread.call(lambda e: self._detach_and_hold(e, rid))
        else:
            await self.rt.thread.call(lambda e: e.scheduler.abort(rid))
        logger.debug("prefill %s aborted (transfer error: %s)", rid, tr.error)

    def _detach_and_hold(self, engine, rid: str) -> None:
        try:
            self.rt.hold(engine.scheduler.detach(rid))
        except KeyError:
            pass

    # -- ModelInfo / Stats -----------------------------------------------------------------------
    async def ModelInfo(self, request, context) -> pb.ModelInfoResponse:
        return self._info

    async def Stats(self, request, context) -> pb.NodeStats:
        return await self.rt.stats()
