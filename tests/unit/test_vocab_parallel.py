"""Vocab slices (padding, a rank holding only padding) and the vocab-parallel embedding and head on two gloo
processes against the whole-table lookup and matmul."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from pdpair.engine.distributed.groups import init_groups, join_rendezvous
from pdpair.engine.distributed.topology import RankTopology
from pdpair.engine.distributed.vocab import VocabParallelEmbedding, VocabParallelHead, VocabShard, shard_vocab

from tests.unit._spawn_fixtures import spawn_ranks

VOCAB, HIDDEN = 7, 3  # two slices of 4 rows, the last row of rank 1 padding


def _table() -> torch.Tensor:
    return torch.arange(VOCAB * HIDDEN, dtype=torch.float32).view(VOCAB, HIDDEN) + 1


def test_slices_pad_the_vocabulary_to_a_multiple_of_the_group():
    shards = [VocabShard(VOCAB, 2, r) for r in range(2)]
    assert [(s.start, s.rows, s.real_rows) for s in shards] == [(0, 4, 4), (4, 4, 3)]
    assert shards[0].padded_vocab == 8 and [shards[0].real_width(r) for r in range(2)] == [4, 3]
    part = shards[1].slice_of(_table())
    assert torch.equal(part[:3], _table()[4:]) and not part[3].any()  # the padded row is zero
    # a vocabulary smaller than the group: the last rank holds only padding
    tiny = [VocabShard(5, 4, r) for r in range(4)]
    assert [(s.start, s.real_rows) for s in tiny] == [(0, 2), (2, 2), (4, 1), (6, 0)]
    assert not tiny[3].slice_of(torch.ones(5, 2)).any()
    with pytest.raises(ValueError, match="weight has 6 rows, the vocabulary 7"):
        shards[0].slice_of(torch.zeros(6, HIDDEN))
    with pytest.raises(ValueError, match="rank 2 outside a group of 2"):
        VocabShard(VOCAB, 2, 2)


def _worker(rank: int, init: str, results) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=join_rendezvous(init), world_size=2, rank=rank)
    shard, group = VocabShard(VOCAB, 2, rank), dist.group.WORLD
    embed = VocabParallelEmbedding(_table(), shard, group)
    head = VocabParallelHead(embed.weight, shard, group)
    ids = torch.tensor([6, 0, 3, 4, 6, 1])
    x = torch.randn(5, HIDDEN, generator=torch.Generator().manual_seed(7))
    out = (embed(ids), head(x), head(x[:2]), head(x[:0]), tuple(embed.weight.shape))
    results.put((rank, out))
    dist.destroy_process_group()


def test_embedding_and_head_over_two_ranks_equal_the_whole_table():
    got = spawn_ranks(_worker, 2)
    table = _table()
    x = torch.randn(5, HIDDEN, generator=torch.Generator().manual_seed(7))
    for rank, (emb, logits, fewer, none, shape) in got.items():
        assert shape == (4, HIDDEN), rank  # half the rows (plus the padding)
        assert torch.equal(emb, table[[6, 0, 3, 4, 6, 1]])  # each id from the rank that holds it
        assert logits.shape == (5, VOCAB) and logits.is_contiguous()  # the padded column dropped
        torch.testing.assert_close(logits, F.linear(x, table), rtol=0, atol=1e-5)
        torch.testing.assert_close(fewer, F.linear(x[:2], table), rtol=0, atol=1e-5)  # the reused buffer shrinks
        assert none.shape == (0, VOCAB)


class _Untied(torch.nn.Module):
    """The attributes `shard_vocab` replaces, of an untied model (head = -table)."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(vocab_size=VOCAB)
        self.embed_tokens = torch.nn.Embedding.from_pretrained(_table())
        self.lm_head = torch.nn.Parameter(-_table(), requires_grad=False)
        self.vocab_head = None


DP_IDS = {0: [6, 0, 3], 1: [4, 1, 5, 2, 6]}  # each DP rank its own tokens, of different counts


def _dp_worker(rank: int, init: str, results) -> None:
    torch.set_num_threads(1)
    groups = init_groups(RankTopology(4, 2, True, rank), init, "cpu")
    topo, model = groups.topo, _Untied()
    shard = shard_vocab(model, groups.attn, topo.attn_tp_rank)
    ids = DP_IDS[topo.dp_rank]
    x = torch.randn(len(ids), HIDDEN, generator=torch.Generator().manual_seed(topo.dp_rank))
    results.put((rank, (topo.dp_rank, shard.start, model.lm_head, model.embed_tokens(torch.tensor(ids)),
                        model.vocab_head(x), [n for n, _ in model.named_parameters()])))
    dist.destroy_process_group()


def test_dp_attention_splits_the_vocabulary_over_each_attention_group():
    """tp 4, dp 2: two attention groups of two ranks, each with its own tokens; a rank's slice is indexed by
    its attention-TP rank, and each group's collectives sum and gather only its own ranks."""
    got = spawn_ranks(_dp_worker, 4)
    table = _table()
    for rank, (dp_rank, start, lm_head, emb, logits, names) in got.items():
        ids = DP_IDS[dp_rank]
        x = torch.randn(len(ids), HIDDEN, generator=torch.Generator().manual_seed(dp_rank))
        assert start == 4 * (rank % 2) and lm_head is None
        assert names == ["embed_tokens.weight", "vocab_head.weight"]  # untied: two slices, nothing whole
        assert torch.equal(emb, table[ids]), rank
        torch.testing.assert_close(logits, F.linear(x, -table), rtol=0, atol=1e-5)
