"""The cache_aware pairing policy: a follow-up turn goes where its prefix went, a short match or an overloaded
node falls back to least-loaded, a prefill and a decode node that both hold the prefix are paired, and a node
that leaves the pool forgets its prompts."""

from __future__ import annotations

import asyncio

import pytest
from pdpair.router.cache_aware import CacheAware, CacheAwareConfig
from pdpair.router.node_client import NodeClient
from pdpair.router.pool import NodePool

FIRST = list(range(1000, 1100))  # a 100-token first turn
FOLLOW_UP = FIRST + list(range(5000, 5050))  # the next turn extends it: 100 of 150 tokens held (0.67)
OTHER = list(range(2000, 2100))


def _in_loop(fn):
    """grpc.aio channels belong to an event loop: build and use them inside one."""

    async def run():
        return fn()

    return asyncio.run(run())


def _nodes(role: str, n: int, base: int) -> list[NodeClient]:
    return [NodeClient(f"127.0.0.1:{base + i}", role) for i in range(n)]


def test_follow_up_turn_returns_to_its_node_and_a_new_prompt_goes_to_the_least_loaded():
    choices = []

    def body():
        nodes = _nodes("decode", 2, 7200)
        policy = CacheAware(CacheAwareConfig(), observe=lambda *c: choices.append(c))
        first = policy.pick_pair(nodes, None, FIRST)[0]
        first.inflight = 1  # its stream is open: least_loaded alone would now pick the other node
        follow_up = policy.pick_pair(nodes, None, FOLLOW_UP)[0]
        other = policy.pick_pair(nodes, None, OTHER)[0]
        return [n.addr for n in (first, follow_up, other)]

    assert _in_loop(body) == ["127.0.0.1:7200", "127.0.0.1:7200", "127.0.0.1:7201"]
    assert choices == [("decode", "load", 0), ("decode", "prefix", 100), ("decode", "load", 0)]


def test_a_match_below_the_threshold_falls_back_to_least_loaded():
    def body():
        a, b = nodes = _nodes("decode", 2, 7210)
        policy = CacheAware(CacheAwareConfig(match_threshold=0.5))
        policy.pick_pair(nodes, None, FIRST)  # to a
        a.inflight = 1
        short = FIRST[:40] + list(range(9000, 9060))  # 40 of 100 tokens held: 0.4 < 0.5
        long = FIRST[:60] + list(range(9100, 9140))  # 60 of 100: 0.6
        return policy.pick_pair(nodes, None, short)[0].addr, policy.pick_pair(nodes, None, long)[0].addr

    assert _in_loop(body) == ("127.0.0.1:7211", "127.0.0.1:7210")


@pytest.mark.parametrize(("load", "expected"), [(10, "127.0.0.1:7220"), (40, "127.0.0.1:7221")])
def test_an_overloaded_node_gets_no_prefix_matched_work(load, expected):
    def body():
        a, b = nodes = _nodes("decode", 2, 7220)
        policy = CacheAware(CacheAwareConfig())  # overloaded: > 32 more requests and > 1.5x the least
        policy.pick_pair(nodes, None, FIRST)
        a.inflight = load
        return policy.pick_pair(nodes, None, FOLLOW_UP)[0].addr

    assert _in_loop(body) == expected


def test_pairs_a_prefill_and_a_decode_node_that_both_hold_the_prefix():
    def body():
        d1, d2 = decode = _nodes("decode", 2, 7230)
        p1, p2 = prefill = _nodes("prefill", 2, 7240)
        policy = CacheAware(CacheAwareConfig())
        policy.tree(d2).insert(FIRST)  # the first turn went to (d2, p2)
        policy.tree(p2).insert(FIRST)
        policy.tree(d1).insert(FIRST[:20])  # a short shared head elsewhere
        d2.inflight = p2.inflight = 2  # least_loaded alone would pick (d1, p1)
        both = policy.pick_pair(decode, prefill, FOLLOW_UP)
        policy.tree(d1).insert(OTHER)  # only the decode side holds this one
        p1.inflight = 3
        decode_only = policy.pick_pair(decode, prefill, OTHER)
        return [(d.addr, p.addr) for d, p in (both, decode_only)]

    assert _in_loop(body) == [("127.0.0.1:7231", "127.0.0.1:7241"), ("127.0.0.1:7230", "127.0.0.1:7241")]


