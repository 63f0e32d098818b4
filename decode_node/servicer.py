"""DecodeNode gRPC servicer: Generate (local or remote prefill, then a token stream), ModelInfo, Stats."""

from __future__ import annotations

import asyncio
import logging

import grpc
from pdpair.decode_node.remote import RemotePrefill
from pdpair.decode_node.running import RunningManager
from pdpair.decode_node.trust import PrefillTrust, UntrustedPrefill
from pdpair.engine import Request
from pdpair.node.admission import Admission, QueueFull
from pdpair.node.convert import check_prompt, sampling_from_proto
from pdpair.node.engine_thread import EngineFailure
from pdpair.node.runtime import NodeRuntime
from pdpair.node.status import RpcError, abort_with
from pdpair.proto import pdpair_pb2 as pb
from pdpair.proto import pdpair_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)
Code = grpc.StatusCode


class DecodeServicer(pb_grpc.DecodeNodeServicer):
    def __init__(self, rt: NodeRuntime) -> None:
        self.rt = rt
        self.admission = Admission(rt.cfg.max_queue)
        self.running = RunningManager(on_ttft=rt.metrics.ttft.observe, on_itl=rt.metrics.itl.observe)
        self.remote = RemotePrefill(rt)
        self.trust = PrefillTrust(rt.cfg.prefill_allow, tls=rt.cfg.tls is not None)
        rt.set_stage_counts(lambda: {"prealloc_waiting": len(self.remote.prealloc),
                                     "transferring": len(self.remote.transfers),
                                     "inflight_transfers": len(self.remote.transfers)})
        self._info = rt.model_info()

    def _admit(self, request: pb.GenerateRequest):
        if self.rt.draining:
            raise RpcError(Code.UNAVAILABLE, "decode node is draining", pb.DECODE_DRAINING)
        try:
            sampling = sampling_from_proto(request.sampling, self._info.vocab_size)
            check_prompt(list(request.token_ids), self._info.vocab_size, self._info.context_length)
            self.admission.admit(request.rid)
        except QueueFull as exc:
            raise RpcError(Code.RESOURCE_EXHAUSTED, str(exc), pb.DECODE_OVERLOADED) from None
        except ValueError as exc:
            raise RpcError(Code.INVALID_ARGUMENT, f"request {request.rid!r}: {exc}") from None
        return sampling

    async def Generate(self, request: pb.GenerateRequest, context) -> None:
        try:
            if request.prefill_addr:  # before anything is dialled
                try:
                    await self.trust.check(request.prefill_addr)
                except UntrustedPrefill as exc:
                    raise RpcError(Code.INVALID_ARGUMENT, f"request {request.rid!r}: {exc}") from None
            sampling = self._admit(request)
        except RpcError as err:
            await abort_with(context, err)
        rid = request.rid
        self.rt.inflight += 1
        self.rt.counters.requests_total += 1
        self.rt.metrics.requests.inc()
        done = [False]  # the finish chunk was written: a cancel after it is no abort
        try:
            await self._generate(request, sampling, context, done)
        except RpcError as err:
            self._count_abort()
            logger.debug("generate %s -> %s", rid, err)
            await abort_with(context, err)
        except asyncio.CancelledError:
            if not done[0]:
                self._count_abort()
            logger.debug("generate %s cancelled", rid)
            raise
        finally:
            self.admission.done(rid)
            self.rt.inflight -= 1

    def _count_abort(self) -> None:
        self.rt.counters.requests_aborted += 1
        self.rt.metrics.aborted.inc()

    async def _generate(self, request: pb.GenerateRequest, sampling, context, done: list[bool]) -> None:
        rid, thread = request.rid, self.rt.thread
        req = Request(rid=rid, input_ids=list(request.token_ids), sampling=sampling)
        remote = bool(request.prefill_addr) and len(req.input_ids) >= self.rt.cfg.local_prefill_below
        stream = thread.open_stream(rid)
        info = self.running.start(rid, len(req.input_ids))
        finished = False
        try:
            first: pb.TokenChunk | None = pb.TokenChunk(prompt_tokens=len(req.input_ids), prefilled_remotely=remote)
            echo = None  # remote: the first token, which the next engine step reports again
            if remote:
                result = await self.remote.run(req, request.sampling, request.prefill_addr)
                # send the first token now instead of after the next decode step
                echo = result.first_token
                self.running.tokens(rid, 1)
                first.transfer.CopyFrom(result.transfer)
                first.prefill_first_chunk_seconds = result.queue_seconds
                first.prefill_node_seconds = result.prefill_seconds
                first.token_ids.append(echo)
                first.ttft_seconds = info.ttft or 0.0
                await context.write(first)
                first = None
            else:
                try:
                    await thread.call(lambda e: e.scheduler.submit(req))
                except ValueError as exc:
                    raise RpcError(Code.INVALID_ARGUMENT, str(exc)) from None
            while not finished:
                tokens, reason = await self._next_tokens(rid, stream)
                if echo is not None:
                    if not tokens or tokens[0] != echo:
                        raise RpcError(Code.INTERNAL, f"request {rid!r}: first event {tokens[:1]} != first "
                                                      f"token {echo}")
                    tokens, echo = tokens[1:], None
                finished = reason is not None
                if not tokens and not finished:
                    continue
                self.running.tokens(rid, len(tokens))
                chunk, first = (first or pb.TokenChunk()), None
                if chunk.prompt_tokens:
                    chunk.ttft_seconds = info.ttft or 0.0
                chunk.token_ids.extend(tokens)
                chunk.finish_reason = reason or ""
                done[0] = finished
                await context.write(chunk)
        finally:
            thread.close_stream(rid)
            self.running.finish(rid)
            if not finished:
                await thread.call(lambda e: self.rt.abort_request(e, rid))

    async def _next_tokens(self, rid: str, stream: asyncio.Queue) -> tuple[list[int], str | None]:
        """Every token the engine has reported for rid so far (at least one event); the finish reason if done."""
        events = [await stream.get()]
        while not stream.empty():
            events.append(stream.get_nowait())
        tokens: list[int] = []
        reason = None
        for ev in events:
            if isinstance(ev, EngineFailure):
                raise RpcError(Code.INTERNAL, f"request {rid!r}: engine failure: {ev.error}")
            tokens.extend(ev.new_token_ids)
            reason = ev.finish_reason or reason
        if reason == "error":
            raise RpcError(Code.INTERNAL, f"request {rid!r}: its forward failed on the decode node")
        if reason == "abort":
            raise RpcError(Code.ABORTED, f"request {rid!r} was aborted by the engine")
        return tokens, reason

    async def ModelInfo(self, request, context) -> pb.ModelInfoResponse:
        return self._info

    async def Stats(self, request, context) -> pb.NodeStats:
        return await self.rt.stats()
