"""Vocab-parallel embedding and LM head over one group (the attention-TP group: its ranks hold the same tokens).

The vocabulary is padded up to a multiple of the group size and each rank keeps one contiguous slice of
`padded / size` rows (the padded rows are zero). The embedding looks up only the ids of its slice (the
others give zero rows) and the group all-reduces, which is exact: one rank contributes each row. The head
computes fp32 logits of its slice for the wanted rows only, all-gathers them over the group and drops the
padded columns, so every rank of the group holds the same full `[rows, vocab]` logits and samples alike.
Tied embeddings share the embedding's slice with the head. Both collectives have static shapes for a given
number of rows, so CUDA graphs capture them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pdpair.engine.distributed.groups import all_reduce, group_size
from pdpair.engine.distributed.topology import ceil_div
from torch import nn


@dataclass(frozen=True)
class VocabShard:
    """Rank `rank`'s slice `[start, start + rows)` of a vocabulary of `vocab` padded over `size` ranks."""

    vocab: int
    size: int
    rank: int

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.size:
            raise ValueError(f"vocab shard: rank {self.rank} outside a group of {self.size}")

    @property
    def rows(self) -> int:
        return ceil_div(self.vocab, self.size)

    @property
    def padded_vocab(self) -> int:
        return self.rows * self.size

    @property
    def start(self) -> int:
        return self.rank * self.rows

    @property
    def real_rows(self) -> int:
        """Rows of this slice inside the vocabulary (the rest are padding)."""
        return max(0, min(self.rows, self.vocab - self.start))

    def real_width(self, rank: int) -> int:
        return max(0, min(self.rows, self.vocab - rank * self.rows))

    def slice_of(self, weight: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a full `[vocab, hidden]` weight, zero-padded to `rows` (a new tensor)."""
        if weight.shape[0] != self.vocab:
            raise ValueError(f"vocab shard: weight has {weight.shape[0]} rows, the vocabulary {self.vocab}")
        out = torch.zeros(self.rows, weight.shape[1], dtype=weight.dtype, device=weight.device)
        n = self.real_rows
        out[:n] = weight[self.start : self.start + n]
        return out


class VocabParallelEmbedding(nn.Module):
    """`embed(ids)` with only this rank's slice of the table; `weight` is that slice `[rows, hidden]`."""

    def __init__(self, full: torch.Tensor, shard: VocabShard, group: dist.ProcessGroup) -> None:
        super().__init__()
        self.shard = shard
        self.group = group
        self.weight = nn.Parameter(shard.slice_of(full), requires_grad=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        local = input_ids - self.shard.start
        outside = (local < 0) | (local >= self.shard.rows)
        x = F.embedding(local.masked_fill(outside, 0), self.weight)
        x.masked_fill_(outside.unsqueeze(-1), 0)
        return all_reduce(x, self.group)


class VocabParallelHead(nn.Module):
    """`head(x [rows, hidden]) -> fp32 logits [rows, vocab]`: this rank's slice, then the group's all-gather.

    The gather output lives in a reused buffer outside CUDA-graph capture (eager steps do not reallocate it
    every step); under capture each graph gets its own from the graph's memory pool."""

    def __init__(self, weight: nn.Parameter, shard: VocabShard, group: dist.ProcessGroup) -> None:
        super().__init__()
        self.shard = shard
        self.group = group
        self.weight = weight  # shared with VocabParallelEmbedding when the embeddings are tied
        self._gathered: torch.Tensor | None = None  # flat fp32 gather buffer of eager steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = F.linear(x, self.weight).float()  # [rows, slice]
        n, s = self.shard.size, self.shard
        if x.shape[0] == 0:  # every rank of the group has the same rows: none gathers
            return local.new_zeros(0, s.vocab)
        gathered = self._buffer(n * local.numel(), local.device).view(n, *local.shape)
        if local.device.type == "cuda":
            dist.all_gather_into_tensor(gathered.view(-1, local.shape[1]), local, group=self.group)
        else:
            dist.all_gather(list(gathered.unbind(0)), local, group=self.group)
        # one copy into a fresh contiguous [rows, vocab]: rank r's columns, its padded ones dropped
        return torch.cat([gathered[r, :, : s.real_width(r)] for r in range(n)], dim=1)

    def _buffer(self, numel: int, device: torch.device) -> torch.Tensor:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return torch.empty(numel, dtype=torch.float32, device=device)
        buf = self._gathered
        if buf is None or buf.numel() < numel or buf.device != device:
            buf = self._gathered = torch.empty(max(numel, 2 * (0 if buf is None else buf.numel())),
                                               dtype=torch.float32, device=device)
        return buf[:numel]


def shard_vocab(model: nn.Module, group: dist.ProcessGroup, rank: int) -> VocabShard | None:
    """Replace `model.embed_tokens` and its LM head by this rank's slices over `group` (in place; the full
    tensors are released). Nothing changes on a group of one. Returns the shard (None when not split)."""
    size = group_size(group)
    if size == 1:
        return None
    shard = VocabShard(model.config.vocab_size, size, rank)
    embed = VocabParallelEmbedding(model.embed_tokens.weight.data, shard, group)
    head = embed.weight if model.lm_head is None else nn.Parameter(shard.slice_of(model.lm_head.data),
                                                                   requires_grad=False)
    model.embed_tokens = embed
    model.lm_head = None  # the head is `model.vocab_head` now (tied or not)
    model.vocab_head = VocabParallelHead(head, shard, group)
    return shard
