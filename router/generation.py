"""Run one job on a (decode, prefill) pair: stream TokenChunks, detokenize, trim stops, yield text deltas."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from pdpair.router.attempt import Stream, open_stream
from pdpair.router.detokenizer import IncrementalDetokenizer
from pdpair.router.errors import ApiError, from_rpc_error
from pdpair.router.job import GenerationJob
from pdpair.router.metrics import RouterMetrics
from pdpair.router.pool import NodePool
from pdpair.router.responses import PdpairInfo, pdpair_info
from pdpair.router.stop import StopTrimmer
from pdpair.router.tokenizer import RouterTokenizer

logger = logging.getLogger(__name__)


@dataclass
class Delta:
    """New text; the first delta (maybe empty) marks the first token, the last one has finish_reason."""

    text: str
    completion_tokens: int
    finish_reason: str | None = None
    info: PdpairInfo | None = None


async def generate(
    job: GenerationJob,
    pool: NodePool,
    tok: RouterTokenizer,
    metrics: RouterMetrics,
    timeout_s: float | None = None,
) -> AsyncIterator[Delta]:
    """Closing the iterator early (client gone) cancels the Generate call, which cancels it on both nodes.
    `timeout_s` bounds the whole generation, a failover included."""
    start = last = time.monotonic()
    deadline = None if timeout_s is None else start + timeout_s
    detok = IncrementalDetokenizer(tok.tokenizer)
    stop = StopTrimmer(job.stops)
    metrics.inflight.inc()
    metrics.prompt_tokens.inc(len(job.prompt_ids))
    info: PdpairInfo | None = None
    finish = None
    produced = 0
    text = ""
    decode_addr = "-"
    stream: Stream | None = None
    node_finished = False  # the node ended the request itself (not the router's stop-string check)
    try:
        stream = await open_stream(job, pool, metrics, deadline)
        decode_addr = stream.pair.decode.addr
        prefill_addr = stream.pair.prefill.addr if stream.pair.prefill is not None else None
        chunk = stream.first
        while chunk is not None:
            now = time.monotonic()
            produced += len(chunk.token_ids)
            text = stop.push(detok.push(chunk.token_ids))
            first = info is None
            if first:
                info = pdpair_info(chunk, decode_addr, prefill_addr)
                metrics.ttft.observe(now - start)
                if chunk.prefilled_remotely:
                    metrics.remote_prefills.inc()
                    metrics.transfer_bytes.inc(chunk.transfer.bytes)
            else:
                metrics.observe_tokens(now - last, len(chunk.token_ids))
            last = now
            if chunk.finish_reason:
                finish, node_finished = chunk.finish_reason, True
                break
            if stop.stopped:  # the node enforces stop strings too; should it run on, the call is cancelled
                finish = "stop"
                break
            if text or first:
                yield Delta(text, produced, info=info)
                text = ""
            try:
                chunk = await stream.call.read()
            except grpc.aio.AioRpcError as exc:  # after the first token: no failover, reported as it is
                raise from_rpc_error(exc, decode_addr, job.rid) from None
            chunk = None if chunk is grpc.aio.EOF else chunk
    finally:
        if stream is not None and node_finished:
            stream.release_after_end()
        elif stream is not None:
            stream.release()
        metrics.inflight.dec()
        metrics.completion_tokens.inc(produced)
    if finish is None:
        logger.warning("rid=%s decode node %s ended the stream without a finish reason", job.rid, decode_addr)
        raise ApiError(502, f"the decode node ended the stream without a finish reason (request id {job.rid})")
    if finish == "abort":
        logger.warning("rid=%s decode node %s aborted the request", job.rid, decode_addr)
        raise ApiError(503, f"the request was aborted by the serving node (draining or a failed transfer; "
                       f"request id {job.rid})", code="aborted")
    metrics.e2e.observe(time.monotonic() - start)
    text += stop.push(detok.flush())
    text += stop.flush()
    if stop.stopped:
        finish = "stop"
    logger.debug("rid=%s finished %s after %d tokens", job.rid, finish, produced)
    yield Delta(text, produced, finish_reason=finish, info=info)
