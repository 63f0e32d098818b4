"""`Dumper`: named tensors at fixed points of the forward pass, per step and rank, with the batch metadata
that reads them back (see format.py). Built only when dumping is on; the runner then calls `begin_batch`
and `end_batch` around each forward, and forward hooks on the model's modules capture:

    embed                 embedding output                       token rows
    layers.N.attn_in      attention input (after the input norm)  token rows
    layers.N.kv.k/.v      K/V written into the pool this step    token rows (read back from the pool)
    layers.N.kv.latent    latent vectors written (MLA models)    token rows (read back from the pool)
    layers.N.dsa.k        indexer keys written (MLA models)      token rows (read back from the pool)
    layers.N.dsa.context  indexer keys of every request's whole  context rows (read back from the pool)
                          context (MLA models)
    layers.N.attn_out     attention output (after o_proj)        token rows
    layers.N.mlp_out      MLP output                             token rows
    layers.N.out          the residual stream after the layer    token rows
    final_hidden          final norm of the logits rows          logits rows
    logits                fp32 logits                            logits rows

Other code (e.g. DP-attention gathers) adds tensors with `dump(name, tensor, layout="gathered")`.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import time
from pathlib import Path

import msgspec
import torch
from pdpair.engine.debug.config import DumpConfig
from pdpair.engine.debug.format import FORMAT_VERSION, LAYOUTS, MANIFEST, Manifest, StepRecord, tensor_file
from pdpair.engine.debug.writer import DumpWriter

logger = logging.getLogger(__name__)

# module name -> [(dump name template, "in" | "out", layout)]
_HOOKS = (
    (r"embed_tokens", (("embed", "out", "token"),)),
    (r"layers\.(\d+)\.self_attn", (("layers.{0}.attn_in", "in", "token"), ("layers.{0}.attn_out", "out", "token"))),
    (r"layers\.(\d+)\.mlp", (("layers.{0}.mlp_out", "out", "token"),)),
    (r"layers\.(\d+)", (("layers.{0}.out", "out", "token"),)),
    (r"norm", (("final_hidden", "out", "logits"),)),
)


class DumpDirError(ValueError):
    """The dump directory cannot be created or written."""


def check_writable(config: DumpConfig) -> Path:
    """Create the run directory and write a probe file in it; `DumpDirError` says why not."""
    run_dir = Path(config.run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-probe"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise DumpDirError(f"tensor dump directory {run_dir} is not writable: {exc}") from None
    return run_dir


def host_copy(t: torch.Tensor) -> torch.Tensor:
    """A compact host copy that later writes into `t`'s buffer cannot change."""
    return torch.empty_like(t, device="cpu", memory_format=torch.contiguous_format).copy_(t.detach())


class Dumper:
    def __init__(self, config: DumpConfig, writer: DumpWriter, kv_pool=None) -> None:
        self.config = config
        self.writer = writer
        self.kv_pool = kv_pool
        self.sources: list = []  # more pool read-backs after a forward: fn(dumper, batch), e.g. MLA pools
        self.step = -1  # forward steps seen, dumped or not
        self._filter = re.compile(config.filter)
        self._wanted: dict[str, bool] = {}
        self._record: StepRecord | None = None  # the step being dumped, None when this step is skipped
        self._tensors: dict[str, str] = {}
        self._handles: list = []
        self._closed = False

    @classmethod
    def start(cls, config: DumpConfig, model: torch.nn.Module | None = None, kv_pool=None,
              model_id: str = "") -> Dumper:
        """Create `dir/run_name/`, write the manifest (a clear error if that fails), start the writer and
        hook the model."""
        run_dir = check_writable(config)
        manifest = Manifest(version=FORMAT_VERSION, run_name=config.run_name, role=config.role, rank=config.rank,
                            pid=os.getpid(), created_unix=time.time(), model=model_id, filter=config.filter,
                            steps=",".join(f"{lo}-{'' if hi == -1 else hi}" for lo, hi in config.steps))
        try:
            (run_dir / MANIFEST).write_bytes(msgspec.json.encode(manifest))
            writer = DumpWriter(run_dir)
        except OSError as exc:
            raise DumpDirError(f"tensor dump directory {run_dir} is not writable: {exc}") from None
        dumper = cls(config, writer, kv_pool)
        atexit.register(writer.close)  # a daemon stopping normally writes what is queued
        if model is not None:
            dumper.hook(model)
        logger.info("dumping tensors matching %r to %s", config.filter or ".*", run_dir)
        return dumper

    def wants(self, name: str) -> bool:
        hit = self._wanted.get(name)
        if hit is None:
            hit = self._wanted[name] = self._filter.search(name) is not None
        return hit

    def hook(self, model: torch.nn.Module) -> None:
        """Forward hooks on the modules whose dump names pass the filter (none: no hook at all)."""
        for mod_name, module in model.named_modules():
            for pattern, points in _HOOKS:
                m = re.fullmatch(pattern, mod_name)
                if m is None:
                    continue
                for template, where, layout in points:
                    name = template.format(*m.groups())
                    if self.wants(name):
                        self._handles.append(module.register_forward_hook(self._capture(name, where, layout)))

    def _capture(self, name: str, where: str, layout: str):
        def fn(_module, args, output):
            if self._record is not None:
                self.dump(name, args[0] if where == "in" else output, layout)
        return fn

    def begin(self, rec: StepRecord) -> None:
        """Start a step (numbered by the caller); tensors dumped until `end` belong to it."""
        self.step = rec.step
        ok = self.config.wants_step(rec.step) and not self.writer.failed and not self._closed
        self._record = rec if ok else None
        self._tensors = {}

    def dump(self, name: str, tensor: torch.Tensor, layout: str = "token") -> None:
        if self._record is None or not self.wants(name):
            return
        assert layout in LAYOUTS, f"dump {name}: layout {layout!r} not in {LAYOUTS}"
        self._tensors[name] = layout
        self.writer.put_tensor(tensor_file(self._record.step, self._record.rank, name), host_copy(tensor))

    def end(self) -> None:
        if self._record is not None and self._tensors:
            self.writer.put_record(msgspec.structs.replace(self._record, tensors=self._tensors))
        self._record = None

    def begin_batch(self, batch, rids: list[str], logits_rows: torch.Tensor) -> None:
        """The runner, before the forward: this step's requests and lengths (single rank, no DP padding)."""
        n = batch.num_tokens
        self.begin(StepRecord(
            step=self.step + 1, rank=self.config.rank, mode=batch.mode.value, rids=list(rids),
            seq_lens=[int(x) for x in batch.seq_lens_cpu], extend_lens=[int(x) for x in batch.extend_lens_cpu],
            logits_rows=logits_rows.tolist(), global_num_tokens=[n], global_padded_tokens=[n]))

    def end_batch(self, batch, logits: torch.Tensor) -> None:
        """The runner, after the forward: the K/V this step wrote (read back from the pool) and the logits."""
        if self._record is not None and self.kv_pool is not None:
            for i, layer in enumerate(self.kv_pool.layer_ids):  # the full-attention pool's model layers
                if self.wants(f"layers.{layer}.kv.k") or self.wants(f"layers.{layer}.kv.v"):
                    k, v = self.kv_pool.read(i, batch.out_cache_loc)
                    self.dump(f"layers.{layer}.kv.k", k)
                    self.dump(f"layers.{layer}.kv.v", v)
        if self._record is not None:
            for source in self.sources:
                source(self, batch)
        self.dump("logits", logits, "logits")
        self.end()

    def close(self) -> None:
        """Unhook the model and write what is queued; later steps dump nothing."""
        self._closed = True
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.writer.close()
