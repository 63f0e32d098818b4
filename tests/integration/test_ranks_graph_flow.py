"""The rank decode-graph control flow on CPU (gloo, 2 rank processes, the embedded SmolLM2, fp32, greedy),
with the eager stand-in in place of captured graphs: every decode slot replays the bucket of the global
padded batch size, an idle DP rank replays it with no real row, and an attention-TP follower finds the
leader's token slots through the mirrored request table. Tokens equal TP=1."""

from __future__ import annotations

import pytest
from pdpair.engine import Engine, SamplingParams
from pdpair.engine.distributed import RankGroup, RankSpec, RankTopology
from pdpair.engine.distributed.groups import host_rendezvous

GREEDY = SamplingParams(max_new_tokens=6, temperature=0.0)
TEXTS = ["The capital of France is", "1, 2, 3, 4,", "Once upon a time there was a small village by the sea"]


@pytest.fixture(scope="module")
def reference():
    engine = Engine.from_model(max_pages=64)
    prompts = [engine.tokenizer.encode(t) for t in TEXTS]
    return prompts, [o.token_ids for o in engine.generate(prompts, GREEDY)]


def _group(tp: int, dp: int, dp_attention: bool, max_running: int = 8) -> RankGroup:
    return RankGroup(RankSpec(RankTopology(tp, dp, dp_attention), host_rendezvous(), max_pages=64,
                              max_running_requests=max_running, decode_graphs="eager"))


def test_tp2_graph_replays_follow_the_mirrored_table(reference):
    """The follower derives its decode rows from its own request table: without the leader's table writes
    its half of the heads would attend to the wrong slots and the tokens would differ."""
    prompts, expected = reference
    with _group(2, 1, False) as group:
        outs, _ = group.generate(prompts, GREEDY)
    assert [o.token_ids for o in outs] == expected
    (closed,) = group.closed
    assert closed.graph_replays >= len(expected[0]) - 1  # every decode step of the batch was a replay


def test_dp_attention_graph_buckets_with_an_idle_rank_and_uneven_load(reference):
    prompts, expected = reference
    with _group(2, 2, True) as group:
        outs, ranks = group.generate(prompts[:1], GREEDY)  # DP rank 1 idle throughout
        assert ranks == [0] and [o.token_ids for o in outs] == expected[:1]
        outs, _ = group.generate(prompts, GREEDY)  # 2 rows on one DP rank, 1 on the other
        assert [o.token_ids for o in outs] == expected
    closed = {c.dp_rank: c for c in group.closed}
    decode_steps = len(expected[0]) - 1
    # DP rank 1 replayed the decode bucket with no real row for each of rank 0's decode steps
    assert closed[1].graph_replays >= decode_steps and closed[1].idle_forwards >= decode_steps


def test_dp_attention_on_one_dp_rank_replays_buckets_padded_to_the_attention_group(reference):
    """tp 2, dp 1 with DP attention: buckets are multiples of 2 and the follower replays with the leader's
    gather info and table."""
    prompts, expected = reference
    with _group(2, 1, True) as group:
        outs, _ = group.generate(prompts[:1], GREEDY)
    assert [o.token_ids for o in outs] == expected[:1]
    (closed,) = group.closed
    assert closed.graph_replays == len(expected[0]) - 1 and closed.idle_forwards == 0
