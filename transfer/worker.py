"""Worker threads that run transfer plans off the scheduler thread.

A plan is split into batches; batches from all requests queue FIFO and any
worker may run any batch (Mooncake releases the GIL and is thread-safe).
Each request's future completes once its last batch has run, or — after a
failure or ``cancel`` — once none of its batches is still in flight, so a
completed future means nothing of that plan is moving any more.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass

from .engine import DEFAULT_BATCH_ENTRIES, TransferEngine, TransferResult
from .plan import TransferPlan

__all__ = ["TransferWorkers"]

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class _Job:
    rid: str
    target: str
    future: Future
    queued: int
    running: int = 0
    ran: int = 0
    skipped: int = 0
    nbytes: int = 0
    entries: int = 0
    seconds: float = 0.0
    error: str | None = None
    cancelled: bool = False
    resolved: bool = False
    ready: object | None = None  # has .synchronize(): the items are written once it returns

    @property
    def stopped(self) -> bool:
        return self.cancelled or self.error is not None

    def result(self) -> TransferResult:
        error = self.error or (f"cancelled with {self.skipped} batches unsent" if self.skipped else None)
        cancelled = self.error is None and self.skipped > 0
        return TransferResult(
            error is None, self.nbytes, self.entries, self.ran, self.seconds, error, cancelled
        )


class TransferWorkers:
    """A small pool of threads calling ``engine.write`` for queued batches."""

    def __init__(
        self, engine: TransferEngine, num_threads: int = 2, batch_entries: int = DEFAULT_BATCH_ENTRIES
    ) -> None:
        if num_threads < 1 or batch_entries < 1:
            raise ValueError(
                f"need num_threads >= 1 and batch_entries >= 1, got {num_threads}, {batch_entries}"
            )
        self.engine, self.batch_entries = engine, batch_entries
        self._queue: queue.SimpleQueue[tuple[_Job, TransferPlan] | None] = queue.SimpleQueue()
        self._jobs: dict[str, list[_Job]] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._run, name=f"pdpair-transfer-{i}", daemon=True)
            for i in range(num_threads)
        ]
        for t in self._threads:
            t.start()

    def submit(self, rid: str, target: str, plan: TransferPlan, ready: object | None = None) -> Future[TransferResult]:
        """Queue ``plan`` for ``target``; the future's result is the whole plan's ``TransferResult``.

        ``ready`` (a CUDA event, or anything with ``synchronize()``) is waited for before each of the plan's
        batches is written: the source items are complete only then (see engine/streams.py)."""
        future: Future[TransferResult] = Future()
        future.set_running_or_notify_cancel()  # cancellation goes through cancel(rid)
        batches = plan.batches(self.batch_entries)
        job = _Job(rid, target, future, queued=len(batches), ready=ready)
        with self._lock:
            if self._closed:
                raise RuntimeError("transfer workers are shut down")
            if not batches:
                job.resolved = True
            else:
                self._jobs.setdefault(rid, []).append(job)
                for b in batches:
                    self._queue.put((job, b))
        if job.resolved:
            future.set_result(job.result())
        return future

    def cancel(self, rid: str) -> int:
        """Drop the not-yet-started batches of ``rid``; returns how many were dropped."""
        done: list[_Job] = []
        dropped = 0
        with self._lock:
            for job in list(self._jobs.get(rid, [])):
                if job.stopped:
                    continue
                job.cancelled = True
                job.skipped = job.queued
                dropped += job.queued
                if self._settle(job):
                    done.append(job)
        self._resolve(done)
        if dropped:
            logger.debug("transfer %s: cancelled %d queued batches", rid, dropped, extra={"rid": rid})
        return dropped

    def shutdown(self, wait: bool = True) -> None:
        """Cancel everything queued and stop the threads."""
        with self._lock:
            self._closed = True
            rids = list(self._jobs)
        for rid in rids:
            self.cancel(rid)
        for _ in self._threads:
            self._queue.put(None)
        if wait:
            for t in self._threads:
                t.join()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            job, batch = item
            with self._lock:
                job.queued -= 1
                if job.stopped:
                    continue
                job.running += 1
            try:
                if job.ready is not None:
                    job.ready.synchronize()  # the forward that wrote the source items has run
                res = self.engine.write(job.target, batch)
            except Exception as err:  # a bug below must fail the request, not kill the worker
                logger.exception("transfer %s: write raised", job.rid, extra={"rid": job.rid})
                res = TransferResult(False, 0, 0, 1, 0.0, f"{type(err).__name__}: {err}")
            with self._lock:
                job.running -= 1
                job.ran += res.batches
                job.nbytes += res.nbytes
                job.entries += res.entries
                job.seconds += res.seconds
                failed_now = not res.ok and job.error is None
                if failed_now:
                    job.error = res.error
                    job.skipped = job.queued
                settled = [job] if self._settle(job) else []
                if failed_now:  # the request failed: its other plans send nothing more (a cancel, not a failure)
                    settled += self._stop_siblings(job)
            self._resolve(settled)

    def _stop_siblings(self, failed: _Job) -> list[_Job]:
        """Under the lock: drop the unsent batches of the failed job's request; the jobs now settled."""
        settled = []
        for job in list(self._jobs.get(failed.rid, [])):
            if job is failed or job.stopped:
                continue
            job.cancelled = True
            job.skipped = job.queued
            if self._settle(job):
                settled.append(job)
        return settled

    def _settle(self, job: _Job) -> bool:
        """Under the lock: mark ``job`` resolved when nothing of it can move any more."""
        if job.resolved or job.running or (job.queued and not job.stopped):
            return False
        job.resolved = True
        jobs = self._jobs.get(job.rid, [])
        jobs.remove(job)
        if not jobs:
            self._jobs.pop(job.rid, None)
        return True

    @staticmethod
    def _resolve(jobs: list[_Job]) -> None:
        for job in jobs:
            job.future.set_result(job.result())
