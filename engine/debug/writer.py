"""`DumpWriter`: a bounded queue and one background thread that saves dumped tensors and step records, so
the forward pass only copies tensors to the host; write errors are logged once and turn dumping off."""

from __future__ import annotations

import logging
import os
import queue
import threading
from pathlib import Path

import msgspec
import torch
from pdpair.engine.debug.format import STEPS, StepRecord

logger = logging.getLogger(__name__)

_STOP = object()


class DumpWriter:
    def __init__(self, run_dir: Path, max_pending: int = 1024) -> None:
        self.run_dir = run_dir
        self.error: Exception | None = None  # set once a write failed; later items are dropped
        self._queue: queue.Queue = queue.Queue(max_pending)
        self._steps = open(run_dir / STEPS, "ab")  # noqa: SIM115 - closed by the writer thread
        self._thread = threading.Thread(target=self._loop, name="pdpair-dump-writer", daemon=True)
        self._thread.start()

    @property
    def failed(self) -> bool:
        return self.error is not None

    def put_tensor(self, filename: str, tensor: torch.Tensor) -> None:
        """Queue a host tensor (already copied off the device and out of reused buffers); blocks when full."""
        self._queue.put((filename, tensor))

    def put_record(self, rec: StepRecord) -> None:
        self._queue.put(rec)

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, then stop the thread."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)

    def _loop(self) -> None:
        try:
            while (item := self._queue.get()) is not _STOP:
                if self.error is None:
                    try:
                        self._write(item)
                    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as RuntimeError
                        self.error = exc
                        logger.error("tensor dump to %s failed (%s); dumping is off from now on", self.run_dir, exc)
        finally:
            self._steps.close()

    def _write(self, item) -> None:
        if isinstance(item, StepRecord):
            self._steps.write(msgspec.json.encode(item) + b"\n")
            self._steps.flush()
            return
        filename, tensor = item
        path = self.run_dir / filename
        tmp = path.with_name(path.name + ".tmp")
        torch.save(tensor, tmp)  # then rename: a reader never sees half a file
        os.replace(tmp, path)
