"""Pairing policies and the node pool: round-robin order, least-loaded by Stats, 503 without a healthy pair."""

from __future__ import annotations

import asyncio

import pytest
from pdpair.proto import pdpair_pb2 as pb
from pdpair.router.errors import ApiError
from pdpair.router.node_client import NodeClient
from pdpair.router.policy import LeastLoaded, RoundRobin, make_policy
from pdpair.router.pool import NodePool


def _in_loop(fn):
    """grpc.aio channels belong to an event loop: build and use them inside one."""

    async def run():
        return fn()

    return asyncio.run(run())


def _stats(running=0, waiting=0, free=100, total=100) -> pb.NodeStats:
    return pb.NodeStats(role="decode", running=running, waiting=waiting,
                        pools=[pb.PoolStats(kind="kv", total=total, free=free)])


def test_round_robin_cycles_in_order():
    def body():
        nodes = [NodeClient(f"127.0.0.1:{5000 + i}", "decode") for i in range(3)]
        rr = RoundRobin()
        return [rr.pick(nodes).addr for _ in range(7)]

    got = _in_loop(body)
    assert got == [f"127.0.0.1:{5000 + i % 3}" for i in range(7)]


def test_least_loaded_uses_stats_then_free_pages():
    def body():
        a, b, c = (NodeClient(f"127.0.0.1:{6000 + i}", "decode") for i in range(3))
        a.stats, b.stats, c.stats = _stats(running=5), _stats(running=1, waiting=1), _stats(running=4)
        first = LeastLoaded().pick([a, b, c]).addr
        b.stats = _stats(running=5, free=10)
        c.stats = _stats(running=5, free=60)
        a.stats = _stats(running=5, free=30)
        second = LeastLoaded().pick([a, b, c]).addr
        c.inflight = 9  # our own open streams count even before the next Stats poll
        third = LeastLoaded().pick([a, b, c]).addr
        return first, second, third

    assert _in_loop(body) == ("127.0.0.1:6001", "127.0.0.1:6002", "127.0.0.1:6000")


def test_pages_held_by_the_prefix_cache_count_as_free():
    """A node whose pool is mostly prefix-cache pages (evicted on demand) is as free as one with free pages,
    and freer than one whose requests hold them."""
    def body():
        cached, busy = NodeClient("127.0.0.1:6050", "decode"), NodeClient("127.0.0.1:6051", "decode")
        cached.stats = pb.NodeStats(role="decode", running=2,
                                    pools=[pb.PoolStats(kind="kv", total=100, free=10, cached=80)])
        busy.stats = _stats(running=2, free=40)
        return cached.free_fraction(), LeastLoaded().pick([busy, cached]).addr

    assert _in_loop(body) == (0.9, "127.0.0.1:6050")


def test_a_node_is_as_free_as_its_tightest_pool_kind():
    """A sliding-window model needs room in both pools: a node with a roomy `kv` pool but a nearly full `swa`
    pool is fuller than one with both half used."""
    def body():
        tight, even = NodeClient("127.0.0.1:6060", "decode"), NodeClient("127.0.0.1:6061", "decode")
        tight.stats = pb.NodeStats(role="decode", pools=[pb.PoolStats(kind="kv", total=100, free=90),
                                                         pb.PoolStats(kind="swa", total=100, free=10)])
        even.stats = pb.NodeStats(role="decode", pools=[pb.PoolStats(kind="kv", total=100, free=50),
                                                        pb.PoolStats(kind="swa", total=100, free=50)])
        return tight.free_fraction(), LeastLoaded().pick([tight, even]).addr

    assert _in_loop(body) == (0.1, "127.0.0.1:6061")


def _dp_stats(rank_running: list[int], rank_free: list[int], total=100, transferring=0) -> pb.NodeStats:
    """A DP-attention decode node's Stats as node/runtime.py answers it: node-wide sums, one KV pool and one
    RankLoad per rank."""
    return pb.NodeStats(role="decode", running=sum(rank_running), transferring=transferring,
                        pools=[pb.PoolStats(kind="kv", total=total, free=f, dp_rank=d) for d, f in enumerate(rank_free)],
                        ranks=[pb.RankLoad(dp_rank=d, running=r) for d, r in enumerate(rank_running)])


