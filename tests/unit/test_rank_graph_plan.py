"""The CPU side of rank decode graphs: capture sizes, the bucket every rank replays (chosen from the global
padded counts), the gather info of a replay, and the request-table mirror."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pdpair.engine.distributed.dp_plan import GatherMode, plan_step
from pdpair.engine.distributed.graph_plan import capture_info, graph_bucket, graph_info, rank_buckets
from pdpair.engine.distributed.rank_graphs import TableMirror, decode_buckets
from pdpair.engine.distributed.topology import RankTopology
from pdpair.engine.memory import ReqToTokenPool

BUCKETS = (1, 2, 4, 8, 12, 16)


def test_rank_buckets_are_multiples_of_the_attention_group_and_end_at_the_maximum():
    assert rank_buckets(BUCKETS, 16, 1) == BUCKETS
    assert rank_buckets(BUCKETS, 16, 2) == (2, 4, 8, 12, 16)
    assert rank_buckets(BUCKETS, 10, 4) == (4, 8, 12)  # 10 rows rounded up to the group: 12
    assert rank_buckets(BUCKETS, 3, 1) == (1, 2, 3)
    with pytest.raises(ValueError, match="must be positive"):
        rank_buckets(BUCKETS, 0, 1)


def test_decode_buckets_follow_the_topology():
    assert decode_buckets(RankTopology(4, 2, True), True, 6) == (2, 4, 6)  # attention-TP 2
    assert decode_buckets(RankTopology(2, 1, False), False, 3) == (1, 2, 3)  # plain TP: any size


def _plans(counts: list[int], attn_tp: int):
    return [plan_step(n, counts, d, attn_tp) for d, n in enumerate(counts)]


def test_every_dp_rank_replays_the_bucket_of_the_largest_padded_count():
    plans = _plans([5, 0, 2], 1)
    assert [p.idle for p in plans] == [False, True, False]
    buckets = {graph_bucket(p.info, n, BUCKETS) for p, n in zip(plans, [5, 0, 2], strict=True)}
    assert buckets == {8}  # one bucket for all, the idle rank included
    infos = [graph_info(p.info, 8) for p in plans]
    assert all(i.global_num_tokens == (8, 8, 8) and i.mode is GatherMode.MAX_LEN for i in infos)
    assert [i.real_num_tokens for i in infos] == [(5, 0, 2)] * 3
    assert [i.offset for i in infos] == [0, 8, 16] and [i.local_tokens for i in infos] == [8, 8, 8]


def test_bucket_counts_padding_to_the_attention_group():
    plans = _plans([3, 1], 2)  # padded to 4 and 2
    assert {graph_bucket(p.info, n, (2, 4, 8)) for p, n in zip(plans, [3, 1], strict=True)} == {4}


def test_no_bucket_means_eager_everywhere():
    plans = _plans([20, 1], 1)
    assert {graph_bucket(p.info, n, BUCKETS) for p, n in zip(plans, [20, 1], strict=True)} == {None}
    assert graph_bucket(None, 17, BUCKETS) is None
    assert graph_bucket(None, 0, BUCKETS) is None


def test_without_dp_attention_the_bucket_is_the_shared_batch_size():
    assert graph_bucket(None, 5, BUCKETS) == 8 and graph_info(None, 8) is None
    one = plan_step(3, None, 0, 2)  # DP attention with one DP rank: padded to 4
    assert graph_bucket(one.info, 3, BUCKETS) == 4


def test_capture_info_sets_every_dp_rank_to_the_bucket():
    info = capture_info(12, 2, 1)
    assert info.local_tokens == 12 and info.offset == 12 and info.mode is GatherMode.MAX_LEN


def test_table_mirror_replays_the_leaders_writes_on_a_follower_table():
    leader = ReqToTokenPool(4, 64, 4, "cpu")
    follower = ReqToTokenPool(4, 64, 4, "cpu")
    mirror = TableMirror(leader)
    leader.assign_pages(2, 0, np.array([5, 7]))
    leader.assign_pages(0, 3, np.array([1]))
    log = mirror.take()
    assert len(log) == 2 and mirror.take() == []
    TableMirror.apply(follower, log)
    assert torch.equal(follower.table, leader.table)
    assert follower.table[2, :8].tolist() == [20, 21, 22, 23, 28, 29, 30, 31]
    leader.assign_pages(2, 2, np.array([9]))  # a later page of the same row
    TableMirror.apply(follower, mirror.take())
    assert torch.equal(follower.table, leader.table)
