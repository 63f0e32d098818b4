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
from pdpair.prefill_node.bootstrap import BootstrapManager, PeerRefused, UnknownPeer, peer_claim
from pdpair.prefill_node.inflight import InflightManager
from pdpair.prefill_node.live import AbortedEarly, Live, LiveRequests, NotYours
from pdpair.prefill_node.validate import cached_prefix_pages, expected_items, validate_registration
from pdpair.proto import pdpair_pb2 as pb
from pdpair.proto import pdpair_pb2_grpc as pb_grpc
from pdpair.transfer import LayoutMismatch, MemoryLayout, build_plan

logger = logging.getLogger(__name__)
Code = grpc.StatusCode


async def _until_done(live: Live):
    """Await the request's task. Cancelled (the decode node went away): cancel the task once and still wait
    for it, so the call ends only after its cleanup (no write in flight, items freed or quarantined)."""
    try:
        return await asyncio.shield(live.task)
    except asyncio.CancelledError:
        live.cancel()
        while not live.task.done():
            try:
                await asyncio.shield(live.task)
            except asyncio.CancelledError:
                continue
            except BaseException:
                break
        raise


def _log_release_failure(rid: str):
    def done(fut) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            logger.error("prefill %s: freeing its pages failed: %r", rid, fut.exception())
    return done


