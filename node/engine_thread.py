"""EngineThread: the one scheduler thread that owns the Engine.

The asyncio side talks to it only through `call(fn)` (fn runs on the engine thread; the result comes back
as an asyncio future) and per-request event queues (`open_stream(rid)`): every event a step returns for
that request is put on its queue with `loop.call_soon_threadsafe`. Tick hooks (quarantine release,
preallocation retries, metrics) run on the engine thread once per loop iteration.

A forward that raises fails only its own requests (the scheduler isolates them). A step that raises
outside any forward leaves the requests' state unknown: every open stream gets an EngineFailure, and after
`max_failures` such steps in a row the thread stops stepping and calls `on_fatal` (the node then reports
NOT_SERVING and exits non-zero) instead of failing every new request forever.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from pdpair.engine.streams import use_compute_stream

logger = logging.getLogger(__name__)


class EngineFailure:
    """Put on every open stream when a step raised: the requests' state is unknown."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __repr__(self) -> str:
        return f"EngineFailure({self.error!r})"


class EngineThread:
    def __init__(self, engine: Any, loop: asyncio.AbstractEventLoop, idle_wait: float = 0.01,
                 max_failures: int = 3, on_fatal: Callable[[BaseException], None] | None = None) -> None:
        self.engine = engine
        self.max_failures = max_failures
        self.on_fatal = on_fatal
        self.failures = 0  # consecutive steps that raised
        self.fatal: BaseException | None = None
        self._loop = loop
        self._idle_wait = idle_wait
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, asyncio.Queue] = {}  # touched on the loop thread only
        self._hooks: list[Callable[[], object]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self.steps = 0
        self.device = str(getattr(getattr(engine, "config", None), "device", "cpu"))

    # -- loop side -------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def add_hook(self, hook: Callable[[], object]) -> None:
        """hook() runs on the engine thread every iteration (at least every idle_wait seconds)."""
        self._hooks.append(hook)

    def call(self, fn: Callable[[Any], Any]) -> asyncio.Future:
        """Run fn(engine) on the engine thread; await the returned future for its result or exception."""
        fut = self._loop.create_future()
        self._commands.put((fn, fut))
        self._wake_scheduler()
        return fut

    def _wake_scheduler(self) -> None:
        """A scheduler that waits inside an idle step (DPScheduler: the DP leaders step together) exposes an
        `idle_event`; setting it ends that wait so the command runs now."""
        event = getattr(self.engine.scheduler, "idle_event", None)
        if event is not None:
            event.set()

    def open_stream(self, rid: str) -> asyncio.Queue:
        if rid in self._streams:
            raise ValueError(f"request id {rid!r} is already in flight")
        q: asyncio.Queue = asyncio.Queue()
        self._streams[rid] = q
        return q

    def close_stream(self, rid: str) -> None:
        self._streams.pop(rid, None)

    def has_stream(self, rid: str) -> bool:
        return rid in self._streams

    @property
    def num_streams(self) -> int:
        return len(self._streams)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._commands.put(None)
        self._wake_scheduler()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- engine thread -------------------------------------------------------------------------
    def _resolve(self, fut: asyncio.Future, result: Any, error: BaseException | None) -> None:
        if fut.cancelled():
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)

    def _deliver(self, events: list) -> None:
        for ev in events:
            q = self._streams.get(ev.rid)
            if q is not None:
                q.put_nowait(ev)

    def _fail_all(self, error: BaseException) -> None:
        for q in self._streams.values():
            q.put_nowait(EngineFailure(error))

    def _step_failed(self, exc: BaseException) -> None:
        self.failures += 1
        if self.failures == 1:
            logger.exception("engine step failed")
        else:
            logger.error("engine step failed again (%d in a row): %s", self.failures, exc)
        self._loop.call_soon_threadsafe(self._fail_all, exc)
        if self.failures >= self.max_failures and self.fatal is None:
            self.fatal = exc
            logger.critical("engine failed %d steps in a row: no more steps", self.failures)
            if self.on_fatal is not None:
                self._loop.call_soon_threadsafe(self.on_fatal, exc)
        else:
            self._stop.wait(min(1.0, 0.05 * 2 ** self.failures))  # back off instead of spinning

    def _run_command(self, item: tuple) -> None:
        fn, fut = item
        try:
            result, error = fn(self.engine), None
        except BaseException as exc:  # handed to the awaiting coroutine
            result, error = None, exc
        self._loop.call_soon_threadsafe(self._resolve, fut, result, error)

    def _run(self) -> None:
        use_compute_stream(self.device)  # CUDA: off the legacy stream Mooncake's copies block on
        sched = self.engine.scheduler
        busy = False
        while not self._stop.is_set():
            try:
                item = self._commands.get(timeout=self._idle_wait) if not busy else self._commands.get_nowait()
            except queue.Empty:
                item = None
            while item is not None:
                self._run_command(item)
                try:
                    item = self._commands.get_nowait()
                except queue.Empty:
                    item = None
            if self._stop.is_set():
                break
            for hook in self._hooks:
                try:
                    hook()
                except Exception:
                    logger.exception("engine-thread hook failed")
            busy = self.fatal is None and sched.has_work()
            if busy:
                try:
                    events = sched.step()
                except Exception as exc:
                    self._step_failed(exc)
                    busy = False
                    continue
                self.failures = 0
                self.steps += 1
                if events:
                    self._loop.call_soon_threadsafe(self._deliver, list(events))
        logger.info("engine thread stopped after %d steps", self.steps)
