"""DP-attention decisions without a model: idle batches, padding, gather info, batch padding, topology."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pdpair.engine.batch import ForwardBatch, ForwardMode
from pdpair.engine.distributed.dp_plan import (
    GatherMode,
    choose_mode,
    gather_info,
    need_idle_batch,
    padded_tokens,
    plan_step,
)
from pdpair.engine.distributed.padding import idle_batch, pad_batch
from pdpair.engine.distributed.topology import RankTopology, split_range


def test_topology_orders_ranks_by_dp_then_attention_tp():
    t = RankTopology(tp_size=4, dp_size=2, enable_dp_attention=True, rank=3)
    assert (t.attn_tp_size, t.dp_rank, t.attn_tp_rank, t.is_dp_leader) == (2, 1, 1, False)
    assert t.leader_ranks == [0, 2] and t.attn_group_ranks(1) == [2, 3]
    assert RankTopology(4, 2, True, 2).is_dp_leader


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"tp_size": 2, "dp_size": 2}, "--enable-dp-attention"),
    ({"tp_size": 3, "dp_size": 2, "enable_dp_attention": True}, "multiple of dp_size"),
    ({"tp_size": 2, "rank": 2}, "outside"),
    ({"tp_size": 0}, "positive"),
])
def test_topology_rejects_bad_sizes(kwargs, words):
    with pytest.raises(ValueError, match=words):
        RankTopology(**kwargs)


def test_split_range_covers_everything_with_sizes_within_one():
    parts = [split_range(3, 2, i) for i in range(2)]
    assert parts == [(0, 2), (2, 3)]
    assert [split_range(1536, 2, i) for i in range(2)] == [(0, 768), (768, 1536)]
    with pytest.raises(ValueError):
        split_range(1, 2, 0)


def test_padding_is_a_multiple_of_attn_tp_and_never_empty():
    assert [padded_tokens(n, 1) for n in (0, 1, 5)] == [1, 1, 5]
    assert [padded_tokens(n, 2) for n in (0, 1, 2, 3)] == [2, 2, 2, 4]
    assert padded_tokens(5, 4) == 8


def test_idle_batch_only_when_this_rank_is_empty_and_another_has_work():
    assert need_idle_batch(0, [0, 7])
    assert not need_idle_batch(3, [3, 7])
    assert not need_idle_batch(0, [0, 0])
    assert not need_idle_batch(0, None)  # one DP rank, gather skipped


def test_idle_rank_runs_with_the_global_counts():
    plan = plan_step(0, [0, 7], dp_rank=0, attn_tp=1)
    assert plan.run and plan.idle
    assert plan.info.global_num_tokens == (1, 7) and plan.info.real_num_tokens == (0, 7)
    assert plan.info.local_tokens == 1 and plan.info.offset == 0


def test_no_forward_when_no_rank_has_work():
    assert plan_step(0, [0, 0], dp_rank=1, attn_tp=1) == plan_step(0, [0, 0], 1, 1)
    assert not plan_step(0, [0, 0], dp_rank=1, attn_tp=1).run


def test_single_dp_rank_skips_the_idle_batch_but_still_pads_to_attn_tp():
    """SEEDS §4: gather skipped, one DP rank -> no idle batch, but the batch carries the global counts."""
    plan = plan_step(3, None, dp_rank=0, attn_tp=2)
    assert plan.run and not plan.idle
    assert plan.info is not None and plan.info.global_num_tokens == (4,) and plan.info.local_tokens == 4


def test_gather_info_offsets_follow_dp_rank_order():
    info = gather_info([5, 0, 3], dp_rank=2, attn_tp=2, mode=GatherMode.OFFSETS)
    assert info.global_num_tokens == (6, 2, 4)
    assert (info.offset, info.total, info.max_len, info.local_tokens) == (8, 12, 6, 4)


def test_mode_is_max_len_for_balanced_ranks_and_offsets_for_skewed_ones():
    assert choose_mode([8, 8]) is GatherMode.MAX_LEN
    assert choose_mode([8, 7]) is GatherMode.MAX_LEN
    assert choose_mode([64, 1]) is GatherMode.OFFSETS
    assert choose_mode([3]) is GatherMode.MAX_LEN


def _decode_batch() -> ForwardBatch:
    table = torch.arange(64, dtype=torch.int32).view(2, 32) + 16  # rows use slots 16.. (item 1 on)
    return ForwardBatch.build(ForwardMode.DECODE, np.array([0, 1]), np.array([3, 5]), np.array([1, 1]),
                              [11, 12], table)


def test_padding_rows_write_and_read_only_item_zero():
    batch = _decode_batch()
    padded = pad_batch(batch, 2)
    assert padded.num_tokens == 4 and padded.batch_size == 4
    assert padded.out_cache_loc[2:].tolist() == [0, 0]
    assert padded.kv_indices[: batch.kv_indices.numel()].tolist() == batch.kv_indices.tolist()
    assert padded.kv_indices[batch.kv_indices.numel():].tolist() == [0, 0]
    assert padded.kv_indptr.tolist() == batch.kv_indptr.tolist() + [batch.kv_indptr[-1] + 1, batch.kv_indptr[-1] + 2]
    assert padded.qo_indptr.tolist() == [0, 1, 2, 3, 4]
    assert padded.seq_lens_cpu.tolist() == [4, 6, 1, 1]


def test_idle_extend_batch_has_no_prefix():
    batch = idle_batch(ForwardMode.EXTEND, 2, torch.device("cpu"))
    assert batch.num_tokens == 2 and batch.kv_indices.numel() == 0
    assert batch.kv_indptr.tolist() == [0, 0, 0] and batch.out_cache_loc.tolist() == [0, 0]
