"""CUDA-graph decode: one graph per batch-size bucket, replayed over static metadata buffers.

A decode batch of size b runs the graph of the smallest bucket >= b. A replay uploads the per-step inputs
(token, position and request-table row per row, the number of real rows) and the graph derives the rest itself
(`_derive`, one launch): seq_lens, the K/V slots and `kv_indptr`/`kv_indices`; padding rows get a
fill `seq_len` of 1 (request-table row 0, slot -1 for their K/V store, which the store kernel skips). A
sliding-window pool gets its own static slots and window-clipped `kv_indices` (from the page of
`seq_len - window` on), so a captured decode reads O(window) keys per sliding layer; a hybrid model's rows get
their mamba state slot (padding rows the dummy slot 0). Replay computes the same kernels with the same split
counts as eager decode of the padded batch; only the real rows' logits are returned.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import torch
from pdpair.engine.attention.base import AttentionBackend
from pdpair.engine.batch import ForwardBatch, ForwardContext, ForwardMode, WindowView
from pdpair.engine.staging import HostRing
from pdpair.kernels.attention import derive_decode_metadata

logger = logging.getLogger(__name__)

DEFAULT_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 80, 96, 128, 160, 192, 224, 256)


class DecodeCudaGraphs:
    """Captures `model(input_ids, positions, ctx)` for decode batches up to `max_batch_size` rows."""

    def __init__(self, model: torch.nn.Module, backend: AttentionBackend, req_to_token: torch.Tensor,
                 max_batch_size: int, max_context: int, buckets: tuple[int, ...] = DEFAULT_BUCKETS,
                 windows: dict[str, tuple[torch.Tensor, int, int]] | None = None,
                 state_rows: torch.Tensor | None = None, token_source: torch.Tensor | None = None) -> None:
        """`windows`: sliding-window pool kind -> (its request table, window, page size). `state_rows`: a hybrid
        model's row -> mamba slot map; rows get their slot in a static buffer, padding rows the dummy slot 0.
        `token_source`: per request-table row, the token a staged input id of PENDING_TOKEN (-1) stands for (the
        runner's `row_tokens`, for overlap scheduling); the graph gathers it before the model runs."""
        self.model = model
        self.backend = backend
        self.table = req_to_token  # [rows, max_context] int32 token slots
        self.buckets = tuple(b for b in buckets if b < max_batch_size) + (max_batch_size,)
        self.max_batch_size = max_batch_size
        dev = req_to_token.device
        n = max_batch_size
        # the per-step inputs in one buffer [ids | positions | rows | number of real rows]: a runner replay uploads
        # them in one pinned copy and the graph derives seq_lens, out_cache_loc and the kv indices itself
        self.inputs = torch.zeros(3 * n + 1, dtype=torch.long, device=dev)
        self.input_ids, self.positions = self.inputs[:n], self.inputs[n : 2 * n]
        self.req_pool_indices, self.num_real = self.inputs[2 * n : 3 * n], self.inputs[3 * n :]
        self.seq_lens = torch.ones(n, dtype=torch.int32, device=dev)
        self.out_cache_loc = torch.full((n,), -1, dtype=torch.long, device=dev)
        self.kv_indptr = torch.zeros(n + 1, dtype=torch.int32, device=dev)
        self.kv_indices = torch.zeros(n * max_context, dtype=torch.int32, device=dev)
        self.ones = torch.ones(n, dtype=torch.int32, device=dev)
        self.qo_indptr = torch.arange(n + 1, dtype=torch.int32, device=dev)
        self.logits_rows = torch.arange(n, dtype=torch.long, device=dev)
        self.state_rows = state_rows
        self.token_source = token_source
        self.state_slots = torch.zeros(n, dtype=torch.long, device=dev) if state_rows is not None else None
        self.max_context = max_context
        self.windows = dict(windows or {})
        self._win: dict[str, dict[str, torch.Tensor]] = {}
        for kind, (_, window, ps) in self.windows.items():
            span = min(max_context, window + ps)  # page-aligned start: at most window + page_size - 1 keys
            self._win[kind] = dict(
                out_cache_loc=torch.full((n,), -1, dtype=torch.long, device=dev),
                kv_indptr=torch.zeros(n + 1, dtype=torch.int32, device=dev),
                kv_indices=torch.zeros(n * span, dtype=torch.int32, device=dev),
                kv_starts=torch.zeros(n, dtype=torch.int32, device=dev),
                kv_lens=torch.ones(n, dtype=torch.int32, device=dev))
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._outputs: dict[int, torch.Tensor] = {}
        self._batches: dict[int, ForwardBatch] = {}
        self.num_replays = 0
        # replay_staged's uploads: a buffer is reused once the copy of two replays ago is done (long since)
        self._staging = HostRing(self.inputs.shape[0], torch.long, 2, self.inputs.is_cuda)

    @classmethod
    def for_runner(cls, runner, req_to_token, max_batch_size: int,
                   state_rows: torch.Tensor | None = None) -> DecodeCudaGraphs:
        """Capture graphs for a ModelRunner (its model and backend) over a ReqToTokenPool."""
        windows = {k: (req_to_token.tables[k], w, req_to_token.page_size) for k, w in runner.windows.items()}
        graphs = cls(runner.model, runner.backend, req_to_token.table, min(max_batch_size, DEFAULT_BUCKETS[-1]),
                     req_to_token.max_context, windows=windows, state_rows=state_rows,
                     token_source=runner.row_tokens)
        graphs.capture()
        return graphs

    def bucket(self, batch_size: int) -> int:
        for b in self.buckets:
            if b >= batch_size:
                return b
        raise ValueError(f"batch of {batch_size} exceeds the captured maximum {self.max_batch_size}")

    def fits(self, batch_size: int) -> bool:
        """A decode batch of `batch_size` rows has a captured graph."""
        return 0 < batch_size <= self.max_batch_size and bool(self._graphs)

    def can_run(self, batch: ForwardBatch) -> bool:
        return batch.is_decode and self.fits(batch.batch_size)

    def _static_batch(self, bs: int) -> ForwardBatch:
        return ForwardBatch(
            mode=ForwardMode.DECODE, input_ids=self.input_ids[:bs], positions=self.positions[:bs],
            req_pool_indices=self.req_pool_indices[:bs], seq_lens=self.seq_lens[:bs],
            extend_lens=self.ones[:bs], qo_indptr=self.qo_indptr[: bs + 1], kv_indptr=self.kv_indptr[: bs + 1],
            kv_indices=self.kv_indices, out_cache_loc=self.out_cache_loc[:bs],
            seq_lens_cpu=np.ones(bs, dtype=np.int64), extend_lens_cpu=np.ones(bs, dtype=np.int64),
            windows={kind: WindowView(self.windows[kind][1], w["out_cache_loc"][:bs], w["kv_indptr"][: bs + 1],
                                      w["kv_indices"], w["kv_starts"][:bs], np.zeros(bs, dtype=np.int64))
                     for kind, w in self._win.items()},
            state_slots=self.state_slots[:bs] if self.state_slots is not None else None,
        )

    def _fill(self, batch: ForwardBatch | None, padded: int) -> None:
        """Copy the real rows' inputs in, pad the rest (token 0, position 0, table row 0), derive the metadata."""
        bs = 0 if batch is None else batch.batch_size
        self.num_real.fill_(bs)
        if bs:
            self.input_ids[:bs].copy_(batch.input_ids, non_blocking=True)
            self.positions[:bs].copy_(batch.positions, non_blocking=True)
            self.req_pool_indices[:bs].copy_(batch.req_pool_indices, non_blocking=True)
        if padded > bs:
            self.input_ids[bs:padded].zero_()
            self.positions[bs:padded].zero_()
            self.req_pool_indices[bs:padded].zero_()
        self._derive(padded)

    def _derive(self, bs: int) -> None:
        """The batch metadata of the first `bs` rows from the inputs (ids, positions, rows, number of real rows);
        a graph runs this before the model, one launch per pool view (`derive_decode_metadata`). Real rows:
        seq_len = position + 1, slot = table[row, position], their mamba slot; padding rows: seq_len 1, slot -1
        (no K/V store), the dummy mamba slot 0. Ids the host has not read yet (overlap scheduling) become the
        previous step's sampled token. A sliding-window pool's rows list the keys from the page of
        `seq_len - window` on."""
        derive_decode_metadata(self.inputs, bs, self.table, self.out_cache_loc, self.kv_indptr, self.kv_indices,
                               seq_lens=self.seq_lens, token_source=self.token_source, state_rows=self.state_rows,
                               state_slots=self.state_slots)
        for kind, w in self._win.items():
            table, window, ps = self.windows[kind]
            derive_decode_metadata(self.inputs, bs, table, w["out_cache_loc"], w["kv_indptr"], w["kv_indices"],
                                   window=window, page_size=ps, kv_starts=w["kv_starts"], kv_lens=w["kv_lens"])

    @torch.inference_mode()
    def capture(self) -> None:
        self.backend.init_graph_state(self.max_batch_size, self.max_context)
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream()
        for bs in reversed(self.buckets):  # largest first: the smaller graphs reuse its memory
            self._fill(None, bs)
            batch = self._batches[bs] = self._static_batch(bs)
            self.backend.prepare_for_capture(batch)
            ctx = ForwardContext(self.backend, batch, self.logits_rows[:bs])
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm up: compile kernels, create handles
                for _ in range(2):
                    self._body(bs, ctx)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self._outputs[bs] = self._body(bs, ctx)
            self._graphs[bs] = graph
        torch.cuda.synchronize()
        logger.info("captured decode CUDA graphs for batch sizes %s", list(self.buckets))

    def _body(self, bs: int, ctx: ForwardContext) -> torch.Tensor:
        """What a graph runs: the batch metadata from the staged inputs (`_derive`), then the model."""
        self._derive(bs)
        return self.model(self.input_ids[:bs], self.positions[:bs], ctx)

    def pack_inputs(self, out: np.ndarray, input_ids: list[int], positions: np.ndarray, rows: np.ndarray) -> None:
        """Lay a decode batch out as `self.inputs` holds it (padding rows: token 0, position 0, table row 0)."""
        b, n = len(input_ids), self.max_batch_size
        assert len(positions) == len(rows) == b and out.shape == (3 * n + 1,), (b, len(positions), len(rows), out.shape)
        out[:] = 0
        out[:b], out[n : n + b], out[2 * n : 2 * n + b], out[3 * n] = input_ids, positions, rows, b

    def replay_staged(self, input_ids: list[int], positions: np.ndarray, rows: np.ndarray,
                      bucket: int | None = None) -> torch.Tensor:
        """Logits `[b, vocab]` of a decode batch given as host arrays (each row's token, position, table row):
        one pinned non-blocking upload, then the graph (no other launch from the host). `bucket`: replay that
        captured size (b <= bucket, b may be 0) instead of the smallest that fits (ranks replay a common one)."""
        b = len(input_ids)
        if bucket is None:
            assert self.fits(b), (b, self.max_batch_size)
        else:
            assert b <= bucket and bucket in self._graphs, (b, bucket, list(self._graphs))
        padded = self.bucket(b) if bucket is None else bucket
        _, host = self._staging.take()
        self.pack_inputs(host.numpy(), input_ids, positions, rows)
        self.inputs.copy_(host, non_blocking=True)
        self._staging.issued()
        self.backend.prepare_for_replay(self._batches[padded], padded)
        self._graphs[padded].replay()
        self.num_replays += 1
        return self._outputs[padded][:b]

    def staged_rows(self, batch_size: int) -> torch.Tensor:
        """The request-table rows of the last replayed batch, on the device (valid until the next replay)."""
        return self.req_pool_indices[:batch_size]

    def replay(self, batch: ForwardBatch) -> torch.Tensor:
        """Logits `[batch_size, vocab]` of a decode batch, as the eager forward of the padded batch gives."""
        assert self.can_run(batch), (batch.mode, batch.batch_size, self.max_batch_size)
        padded = self.bucket(batch.batch_size)
        self._fill(batch, padded)
        self.backend.prepare_for_replay(self._batches[padded], padded)
        self._graphs[padded].replay()
        self.num_replays += 1
        return self._outputs[padded][: batch.batch_size]

    def replay_bucket(self, padded: int) -> torch.Tensor:
        """Replay bucket `padded`'s graph over whatever its static buffers hold now: the bare graph, no metadata
        fill (benchmarks compare it with full steps)."""
        self._graphs[padded].replay()
        return self._outputs[padded]

    def padded_batch(self, batch: ForwardBatch) -> ForwardBatch:
        """The padded static batch a replay of `batch` runs (for comparing with an eager forward)."""
        padded = self.bucket(batch.batch_size)
        self._fill(batch, padded)
        return replace(self._batches.get(padded) or self._static_batch(padded))
