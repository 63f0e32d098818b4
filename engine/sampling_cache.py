"""The sampling tensors of the last batch, reused while its rows keep their params and seeds.

A decode batch keeps the same requests, in the same order, step after step; only the position being sampled
moves on. So the per-row tensors built from the requests' `SamplingParams` and seeds (temperatures, top-k/p,
min-p, seeds) are built again only when a row's params or seed differ from the last batch's (a request joined,
left or was replaced); the positions go up each step, and only when a row samples at random (greedy rows never
read them). Batches with penalties or logit_bias read each row's token history, so they are built every time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from pdpair.engine.request import Request
from pdpair.engine.sampler import SamplingBatch, upload


class SamplingCache:
    def __init__(self, vocab: int, device: torch.device | str) -> None:
        self.vocab = vocab
        self.device = torch.device(device)
        self._params: list = []
        self._seeds: list[int] = []
        self._batch: SamplingBatch | None = None
        self.builds = 0  # batches built (not reused): a test's view of when the cache was invalidated

    def batch(self, reqs: Sequence[Request], positions: np.ndarray) -> SamplingBatch:
        """The SamplingBatch of `reqs`, row i sampling the token at `positions[i]`."""
        params = [r.sampling for r in reqs]
        seeds = [r.seed for r in reqs]
        if self._batch is None or params != self._params or seeds != self._seeds:  # (cached: no penalties)
            self.builds += 1
            if any(p.uses_penalties for p in params):
                return SamplingBatch.build(params, seeds, positions, self.vocab, self.device,
                                           [r.input_ids for r in reqs], [r.output_ids for r in reqs])
            self._params, self._seeds = params, seeds
            self._batch = SamplingBatch.build(params, seeds, positions, self.vocab, self.device)
            return self._batch
        if self._batch.all_greedy:
            return self._batch
        return replace(self._batch, positions=upload([positions], self.device, torch.int64)[0])