def test_the_same_sequence_of_prompts_gets_the_same_pairs():
    prompts = [FIRST, OTHER, FOLLOW_UP, FIRST[:30] + OTHER, OTHER + [1, 2], FIRST]

    def run():
        decode, prefill = _nodes("decode", 3, 7250), _nodes("prefill", 2, 7260)
        policy = CacheAware(CacheAwareConfig())
        out = []
        for i, p in enumerate(prompts):
            d, pf = policy.pick_pair(decode, prefill, p)
            d.inflight += 1 + i % 2
            out.append((d.addr, pf.addr))
        return out

    first = _in_loop(run)
    assert first == _in_loop(run)
    assert first[2] == first[0] and first[4][0] == first[1][0]  # the follow-ups went back


def test_an_ejected_node_forgets_its_prompts():
    def body():
        pool = NodePool(["127.0.0.1:7270", "127.0.0.1:7271"], policy="cache_aware")
        a, b = pool.decode
        a.healthy = b.healthy = True
        assert pool.pick(prompt=FIRST).decode is a
        a.inflight = 1
        assert pool.pick(prompt=FOLLOW_UP).decode is a  # remembered
        pool.eject(a, "UNAVAILABLE")
        a.healthy = True  # back, perhaps restarted with an empty cache
        return pool.pick(prompt=FOLLOW_UP).decode.addr

    assert _in_loop(body) == "127.0.0.1:7271"  # the tree is gone: least loaded


def test_retain_drops_the_trees_of_nodes_no_longer_live():
    def body():
        a, b = _nodes("decode", 2, 7280)
        policy = CacheAware(CacheAwareConfig())
        policy.tree(a).insert(FIRST)
        policy.tree(b).insert(FIRST)
        policy.retain([b])
        return policy.tree(a).size, policy.tree(b).size

    assert _in_loop(body) == (0, 100)


@pytest.mark.parametrize("bad", [dict(match_threshold=1.5), dict(balance_rel_threshold=0.5),
                                 dict(balance_abs_threshold=-1), dict(max_tree_tokens=0)])
def test_config_rejects_out_of_range_values(bad):
    with pytest.raises(ValueError):
        CacheAwareConfig(**bad)


def test_a_node_found_unhealthy_by_the_poll_forgets_its_prompts():
    """Real Stats servers: a node that answers draining is taken out by the poll and loses its tree, so once
    back it is chosen by load alone."""
    from tests.unit.test_router_discovery import StatsOnly, _server

    async def body():
        a_node, b_node = StatsOnly(), StatsOnly()
        (a_srv, a_port), (b_srv, b_port) = await _server(a_node), await _server(b_node)
        pool = NodePool([f"127.0.0.1:{a_port}", f"127.0.0.1:{b_port}"], policy="cache_aware")
        try:
            await pool.poll_once()
            a, b = pool.decode
            picked = [pool.pick(prompt=FIRST).decode]
            a.inflight = 1
            picked.append(pool.pick(prompt=FOLLOW_UP).decode)  # remembered
            a_node.draining = True
            await pool.poll_once()
            healthy_while_draining = a.healthy
            a_node.draining = False
            await pool.poll_once()
            picked.append(pool.pick(prompt=FOLLOW_UP).decode)  # back, but its tree is gone: by load
            return [n is a for n in picked], healthy_while_draining
        finally:
            await pool.close()
            await a_srv.stop(None)
            await b_srv.stop(None)

    assert asyncio.run(body()) == ([True, True, False], False)