def test_least_loaded_counts_a_dp_attention_node_by_its_best_rank():
    def body():
        dp, plain = NodeClient("127.0.0.1:6100", "decode"), NodeClient("127.0.0.1:6101", "decode")
        dp.stats, plain.stats = _dp_stats([4, 0], [60, 100]), _stats(running=2)
        idle_rank = LeastLoaded().pick([plain, dp]).addr  # 4 requests in all, but rank 1 is idle
        dp.stats = _dp_stats([3, 3], [60, 60])
        busy_ranks = LeastLoaded().pick([plain, dp]).addr
        dp.stats = _dp_stats([1, 1], [90, 10], transferring=4)  # 4 not yet on a rank: 2 more per rank
        held = dp.load()
        dp.stats = _dp_stats([2, 2], [10, 90])
        plain.stats = _stats(running=2, free=50)
        free_rank = LeastLoaded().pick([plain, dp]).addr  # equal load; the freest rank has 90 of 100 free
        dp.inflight = 7  # our own streams before the next poll, spread over 2 ranks: 4 each
        own = dp.load()
        return idle_rank, busy_ranks, held, free_rank, own

    assert _in_loop(body) == ("127.0.0.1:6100", "127.0.0.1:6101", 3, "127.0.0.1:6100", 4)


def test_make_policy_rejects_unknown():
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("random")


def test_pool_pairs_only_healthy_nodes_and_503_otherwise():
    def body():
        pool = NodePool(["127.0.0.1:7001", "127.0.0.1:7002"], ["127.0.0.1:7101"], policy="round_robin")
        with pytest.raises(ApiError) as info:
            pool.pick()
        assert info.value.status == 503 and "no healthy" in info.value.message
        pool.decode[1].healthy = True
        with pytest.raises(ApiError):
            pool.pick()  # a decode node alone is not a pair when prefill nodes are configured
        pool.prefill[0].healthy = True
        pairs = [pool.pick() for _ in range(3)]
        assert all(p.decode.addr == "127.0.0.1:7002" and p.prefill.addr == "127.0.0.1:7101" for p in pairs)
        pool.eject(pairs[0].decode, "UNAVAILABLE")
        assert not pool.decode[1].healthy and not pool.has_healthy_pair()

    _in_loop(body)


def test_colocated_pool_has_no_prefill():
    def body():
        pool = NodePool(["127.0.0.1:7001"])
        pool.decode[0].healthy = True
        pair = pool.pick()
        assert pool.colocated and pair.prefill is None

    _in_loop(body)


def test_poll_marks_unreachable_node_unhealthy():
    async def body():
        node = NodeClient("127.0.0.1:1", "decode")  # nothing listens on port 1
        node.healthy = True
        ok = await node.poll(timeout=1.0)
        await node.close()
        return ok, node.healthy, node.last_error

    ok, healthy, err = asyncio.run(body())
    assert not ok and not healthy and "UNAVAILABLE" in err


def test_dns_targets_expand_to_every_address():
    async def body():
        pool = NodePool(["localhost:50999"], ["localhost:50998"], dns_refresh_s=5.0)
        assert pool.decode == [] and not pool.colocated
        await pool._refresh_dns()
        decode = [n.addr for n in pool.decode]
        prefill = [n.addr for n in pool.prefill]
        first = pool.decode[0]
        await pool._refresh_dns()  # same answer: the same clients are kept
        same = pool.decode[0] is first
        await pool.close()
        return decode, prefill, same

    decode, prefill, same = asyncio.run(body())
    assert "127.0.0.1:50999" in decode and "127.0.0.1:50998" in prefill and same


def test_slow_stats_take_a_node_out_only_after_repeated_deadlines():
    import grpc

    class SlowStub:
        async def Stats(self, request, timeout):
            raise grpc.aio.AioRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                       details="Deadline Exceeded")

    async def body():
        from pdpair.router.node_client import SLOW_POLLS_LIMIT

        node = NodeClient("127.0.0.1:1", "decode")
        node.stub, node.healthy = SlowStub(), True
        seen = []
        for _ in range(SLOW_POLLS_LIMIT):
            await node.poll(timeout=0.1)
            seen.append(node.healthy)
        await node.close()
        return seen

    assert asyncio.run(body()) == [True, True, False]
