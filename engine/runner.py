"""Runs one forward pass of a scheduled batch and samples the next tokens."""

from __future__ import annotations

import numpy as np
import torch
from pdpair.engine.attention import AttentionBackend
from pdpair.engine.batch import ForwardBatch, ForwardContext, ForwardMode
from pdpair.engine.memory import ReqToTokenPool
from pdpair.engine.request import PENDING_TOKEN, Request
from pdpair.engine.sampled_tokens import SampledTokens
from pdpair.engine.sampler import sample
from pdpair.engine.sampling_cache import SamplingCache
from pdpair.engine.staging import HostRing


class ModelRunner:
    """Builds the batch metadata, calls the model under inference mode, samples; one host sync per call (the read of
    the sampled tokens; on CUDA the metadata goes up in pinned non-blocking copies). `launch_decode` leaves
    that read to the caller, one step later (overlap scheduling)."""

    def __init__(self, model: torch.nn.Module, backend: AttentionBackend, req_to_token: ReqToTokenPool,
                 vocab_size: int, windows: dict[str, int] | None = None) -> None:
        self.model = model
        self.windows = dict(windows or {})  # sliding-window pool kind -> window
        self.backend = backend
        self.req_to_token = req_to_token
        self.vocab_size = vocab_size
        self.graphs = None  # DecodeCudaGraphs when decode replays captured CUDA graphs
        self.dumper = None  # a debug Dumper when tensor dumping is on (then graphs stay off)
        # per request-table row: the last token `launch_decode` sampled for it, the input of its next decode step
        self.row_tokens = torch.zeros(req_to_token.table.shape[0], dtype=torch.long, device=req_to_token.table.device)
        self.sampling = SamplingCache(vocab_size, req_to_token.table.device)
        # pinned buffers the sampled tokens of `launch_decode` come back through (read one step later)
        self._token_ring = HostRing(req_to_token.table.shape[0], torch.long, 4, req_to_token.table.is_cuda)

    def run(self, mode: ForwardMode, reqs: list[Request], extend_lens: list[int]) -> list[int | None]:
        """Advance each request by its extend length; returns the sampled token of every request whose
        pending tokens are now all cached, None for requests mid-prompt."""
        done, toks, _ = self._forward_sample(mode, reqs, extend_lens)
        out: list[int | None] = [None] * len(reqs)
        if done:
            for i, tok in zip(done, toks.tolist(), strict=True):
                out[i] = tok
        return out

    def launch_decode(self, reqs: list[Request]) -> SampledTokens:
        """Forward and sample a decode batch without waiting for the device: the tokens go to `row_tokens`
        (where the next launch finds a PENDING_TOKEN input) and, copied behind an event, to the host."""
        _, toks, rows = self._forward_sample(ForwardMode.DECODE, reqs, [1] * len(reqs))
        if rows is None:  # a graph replay: its staged rows
            rows = self.graphs.staged_rows(len(reqs))
        with torch.inference_mode():
            self.row_tokens.index_copy_(0, rows, toks)
            return SampledTokens.start(toks, self._token_ring)

    @property
    def supports_overlap(self) -> bool:
        """Whether decode may be launched ahead of reading the previous step's tokens: a local forward (a
        multi-rank runner's forward slots are collectives in the step's order) and no tensor dumping."""
        local = type(self).forward is ModelRunner.forward and type(self).replay_decode is ModelRunner.replay_decode
        return local and self.dumper is None

    def _forward_sample(self, mode: ForwardMode, reqs: list[Request],
                        extend_lens: list[int]) -> tuple[list[int], torch.Tensor, torch.Tensor | None]:
        """(indices of the requests that sampled, their tokens on the device, the batch's request-table rows on
        the device, None after a graph replay) after one forward."""
        prefix = np.fromiter((r.num_cached for r in reqs), dtype=np.int64, count=len(reqs))
        ext = np.asarray(extend_lens, dtype=np.int64)
        if mode is ForwardMode.DECODE:  # one pending token per request (the scheduler's invariant): all sample
            ids = [r.output_ids[-1] if r.output_ids else r.input_ids[-1] for r in reqs]
            done = list(range(len(reqs)))
        else:
            ids = [t for r, n in zip(reqs, extend_lens, strict=True) for t in r.tokens(r.num_cached, r.num_cached + n)]
            done = [i for i, (r, n) in enumerate(zip(reqs, extend_lens, strict=True))
                    if r.num_cached + n == r.seq_len]
        rows = np.fromiter((r.row for r in reqs), dtype=np.int64, count=len(reqs))
        graph = mode is ForwardMode.DECODE and self.use_graph(len(reqs))
        with torch.inference_mode():
            if graph:  # the graph builds its own metadata from (ids, positions, rows): no ForwardBatch
                logits = self.replay_decode(ids, prefix, rows)
                rows_t = None
            else:
                ps = self.req_to_token.page_size
                windowed = {k: (self.req_to_token.tables[k], w, ps) for k, w in self.windows.items()}
                batch = ForwardBatch.build(mode, rows, prefix, ext, ids, self.req_to_token.table, windowed)
                rows_t = batch.req_pool_indices
                if mode is ForwardMode.DECODE and PENDING_TOKEN in ids:  # tokens the host has not read yet
                    pending = batch.input_ids == PENDING_TOKEN
                    batch.input_ids = torch.where(pending, self.row_tokens[batch.req_pool_indices], batch.input_ids)
                if not done:
                    logits_rows = torch.zeros(0, dtype=torch.long, device=batch.input_ids.device)
                elif len(done) == len(reqs):
                    logits_rows = batch.qo_indptr[1:].long() - 1
                else:
                    logits_rows = batch.qo_indptr[1:].long()[torch.tensor(done, device=batch.input_ids.device)] - 1
                if self.dumper is not None:
                    self.dumper.begin_batch(batch, [r.rid for r in reqs], logits_rows)
                logits = self.forward(batch, logits_rows)
                if self.dumper is not None:
                    self.dumper.end_batch(batch, logits)
            if not done:
                return done, torch.zeros(0, dtype=torch.long), rows_t
            picked = reqs if len(done) == len(reqs) else [reqs[i] for i in done]
            sb = self.sampling.batch(picked, (prefix + ext)[done])  # positions: the sampled tokens' = seq_len
            return done, sample(logits, sb), rows_t

    def use_graph(self, batch_size: int) -> bool:
        """Whether a decode batch of `batch_size` rows replays a captured graph (a multi-rank runner decides it
        with its peers here)."""
        return self.graphs is not None and self.graphs.fits(batch_size)

    def replay_decode(self, input_ids: list[int], positions: np.ndarray, rows: np.ndarray) -> torch.Tensor:
        """Logits of a decode batch given as host arrays, from its graph (after `use_graph` said yes)."""
        return self.graphs.replay_staged(input_ids, positions, rows)

    def forward(self, batch: ForwardBatch, logits_rows: torch.Tensor) -> torch.Tensor:
        """One eager forward: fp32 logits of `logits_rows` (a multi-rank runner joins its collectives here)."""
        self.backend.prepare(batch)
        return self.model(batch.input_ids, batch.positions, ForwardContext(self.backend, batch, logits_rows))

    def close(self) -> None:
        """Release what the runner started (a multi-rank runner stops its rank processes)."""
