"""Prefix caching through real daemons: a follow-up turn transfers only the pages the decode node does not hold,
and its tokens equal a cache-off engine's; after hits, aborts and evictions every page on both nodes is free or
cached, with the integrity check (every item held exactly once) passing."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from pdpair.proto import pdpair_pb2 as pb

from tests.e2e._client import generate, new_rid, prompt, sampling, wait_all_free
from tests.e2e._nodes import start_cluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PAGE = 16  # the launcher's default page and chunk sizes
SP = sampling(max_new_tokens=8)


@pytest.fixture(scope="module")
def cluster():
    c = start_cluster(prefill_args=("--max-pages", "40"), decode_args=("--max-pages", "40"))  # evictions follow
    yield c
    codes = c.stop()
    assert codes == {"prefill": 0, "decode": 0}, codes


@pytest.fixture(scope="module")
def oracle():
    """The same model and page/chunk sizes in this process, the prefix cache off."""
    import torch
    from pdpair.engine import Engine, SamplingParams

    eng = Engine.from_model("smollm2-135m", dtype=torch.float32, page_size=PAGE, chunk_size=64, max_pages=256,
                            attention_backend="torch")
    return lambda ids: eng.generate([ids], SamplingParams(max_new_tokens=8, temperature=0.0))[0].token_ids


def test_second_turn_moves_only_the_new_pages(cluster, oracle):
    d, p = cluster.decode, cluster.prefill
    turn1 = prompt(70, salt=1)
    first = generate(d.stub, turn1, SP, prefill_addr=p.addr)
    assert first.first.prefilled_remotely and first.first.transfer.items == 5  # ceil(70 / 16): nothing cached
    assert first.tokens == oracle(turn1)
    turn2 = turn1 + first.tokens + prompt(20, salt=2)  # 98 tokens: 7 pages
    second = generate(d.stub, turn2, SP, prefill_addr=p.addr)
    # the decode node kept turn 1's 77 computed tokens: 4 whole pages; 3 pages of 98 tokens remain
    assert second.first.prefilled_remotely and second.first.transfer.items == 3, second.first.transfer
    new_pages = -(-(len(turn2) - len(turn1) - len(first.tokens)) // PAGE)
    assert second.first.transfer.items <= new_pages + 1
    assert second.tokens == oracle(turn2)
    for node, hits in ((d, 64), (p, 64)):  # the prefill node matched turn 1's 4 whole prompt pages
        st = node.stats().prefix_cache
        assert st.enabled and st.hit_tokens >= hits and st.cached_pages > 0, (node.role, st)


def _cancelled_after_first_chunk(stub, ids, addr) -> None:
    call = stub.Generate(pb.GenerateRequest(rid=new_rid("x"), token_ids=ids, sampling=sampling(max_new_tokens=40),
                                            prefill_addr=addr), timeout=300)
    try:
        next(iter(call))
    except grpc.RpcError:
        pass
    call.cancel()


def test_hits_aborts_and_evictions_leave_every_page_accounted_for(cluster, oracle):
    d, p = cluster.decode, cluster.prefill
    system = prompt(48, salt=9)  # 3 whole pages every request shares
    prompts = [system + prompt(40 + 8 * i, salt=20 + i) for i in range(12)]  # more pages than the pools hold
    with ThreadPoolExecutor(6) as pool:
        outs = list(pool.map(lambda ids: generate(d.stub, ids, SP, prefill_addr=p.addr), prompts[:8]))
        list(pool.map(lambda ids: _cancelled_after_first_chunk(d.stub, ids, p.addr), prompts[8:]))
    for ids, out in zip(prompts[:8], outs, strict=True):
        assert out.tokens == oracle(ids)
    again = generate(d.stub, prompts[0] + outs[0].tokens + [42], SP, prefill_addr=p.addr)
    assert again.tokens == oracle(prompts[0] + outs[0].tokens + [42])
    for node in (d, p):
        st = wait_all_free(node)
        assert st.integrity_ok and st.prefix_cache.hit_tokens > 0, (node.role, st.prefix_cache)
    assert d.stats().prefix_cache.evicted_pages + p.stats().prefix_cache.evicted_pages > 0
