"""Disaggregation into every DP rank: a one-rank prefill node sends prompt pages to a decode node with
--tp-size 2 --dp-size 2 --enable-dp-attention (gloo). Remote prefills land in both DP ranks' pools (each
served by its own transfer session), the tokens equal the one-rank engine's, and no page leaks: after mixed
traffic every DP rank's pool is whole again; a cancelled remote prefill on DP rank 1 frees DP rank 1's pages
and one whose prefill node dies mid-transfer quarantines them there."""

from __future__ import annotations

import signal
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from pdpair.engine import Engine, SamplingParams
from pdpair.proto import pdpair_pb2 as pb

from tests.e2e._client import generate, new_rid, prompt, sampling, wait_all_free, wait_for
from tests.e2e._nodes import start_node, wait_healthy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PAGE = 16
PROMPTS = [prompt(40, salt=1), prompt(9, salt=2), prompt(70, salt=3), prompt(130, salt=4), prompt(33, salt=5),
           prompt(100, salt=6)]
NEW = 8


@pytest.fixture(scope="module")
def expected() -> list[list[int]]:
    """The one-rank engine's greedy tokens (colocated, TP=1)."""
    engine = Engine.from_model(max_pages=128, chunk_size=64)
    return [o.token_ids for o in engine.generate(PROMPTS, SamplingParams(max_new_tokens=NEW, temperature=0.0))]


@pytest.fixture(scope="module")
def pair():
    log_dir = Path(tempfile.mkdtemp(prefix="pdpair-dp-disagg-"))
    prefill = start_node("prefill", log_dir=log_dir)
    decode = start_node("decode", "--tp-size", "2", "--dp-size", "2", "--enable-dp-attention", log_dir=log_dir)
    try:
        wait_healthy([prefill, decode])
        yield prefill, decode
    finally:
        codes = decode.stop(), prefill.stop()
    assert codes == (0, 0)


def _pools(node) -> dict[int, pb.PoolStats]:
    return {p.dp_rank: p for p in node.stats().pools}


def _landed(node) -> list[int]:
    return [r.remote_prefills for r in node.stats().ranks]


def _wait_whole(node) -> dict[int, pb.PoolStats]:
    """Every DP rank's pool free but item 0 (padding rows), nothing quarantined: the pools by DP rank."""
    return {p.dp_rank: p for p in wait_all_free(node, timeout=20.0, reserved=1).pools}


def test_remote_prefills_land_in_both_dp_ranks_equal_one_rank_and_leave_no_page(pair, expected):
    prefill, decode = pair
    before = _landed(decode)
    with ThreadPoolExecutor(len(PROMPTS)) as pool:  # concurrent: the scheduler spreads them over the DP ranks
        disagg = list(pool.map(lambda p: generate(decode.stub, p, sampling(NEW), prefill_addr=prefill.addr),
                               PROMPTS))
    assert [g.tokens for g in disagg] == expected
    assert all(g.first.prefilled_remotely for g in disagg)
    landed = [a - b for a, b in zip(_landed(decode), before, strict=True)]
    assert sum(landed) == len(PROMPTS) and min(landed) > 0, landed  # both DP ranks received pages
    # mixed traffic: local and remote prefills at once, on both ranks
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        mixed = list(pool.map(lambda i: generate(decode.stub, PROMPTS[i], sampling(NEW),
                                                 prefill_addr=prefill.addr if i % 2 else "").tokens,
                              range(len(PROMPTS))))
    assert mixed == expected
    pools = _wait_whole(decode)
    assert sorted(pools) == [0, 1] and all(p.total == 320 for p in pools.values())


def _occupy_rank0(decode):
    """A long local request, which the empty node places on DP rank 0: the next request goes to DP rank 1."""
    req = pb.GenerateRequest(rid=new_rid("busy"), token_ids=prompt(30, salt=8),
                             sampling=sampling(400, ignore_eos=True))
    call = decode.stub.Generate(req, timeout=120)
    stream = iter(call)
    next(stream)
    ranks = decode.stats().ranks
    assert [r.running for r in ranks] == [1, 0], ranks
    return call


def _cancel(call) -> None:
    call.cancel()
    with pytest.raises(grpc.RpcError):
        for _ in call:
            pass


def test_cancelled_remote_prefill_on_dp_rank_1_frees_its_pages(pair):
    prefill, decode = pair
    _wait_whole(decode)
    busy = _occupy_rank0(decode)
    try:
        ids = prompt(40 * 64, salt=9)  # 40 chunks on the prefill node
        call = decode.stub.Generate(pb.GenerateRequest(rid=new_rid("cancel"), token_ids=ids, sampling=sampling(4),
                                                       prefill_addr=prefill.addr), timeout=120)
        wait_for(lambda: prefill.stats().prefilling > 0, "the prefill node to start", timeout=60)
        pools = _pools(decode)  # preallocated before the Prefill call: on DP rank 1
        assert pools[1].total - 1 - pools[1].free == -(-len(ids) // PAGE), pools
        _cancel(call)
    finally:
        _cancel(busy)
    pools = _wait_whole(decode)
    assert pools[1].quarantined == 0


def test_prefill_node_dying_mid_transfer_quarantines_dp_rank_1_pages(pair):
    _, decode = pair
    _wait_whole(decode)
    doomed = start_node("prefill", log_dir=Path(tempfile.mkdtemp(prefix="pdpair-dp-disagg-")))
    busy = None
    try:
        wait_healthy([doomed])
        busy = _occupy_rank0(decode)
        ids = prompt(40 * 64, salt=10)
        call = decode.stub.Generate(pb.GenerateRequest(rid=new_rid("doomed"), token_ids=ids, sampling=sampling(4),
                                                       prefill_addr=doomed.addr), timeout=120)
        wait_for(lambda: doomed.stats().transfer_batches_total > 0, "the first pages to move", timeout=60)
        doomed.proc.send_signal(signal.SIGKILL)
        with pytest.raises(grpc.RpcError) as failed:
            for _ in call:
                pass
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE, failed.value
        pages = -(-len(ids) // PAGE)
        deadline = time.monotonic() + 20
        while (p1 := _pools(decode)[1]).quarantined != pages:  # the rank reports every 0.1 s
            assert time.monotonic() < deadline, p1
            time.sleep(0.1)
        assert p1.free + p1.quarantined == p1.total - 1, p1  # held on DP rank 1, nothing else
        assert _pools(decode)[0].quarantined == 0
    finally:
        if busy is not None:
            _cancel(busy)
        doomed.stop()
