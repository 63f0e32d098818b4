"""The stepping API the daemons drive: submit / step / abort, prefill-only and decode-side hooks."""

from __future__ import annotations

import logging

import numpy as np
from pdpair.engine.batch import ForwardMode
from pdpair.engine.events import ChunkEvent, SchedulerStats, StepEvent
from pdpair.engine.faults import Faults, InjectedFault
from pdpair.engine.request import PENDING_TOKEN, ReqStatus, Request
from pdpair.engine.runner import ModelRunner
from pdpair.engine.scheduler.decode import DecodeManager
from pdpair.engine.scheduler.handoff import chunk_items, destination_items
from pdpair.engine.scheduler.isolate import Isolator
from pdpair.engine.scheduler.overlap import InFlight
from pdpair.engine.scheduler.prefill import PrefillManager
from pdpair.engine.scheduler.resources import ResourceManager
from pdpair.engine.scheduler.stop import StopChecker
from pdpair.engine.scheduler.validate import RequestValidator
from pdpair.engine.scheduler.waiting import WaitingQueue
from pdpair.engine.streams import after_received, work_done

logger = logging.getLogger(__name__)


class Scheduler:
    """Continuous batching over small managers: admission (waiting), chunked prefill, decode.

    Owned by one thread. `step()` runs at most one decode batch and one prefill batch. With `overlap`, a step
    of decode only launches its batch before resolving the one launched the step before (overlap.py), so its
    events are those of the previous batch; every other step first drains the in-flight batch and runs serially.
    """

    def __init__(self, runner: ModelRunner, resources: ResourceManager, validator: RequestValidator,
                 stop: StopChecker, chunk_size: int, max_running_requests: int, seed: int = 0,
                 overlap: bool = False) -> None:
        self.runner = runner
        self.resources = resources
        self.validator = validator
        self.stop = stop
        self.max_running_requests = max_running_requests
        self.waiting = WaitingQueue(resources)
        self.prefill = PrefillManager(chunk_size, resources)
        self.decode = DecodeManager(resources)
        self._reqs: dict[str, Request] = {}
        self._pending: list[StepEvent] = []  # produced between steps (activate)
        self._activations: list[tuple[Request, int]] = []  # landed remote prefills waiting for decode room
        self.faults = Faults.from_env()
        self.isolator = Isolator(self.faults.poison_token)
        self._rng = np.random.default_rng(seed)
        self.device = "cpu"  # the engine's device (set by Engine): CUDA chunk hand-overs carry a ready event
        self.overlap = overlap
        self._inflight: InFlight | None = None  # overlap: the decode batch launched and not read yet

    # ---- submission ---------------------------------------------------------------------------
    def submit(self, req: Request, prefill_only: bool = False) -> None:
        """Validate (ValueError) and queue a request for local prefill (and decode unless prefill_only)."""
        self._register(req)
        req.prefill_only = prefill_only
        self.waiting.push(req)
        logger.debug("submitted %s: %d prompt tokens, prefill_only=%s", req.rid, req.prompt_len, prefill_only,
                     extra={"rid": req.rid})

    def _register(self, req: Request) -> None:
        if req.rid in self._reqs:
            raise ValueError(f"request id {req.rid!r} is already in flight")
        self.validator.check(req)
        if req.status is not ReqStatus.WAITING or req.output_ids or req.row is not None:
            raise ValueError(f"request {req.rid!r} was already used; submit a fresh Request")
        req.seed = req.sampling.seed if req.sampling.seed is not None else int(self._rng.integers(1 << 62))
        self._reqs[req.rid] = req

    # ---- stepping -----------------------------------------------------------------------------
    def has_work(self) -> bool:
        return bool(self._pending or self._activations or len(self.waiting) or len(self.prefill)
                    or len(self.decode) or self._inflight is not None)

    def step(self) -> list[StepEvent | ChunkEvent]:
        if self.faults.step_error:
            raise InjectedFault("fault injection: scheduler step (PDPAIR_FAULT_STEP_ERROR)")
        events: list[StepEvent | ChunkEvent] = self._pending
        self._pending = []
        self._activate_ready(events)
        self._admit()
        if self._can_overlap():
            self._overlap_decode(events)
            return events
        self._drain(events)
        batch, retracted = self.decode.next_batch()
        for req in retracted:
            self._retract(req, events)
        self._run_decode(batch, events)
        planned = self.prefill.next_batch()
        if planned is not None:
            done, failed = self.isolator.run(lambda r, n: self.runner.run(ForwardMode.EXTEND, r, n), *planned)
            self._fail(failed, events)
            for req, n, tok in done:
                if tok is None:
                    req.num_cached += n
                    if req.prefill_only:
                        events.append(self._chunk_event(req, last=False))
                else:
                    self.prefill.remove(req)
                    self._on_token(req, tok, events)
        return events

    def _run_decode(self, batch: list[Request], events: list) -> None:
        """The serial decode step: forward, sample, read the tokens, with failure isolation."""
        if batch:
            done, failed = self.isolator.run(lambda r, n: self.runner.run(ForwardMode.DECODE, r, n),
                                             batch, [1] * len(batch))
            self._fail(failed, events)
            for req, _, tok in done:
                self._on_token(req, tok, events)

    # ---- overlap scheduling (overlap.py) ------------------------------------------------------
    def _can_overlap(self) -> bool:
        """Overlap is exact only for decode-only steps of a local runner without penalties (they need every
        output id on the host) and without fault injection by token (the serial path isolates it)."""
        return (self.overlap and not len(self.prefill) and self.runner.supports_overlap
                and self.isolator.poison_token is None
                and not self.decode.uses_penalties)

    def _last_in_flight(self, reqs: list[Request]) -> set[Request]:
        """The requests whose token in flight is their last (nothing may be launched after it)."""
        pending = [r for r in reqs if r.output_ids and r.output_ids[-1] == PENDING_TOKEN]
        return self.stop.length_reached_set(pending)

    def _overlap_decode(self, events: list) -> None:
        """Launch this step's decode batch, then resolve the previous one while the device runs it."""
        prev, self._inflight = self._inflight, None
        batch, retracted = self.decode.next_batch(skip=self._last_in_flight)
        if retracted:  # the pool ran dry: retraction frees pages and re-queues, so it needs every token read
            self._inflight, prev = prev, None
            self._drain(events)
            for req in retracted:
                if req.status is ReqStatus.RUNNING:
                    self._retract(req, events)
            batch = [r for r in batch if r.status is ReqStatus.RUNNING]
        if batch:
            try:
                self._inflight = InFlight(batch, self.runner.launch_decode(batch))
            except Exception as exc:  # no request state changed: read what is in flight, isolate serially
                logger.warning("overlapped decode launch of %d failed (%s): running it serially", len(batch), exc)
                self._inflight, prev = prev, None
                self._drain(events)
                self._run_decode([r for r in batch if r.status is ReqStatus.RUNNING], events)
                return
        if prev is not None:
            self._resolve(prev, events)
        if self._inflight is not None:
            for req in self._inflight.live():  # its token is cached by the forward in flight, its next one pending
                req.num_cached = req.seq_len
                req.output_ids.append(PENDING_TOKEN)

    def _resolve(self, done: InFlight, events: list) -> None:
        """Read a launched batch's tokens (its forward is complete then): emit them, finish the requests they
        stop, and free what waited for that forward."""
        for req, tok in done.resolve():
            req.output_ids[-1] = tok
            reason = self.stop.finish_reason(req)
            events.append(StepEvent(req.rid, [tok], reason))
            if reason is not None:
                self.decode.discard(req)
                self._finish(req, reason)
        for req, keep in done.deferred:
            self.resources.release(req, keep=keep)

    def _drain(self, events: list) -> None:
        """Resolve the in-flight decode batch, if any: afterwards no output id is pending."""
        done, self._inflight = self._inflight, None
        if done is not None:
            self._resolve(done, events)

    def drain(self) -> list[StepEvent]:
        """Resolve the in-flight decode batch now (its events, which the next step would have returned)."""
        events: list[StepEvent] = []
        self._drain(events)
        return events

    def _fail(self, failed: list, events: list) -> None:
        """Requests whose forward raises end with finish_reason "error"; the rest of the batch goes on."""
        for f in failed:
            self._unlink(f.req)
            self._finish(f.req, "error")
            events.append(StepEvent(f.req.rid, [], "error"))

    def _num_prealloc(self) -> int:
        return sum(1 for r in self._reqs.values() if r.status is ReqStatus.PREALLOC)

    def _admit(self) -> None:
        # preallocated requests will decode soon too: they count against slots and the page reserve
        if not len(self.waiting):
            return
        resident = len(self.prefill) + len(self.decode) + self._num_prealloc()
        slots = self.max_running_requests - resident
        if slots <= 0:
            return
        reserve = resident  # one page of headroom per request that will decode soon
        self.prefill.add(self.waiting.next_batch(reserve, slots))

    def _on_token(self, req: Request, tok: int, events: list) -> None:
        """All pending tokens of `req` are cached now and `tok` was sampled after them."""
        req.num_cached = req.seq_len
        req.output_ids.append(tok)
        if req.prefill_only:
            req.status = ReqStatus.HELD
            events.append(self._chunk_event(req, last=True))
            return
        reason = self.stop.finish_reason(req)
        events.append(StepEvent(req.rid, [tok], reason))
        if reason is not None:
            if req.status is ReqStatus.RUNNING:
                self.decode.remove(req)
            self._finish(req, reason)
        elif req.status is not ReqStatus.RUNNING:
            req.status = ReqStatus.RUNNING
            self.decode.add(req)

    def _chunk_event(self, req: Request, last: bool) -> ChunkEvent:
        items, starts = chunk_items(self.resources, req, last)
        return ChunkEvent(req.rid, items, starts, last, req.output_ids[-1] if last else None,
                          ready=work_done(self.device))

    def _retract(self, req: Request, events: list) -> None:
        if self.resources.pages_for(req.seq_len + 1) > self.resources.kv.num_total:
            events.append(StepEvent(req.rid, [], "length"))  # the KV pool cannot hold it even alone
            self._finish(req, "length")
            return
        self.resources.release(req, keep=True)  # with a prefix cache, re-admission finds its pages there
        self.waiting.push(req, front=True)

    def _finish(self, req: Request, reason: str) -> None:
        keep = reason in ("stop", "length")
        if self._inflight is not None and self._inflight.holds(req):
            self._inflight.defer(req, keep)  # the forward in flight still writes its K/V: freed when it is done
        else:
            self.resources.release(req, keep=keep)
        req.status = ReqStatus.FINISHED
        req.finish_reason = reason
        del self._reqs[req.rid]
        logger.debug("finished %s (%s): %d tokens", req.rid, reason, len(req.output_ids), extra={"rid": req.rid})

    # ---- cancellation and hand-over -----------------------------------------------------------
    def abort(self, rid: str) -> bool:
        """Drop the request at any stage, freeing everything it holds; False if unknown."""
        req = self._reqs.get(rid)
        if req is None:
            return False
        self._unlink(req)
        self._finish(req, "abort")
        self._pending = [e for e in self._pending if e.rid != rid]
        return True

    def detach(self, rid: str) -> dict[str, np.ndarray]:
        """Remove the request and hand its items to the caller (who frees or quarantines them)."""
        req = self._reqs.get(rid)
        if req is None:
            raise KeyError(f"unknown request {rid!r}")
        if self._inflight is not None and self._inflight.holds(req):  # its K/V is being written: wait for that
            self._inflight.take_out(req)
        self._unlink(req)
        items = self.resources.take(req)
        req.status = ReqStatus.FINISHED
        del self._reqs[rid]
        return items

    def release(self, rid: str) -> None:
        """A prefill-only request whose pages were handed over: free them, or give them to the prefix cache."""
        req = self._reqs.get(rid)
        if req is None:
            raise KeyError(f"unknown request {rid!r}")
        self._unlink(req)
        self.resources.release(req, keep=True)
        req.status = ReqStatus.FINISHED
        del self._reqs[rid]

    def _unlink(self, req: Request) -> None:
        self._activations = [(r, t) for r, t in self._activations if r is not req]
        if req.status is ReqStatus.WAITING:
            self.waiting.remove(req)
        elif req.status is ReqStatus.PREFILLING:
            self.prefill.remove(req)
        elif req.status is ReqStatus.RUNNING:
            self.decode.remove(req)

    # ---- decode side: pages arrive from a prefill node ----------------------------------------
    def preallocate(self, req: Request) -> dict[str, np.ndarray] | None:
        """Reserve destination items for the prompt (request order); None when the pools cannot hold it now."""
        self._register(req)
        reserve = len(self.prefill) + len(self.decode) + self._num_prealloc()
        if reserve >= self.max_running_requests or not self.resources.acquire(req, req.prompt_len, reserve,
                                                                              window_from=req.prompt_len):
            del self._reqs[req.rid]
            return None
        req.status = ReqStatus.PREALLOC
        return destination_items(self.resources, req)

    def activate(self, rid: str, first_token: int) -> None:
        """The prompt's K/V is in the preallocated pages: join the running batch as if prefilled locally.
        A later step() reports `first_token` in a StepEvent, like a local prefill would. Joining waits
        while the pool has no page of headroom per running request, so that landed remote prefills never
        make the decode batch retract (evict) requests."""
        req = self._reqs.get(rid)
        if req is None or req.status is not ReqStatus.PREALLOC or any(r is req for r, _ in self._activations):
            raise KeyError(f"request {rid!r} is not preallocated")
        self.validator.check_token(first_token)
        after_received(self.device)  # the pages' last receive copy may still be in flight (engine/streams.py)
        self._activations.append((req, int(first_token)))

    def _activate_ready(self, events: list) -> None:
        while self._activations:
            req, tok = self._activations[0]
            if len(self.decode) and self.resources.min_free < len(self.decode) + 1:
                return
            self._activations.pop(0)
            req.num_cached = req.prompt_len
            req.output_ids.append(tok)
            reason = self.stop.finish_reason(req)
            events.append(StepEvent(req.rid, [tok], reason))
            if reason is not None:
                self._finish(req, reason)
            else:
                req.status = ReqStatus.RUNNING
                self.decode.add(req)

    def stats(self) -> SchedulerStats:
        held = sum(1 for r in self._reqs.values() if r.status is ReqStatus.HELD)
        prealloc = self._num_prealloc()
        kv, cache = self.resources.kv, self.resources.cache
        return SchedulerStats(len(self.waiting), len(self.prefill), len(self.decode), held, prealloc,
                              kv.num_free, kv.num_total, cache.num_pages if cache is not None else 0,
                              cache.hit_tokens if cache is not None else 0,
                              cache.evicted_pages if cache is not None else 0)

    def check_integrity(self, held: dict[str, list[np.ndarray]] | None = None) -> None:
        """AssertionError unless every item in use is owned by exactly one resident request, cached, or in
        `held` (quarantined by the caller), and every free item is none of these."""
        res = self.resources
        if res.cache is not None:
            res.cache.check()
        cached = res.cache.items() if res.cache is not None else {}
        for kind in res.pools.kinds:
            deferred = [r for r, _ in self._inflight.deferred] if self._inflight is not None else []
            parts = [res.owned(r)[kind] for r in [*self._reqs.values(), *deferred] if r.row is not None]
            parts += [cached.get(kind, np.zeros(0, dtype=np.int32)), *(held or {}).get(kind, [])]
            res.pools.allocator(kind).check_accounted(np.concatenate(parts) if parts else np.zeros(0, np.int32))
