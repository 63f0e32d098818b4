"""A decode node with --tp-size 2 (rank 0 in the daemon, one spawned follower, gloo): Generate equals the
single-rank engine token for token; a killed rank makes the daemon exit non-zero, leaving no process."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
from pdpair.engine import Engine, SamplingParams

from tests.e2e._client import generate, prompt, sampling
from tests.e2e._nodes import start_node, wait_healthy

PROMPTS = [prompt(40, salt=1), prompt(9, salt=2), prompt(70, salt=3)]


@pytest.mark.slow
def test_tp2_decode_node_equals_one_rank_then_dies_with_a_killed_rank():
    node = start_node("decode", "--tp-size", "2")
    try:
        engine = Engine.from_model(max_pages=64, chunk_size=64)  # loads while the node's ranks load
        greedy = SamplingParams(max_new_tokens=8, temperature=0.0)
        expected = [o.token_ids for o in engine.generate(PROMPTS, greedy)]
        del engine
        wait_healthy([node])
        followers = psutil.Process(node.proc.pid).children()
        assert len(followers) >= 1
        with ThreadPoolExecutor(len(PROMPTS)) as pool:  # concurrent requests share the TP=2 batches
            outs = list(pool.map(lambda p: generate(node.stub, p, sampling(8)).tokens, PROMPTS))
        assert outs == expected
        pool = ThreadPoolExecutor(2)
        streams = [pool.submit(generate, node.stub, p, sampling(400, ignore_eos=True)) for p in PROMPTS[:2]]
        time.sleep(1.0)
        rank1 = next(c for c in followers if "spawn" in " ".join(c.cmdline()))
        rank1.send_signal(signal.SIGKILL)
        assert node.proc.wait(60) == 1
        log = node.log.read_text(errors="replace")
        assert "rank 1 exited with code -9" in log
        for s in streams:
            with pytest.raises(Exception):  # noqa: B017 - the stream breaks with the node (UNAVAILABLE)
                s.result(60)
        pool.shutdown()
        _, alive = psutil.wait_procs(followers, timeout=10)
        assert not alive
    finally:
        node.stop()