class PrefillServicer(pb_grpc.PrefillNodeServicer):
    def __init__(self, rt: NodeRuntime) -> None:
        self.rt = rt
        self.bootstrap = BootstrapManager(rt.layout)
        self.waiting = Admission(rt.cfg.max_queue)
        self.inflight = InflightManager(on_result=self._on_result)
        self.live = LiveRequests()
        rt.set_stage_counts(lambda: {"transferring": self.inflight.num_transferring,
                                     "inflight_transfers": self.inflight.num_batches})
        self._info = rt.model_info()
        # what each attention-TP rank sends from: its own region set and its transfer workers (rank 0's are this
        # process's; a follower's run in its process, see engine/distributed/rank_sender.py)
        self._src = [rt.layout.for_dp_rank(0, r) for r in range(rt.layout.attn_tp_size)]
        writers = getattr(rt.engine, "rank_writers", None)
        self._senders = [rt.workers] + [writers.writer(r) for r in range(1, rt.layout.attn_tp_size)]

    def _on_result(self, res) -> None:
        ok = not res.needs_quarantine  # a cancel that dropped unsent batches is no failure
        self.rt.metrics.observe_batch(ok, res.nbytes, res.seconds)
        if ok:
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
            local = self.bootstrap.handshake(remote, peer_claim(context))
        except PeerRefused as exc:
            raise RpcError(Code.PERMISSION_DENIED, str(exc)) from None
        except LayoutMismatch as exc:
            raise RpcError(Code.FAILED_PRECONDITION, str(exc)) from None
        except ValueError as exc:
            raise RpcError(Code.INVALID_ARGUMENT, str(exc)) from None
        return pb.HandshakeResponse(prefill_layout=layout_to_proto(local))

    # -- Prefill ---------------------------------------------------------------------------------
    def _validate(self, request: pb.PrefillRequest,
                  context) -> tuple[list[MemoryLayout], object, dict[str, np.ndarray], int]:
        """(the destination's region set per attention-TP rank, sampling, destination ids per kind, cached
        prefix pages)."""
        try:
            peer = self.bootstrap.peer(request.registration.decode_node_id, peer_claim(context))
        except UnknownPeer as exc:
            raise RpcError(Code.FAILED_PRECONDITION, str(exc.args[0])) from None
        except PeerRefused as exc:
            raise RpcError(Code.PERMISSION_DENIED, str(exc)) from None
        info = self._info
        try:
            sampling = sampling_from_proto(request.sampling, info.vocab_size)
            check_prompt(list(request.token_ids), info.vocab_size, info.context_length)
            windows, n = self.rt.engine.pools.windows(), len(request.token_ids)
            skip = cached_prefix_pages(request.registration.cached_prefix_len, n, info.page_size, windows)
            expected = expected_items(windows, n, info.page_size, self.rt.engine.pools.slot_kinds, skip)
            # the destination DP rank's region set of every attention-TP rank: the ids index each of them
            peers = [peer.for_dp_rank(request.registration.dp_rank, r) for r in range(len(self._src))]
            num_items = {r.kind: min(p.region(r.kind).num_items for p in peers) for r in peers[0].regions}
            dst = validate_registration(((p.kind, p.ids) for p in request.registration.pools), num_items, expected,
                                        dict.fromkeys(self.rt.engine.pools.slot_kinds, 1),
                                        self.rt.engine.pools.companions)
        except ValueError as exc:
            raise RpcError(Code.INVALID_ARGUMENT, f"request {request.rid!r}: {exc}") from None
        return peers, sampling, dst, skip

    @rpc_edge
    async def Prefill(self, request: pb.PrefillRequest, context) -> pb.PrefillResult:
        if self.rt.draining:
            raise RpcError(Code.UNAVAILABLE, "prefill node is draining", pb.PREFILL_DRAINING)
        peers, sampling, dst, skip = self._validate(request, context)
        rid = request.rid
        try:
            self.waiting.admit(rid)
        except QueueFull as exc:
            raise RpcError(Code.RESOURCE_EXHAUSTED, str(exc), pb.PREFILL_OVERLOADED) from None
        except ValueError as exc:
            raise RpcError(Code.INVALID_ARGUMENT, str(exc)) from None
        try:
            live = self.live.open(rid, peers[0].node_id)
        except AbortedEarly:
            self.waiting.done(rid)
            raise RpcError(Code.CANCELLED, f"request {rid!r} was aborted before it arrived") from None
        self.rt.inflight += 1
        self.rt.counters.requests_total += 1
        self.rt.metrics.requests.inc()
        ok = False
        try:
            live.task = asyncio.ensure_future(self._prefill(live, list(request.token_ids), sampling, peers, dst, skip))
            result = await _until_done(live)
            ok = True
            return result
        finally:
            if not ok:
                self.rt.counters.requests_aborted += 1
                self.rt.metrics.aborted.inc()
            self.waiting.done(rid)
            self.rt.inflight -= 1

    @rpc_edge
    async def Abort(self, request: pb.AbortRequest, context) -> pb.AbortResponse:
        """Returns once no write of the request can still land in the decode node's memory."""
        try:
            self.bootstrap.peer(request.decode_node_id, peer_claim(context))
            out = await self.live.abort(request.rid, request.decode_node_id)
        except UnknownPeer as exc:
            raise RpcError(Code.FAILED_PRECONDITION, str(exc.args[0])) from None
        except PeerRefused as exc:
            raise RpcError(Code.PERMISSION_DENIED, str(exc)) from None
        except NotYours:
            raise RpcError(Code.PERMISSION_DENIED,
                           f"request {request.rid!r} was not registered by {request.decode_node_id!r}") from None
        logger.debug("abort %s: found=%s transfer_failed=%s", request.rid, out.found, out.transfer_failed)
        return pb.AbortResponse(found=out.found, writes_drained=True, transfer_failed=out.transfer_failed)

    async def _prefill(self, live: Live, ids: list[int], sampling, peers: list[MemoryLayout],
                       dst: dict[str, np.ndarray], skip: int) -> pb.PrefillResult:
        """The request's one task: prefill, stream pages (not the `skip` leading pages the decode node holds),
        and on any ending free or quarantine its items."""
        t0 = time.perf_counter()
        rid, thread = live.rid, self.rt.thread
        req = Request(rid=rid, input_ids=ids, sampling=sampling, peer_cached_pages=skip)
        stream = thread.open_stream(rid)
        self.inflight.open(rid)
        try:
            try:
                await thread.call(lambda e: e.scheduler.submit(req, prefill_only=True))
            except ValueError as exc:
                raise RpcError(Code.INVALID_ARGUMENT, f"request {rid!r}: {exc}") from None
            first_token, t_first_chunk = await self._stream_chunks(rid, stream, peers, dst)
            tr = await self.inflight.wait(rid)
            if tr.error is not None:
                raise RpcError(Code.ABORTED, f"request {rid!r}: page transfer failed: {tr.error}",
                               pb.TRANSFER_FAILED)
            # the pages are freed on the engine thread after its current step; the answer does not wait for that
            # (a step can be another prompt's whole chunk): the node's next Prefill or Stats call queues behind it
            thread.call(lambda e: e.scheduler.release(rid)).add_done_callback(_log_release_failure(rid))
            t_end = time.perf_counter()
            logger.debug("prefill %s: %d tokens, %d items, %d batches, %.3fs", rid, len(ids), tr.tally.items,
                         tr.tally.batches, t_end - t0)
            return pb.PrefillResult(rid=rid, first_token=first_token, queue_seconds=t_first_chunk - t0,
                                    prefill_seconds=t_end - t0, transfer=tr.tally.to_proto())
        except BaseException:
            live.cleaning = True
            await self._cleanup(live)
            raise
        finally:
            thread.close_stream(rid)
            self.inflight.close(rid)
            self.live.close(live)

    async def _stream_chunks(self, rid: str, stream: asyncio.Queue, peers: list[MemoryLayout],
                             dst: dict[str, np.ndarray]) -> tuple[int, float]:
        """Consume the request's events; send each chunk's completed pages as soon as it is reported, every
        attention-TP rank its share of the heads into the same-numbered destination rank's regions (the same
        item ids: only the leaders allocate). The pages are ready once every rank's writes completed."""
        sent = dict.fromkeys(dst, 0)
        t_first = None
        while True:
            ev = await stream.get()
            if isinstance(ev, EngineFailure):
                raise RpcError(Code.INTERNAL, f"request {rid!r}: engine failure: {ev.error}", pb.PREFILL_FAILED)
            if not isinstance(ev, ChunkEvent):
                if ev.finish_reason == "error":
                    raise RpcError(Code.INTERNAL, f"request {rid!r}: the prefill forward failed", pb.PREFILL_FAILED)
                if ev.finish_reason is not None:
                    raise RpcError(Code.ABORTED, f"request {rid!r} ended during prefill ({ev.finish_reason})")
                continue
            t_first = t_first or time.perf_counter()
            pairs = {}
            for kind, src in ev.kind_pages.items():
                lo, n = ev.kind_starts[kind], len(src)
                if lo + n > len(dst[kind]):
                    raise RpcError(Code.INTERNAL, f"request {rid!r}: {kind} pages [{lo}, {lo + n}) past the "
                                                  f"{len(dst[kind])} registered")
                pairs[kind] = (np.asarray(src), dst[kind][lo:lo + n])
                sent[kind] = lo + n
            for r, (src, peer) in enumerate(zip(self._src, peers, strict=True)):
                plan = build_plan(src, peer, pairs)
                if len(plan):
                    cf = self._senders[r].submit(rid, peer.session_id, plan, ready=ev.ready)
                    # items count once (rank 0's); every rank's bytes and entries count
                    kinds = plan.kind_totals if r == 0 else {k: (0, b, e) for k, (_, b, e) in plan.kind_totals.items()}
                    self.inflight.add(rid, asyncio.wrap_future(cf), plan.num_items if r == 0 else 0, kinds)
            error = self.inflight.failed(rid)
            if error is not None:
                raise RpcError(Code.ABORTED, f"request {rid!r}: page transfer failed: {error}", pb.TRANSFER_FAILED)
            if ev.is_last:
                short = {k: (n, len(dst[k])) for k, n in sent.items() if n != len(dst[k])}
                if short or ev.first_token is None:
                    raise RpcError(Code.INTERNAL, f"request {rid!r}: last chunk sent {short or 'no first token'}")
                return int(ev.first_token), t_first

    async def _cleanup(self, live: Live) -> None:
        """Cancelled or failed: drop batches not yet started and let started ones end (a completed worker
        future means nothing of it moves any more). Then free the pages, or quarantine them when a write
        failed (it may still land)."""
        rid = live.rid
        for sender in self._senders:  # every rank's: a failed or aborted request drains them all
            sender.cancel(rid)
        tr = await self.inflight.wait(rid)
        live.transfer_failed = tr.error is not None
        await self.rt.thread.call(lambda e: self.rt.abort_request(e, rid, hold=live.transfer_failed))
        logger.debug("prefill %s aborted (transfer error: %s)", rid, tr.error)

    # -- ModelInfo / Stats -----------------------------------------------------------------------
    async def ModelInfo(self, request, context) -> pb.ModelInfoResponse:
        return self._info

    async def Stats(self, request, context) -> pb.NodeStats:
        return await self.rt.stats()
