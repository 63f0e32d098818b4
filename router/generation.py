"""Run one job on a (decode, prefill) pair: stream TokenChunks, detokenize, trim stops, yield text deltas."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from pdpair.proto import pdpair_pb2 as pb
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
    """Closing the iterator early (client gone) cancels the Generate call, which cancels it on both nodes."""
    pair = pool.pick()
    prefill_addr = pair.prefill.addr if pair.prefill is not None else ""
    req = pb.GenerateRequest(rid=job.rid, token_ids=job.prompt_ids, sampling=job.sampling, prefill_addr=prefill_addr)
    detok = IncrementalDetokenizer(tok.tokenizer)
    stop = StopTrimmer(job.stops)
    held = [n for n in (pair.decode, pair.prefill) if n is not None]
    for node in held:
        node.inflight += 1
    metrics.inflight.inc()
    metrics.prompt_tokens.inc(len(job.prompt_ids))
    logger.debug("rid=%s decode=%s prefill=%s prompt=%d", job.rid, pair.decode.addr, prefill_addr or "-",
                 len(job.prompt_ids))
    start = last = time.monotonic()
    info: PdpairInfo | None = None
    finish = None
    produced = 0
    text = ""
    call = pair.decode.generate(req, timeout_s)
    try:
        async for chunk in call:
            now = time.monotonic()
            produced += len(chunk.token_ids)
            text = stop.push(detok.push(chunk.token_ids))
            if info is None:
                info = pdpair_info(chunk, pair.decode.addr, prefill_addr or None)
                metrics.ttft.observe(now - start)
                if chunk.prefilled_remotely:
                    metrics.remote_prefills.inc()
                    metrics.transfer_bytes.inc(chunk.transfer.bytes)
                first = True
            else:
                metrics.observe_tokens(now - last, len(chunk.token_ids))
                first = False
            last = now
            if chunk.finish_reason:
                finish = chunk.finish_reason
                break
            if stop.stopped:  # the node enforces stop strings too; should it run on, the call is cancelled
                finish = "stop"
                break
            if text or first:
                yield Delta(text, produced, info=info)
                text = ""
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            pool.report_unavailable(pair, f"Generate: {exc.details()}")
        raise from_rpc_error(exc, pair.decode.addr) from None
    finally:
        if not call.done():
            call.cancel()
        for node in held:
            node.inflight -= 1
        metrics.inflight.dec()
        metrics.completion_tokens.inc(produced)
    if finish is None:
        raise ApiError(502, f"decode node {pair.decode.addr} ended the stream without a finish reason")
    if finish == "abort":
        raise ApiError(503, f"decode node {pair.decode.addr} aborted the request (draining or a failed transfer)",
                       code="aborted")
    metrics.e2e.observe(time.monotonic() - start)
    text += stop.push(detok.flush())
    text += stop.flush()
    if stop.stopped:
        finish = "stop"
    logger.debug("rid=%s finished %s after %d tokens", job.rid, finish, produced)
    yield Delta(text, produced, finish_reason=finish, info=info)
