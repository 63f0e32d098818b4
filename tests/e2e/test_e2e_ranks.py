"""Decode nodes with two ranks (rank 0 in the daemon, one spawned rank, gloo): with --tp-size 2 and with
DP attention, Generate equals the single-rank engine token for token; a killed rank makes the daemon exit
non-zero, leaving no process; SIGTERM stops every rank."""

from __future__ import annotations

import re
import signal
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import psutil
import pytest
from pdpair.engine import Engine, SamplingParams

from tests.e2e._client import generate, prompt, sampling
from tests.e2e._nodes import start_node, wait_healthy

PROMPTS = [prompt(40, salt=1), prompt(9, salt=2), prompt(70, salt=3)]
_EXPECTED: list = []


def expected_tokens() -> list[list[int]]:
    """The single-rank engine's greedy tokens (loaded once, while the first node's ranks load)."""
    if not _EXPECTED:
        engine = Engine.from_model(max_pages=64, chunk_size=64)
        greedy = SamplingParams(max_new_tokens=8, temperature=0.0)
        _EXPECTED.extend(o.token_ids for o in engine.generate(PROMPTS, greedy))
    return _EXPECTED


def concurrent_generate(node) -> list[list[int]]:
    with ThreadPoolExecutor(len(PROMPTS)) as pool:  # concurrent requests share batches
        return list(pool.map(lambda p: generate(node.stub, p, sampling(8)).tokens, PROMPTS))


@pytest.mark.slow
def test_tp2_decode_node_equals_one_rank_then_dies_with_a_killed_rank():
    log_dir = Path(tempfile.mkdtemp(prefix="pdpair-ranks-"))
    prefill = start_node("prefill", log_dir=log_dir)
    node = start_node("decode", "--tp-size", "2", log_dir=log_dir)
    try:
        expected = expected_tokens()
        wait_healthy([prefill, node])
        followers = psutil.Process(node.proc.pid).children()
        assert len(followers) >= 1
        assert concurrent_generate(node) == expected
        # rank 0 holds 2 of the 3 KV heads: a one-rank prefill node cannot fill its pages; the handshake
        # names both attention-TP sizes
        with pytest.raises(grpc.RpcError) as refused:
            generate(node.stub, PROMPTS[0], sampling(8), prefill_addr=prefill.addr)
        details = refused.value.details()
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION, details
        sizes = re.search(r"attn_tp_size: local (\d+), remote (\d+)", details)
        assert sizes is not None and {sizes.group(1), sizes.group(2)} == {"1", "2"}, details
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
        prefill.stop()


@pytest.mark.slow
def test_dp_attention_decode_node_colocated_and_disaggregated_equal_one_rank():
    """DP attention = 2 on the decode node; a single-rank prefill node sends pages into DP rank 0's pool."""
    log_dir = Path(tempfile.mkdtemp(prefix="pdpair-ranks-"))
    prefill = start_node("prefill", log_dir=log_dir)
    node = start_node("decode", "--tp-size", "2", "--dp-size", "2", "--enable-dp-attention", log_dir=log_dir)
    try:
        expected = expected_tokens()
        wait_healthy([prefill, node])
        children = psutil.Process(node.proc.pid).children()
        assert concurrent_generate(node) == expected
        # one request alone: DP rank 1 idles through it
        assert generate(node.stub, PROMPTS[1], sampling(8)).tokens == expected[1]
        with ThreadPoolExecutor(len(PROMPTS)) as pool:
            disagg = list(pool.map(lambda p: generate(node.stub, p, sampling(8), prefill_addr=prefill.addr),
                                   PROMPTS))
        assert [g.tokens for g in disagg] == expected
        assert all(g.first.prefilled_remotely for g in disagg)
        pools = [(p.kind, p.dp_rank) for p in node.stats().pools]
        assert pools == [("kv", 0), ("kv", 1)]  # one pool per DP rank
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # every page back on both ranks but item 0 (padding rows)
            if all(p.free == p.total - 1 for p in node.stats().pools):
                break
            time.sleep(0.2)
        assert all(p.total == 320 and p.free == p.total - 1 for p in node.stats().pools), node.stats()
    finally:
        code = node.stop()
        prefill.stop()
    assert code == 0
    log = node.log.read_text(errors="replace")
    stopped = re.search(r"DP rank 1 stopped: (\d+) requests, (\d+) idle forwards", log)
    assert stopped is not None, log[-2000:]
    assert int(stopped.group(1)) > 0 and int(stopped.group(2)) > 0  # it served requests and idled
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive
