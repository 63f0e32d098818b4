"""A real DP-attention decode node (2 ranks, gloo) reports each rank's queues in Stats, and the router's
least_loaded sees the node by its idle rank while one request runs on the other."""

from __future__ import annotations

import asyncio
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pdpair.proto import pdpair_pb2 as pb
from pdpair.router.node_client import NodeClient
from pdpair.router.policy import LeastLoaded

from tests.e2e._client import generate, prompt, sampling
from tests.e2e._nodes import start_node, wait_healthy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _least_loaded(dp_stats: pb.NodeStats, plain_stats: pb.NodeStats) -> tuple[str, int, int]:
    async def body():
        dp, plain = NodeClient("127.0.0.1:1", "decode"), NodeClient("127.0.0.1:2", "decode")
        dp.stats, plain.stats = dp_stats, plain_stats
        out = LeastLoaded().pick([plain, dp]).addr, dp.load(), plain.load()
        await dp.close()
        await plain.close()
        return out

    return asyncio.run(body())


def test_dp_attention_node_reports_rank_queues_and_least_loaded_uses_the_idle_rank():
    node = start_node("decode", "--tp-size", "2", "--dp-size", "2", "--enable-dp-attention",
                      log_dir=Path(tempfile.mkdtemp(prefix="pdpair-rank-load-")))
    try:
        wait_healthy([node])
        idle = node.stats()
        assert [(r.dp_rank, r.waiting + r.prefilling + r.running) for r in idle.ranks] == [(0, 0), (1, 0)]
        with ThreadPoolExecutor(1) as pool:
            long = pool.submit(generate, node.stub, prompt(30, salt=5), sampling(100, ignore_eos=True))
            deadline = time.monotonic() + 60
            while (s := node.stats()).running != 1:
                assert time.monotonic() < deadline and not long.done(), s
                time.sleep(0.05)
            assert len(s.ranks) == 2 and sum(r.running for r in s.ranks) == 1, s
            assert sorted(r.running for r in s.ranks) == [0, 1], s  # one rank busy, one idle
            picked, dp_load, plain_load = _least_loaded(s, pb.NodeStats(role="decode", running=1))
            assert long.result(120).finish_reason == "length"
    finally:
        code = node.stop()
    assert (picked, dp_load, plain_load) == ("127.0.0.1:1", 0, 1)  # summed, the two nodes would tie at 1
    assert code == 0
