"""Disaggregated generation (prefill node -> Mooncake -> decode node) equals colocated generation (the
decode node prefilling locally), token for token; pages are all free afterwards on both nodes."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from pdpair.proto import pdpair_pb2 as pb

from tests.e2e._client import generate, prompt, sampling, wait_all_free
from tests.e2e._nodes import start_cluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PAGE, CHUNK = 16, 64  # the launcher's defaults
LOCAL_BELOW = 5  # the decode node prefills shorter prompts itself
CASES = {
    "short": 5,
    "many_chunks_and_pages": 5 * CHUNK + 7,  # 6 chunks, 21 pages, partial tail page
    "page_multiple": 8 * PAGE,  # SEEDS.md 2: the sampled token must not add a page
}
SAMPLINGS = {
    "greedy": dict(temperature=0.0),
    "seeded": dict(temperature=0.9, top_p=0.95, top_k=50, seed=1234),
}


@pytest.fixture(scope="module")
def cluster():
    # the cache off: these cases compare whole-prompt transfers (tests/e2e/test_e2e_prefix_cache.py: on)
    c = start_cluster(prefill_args=("--disable-prefix-cache",),
                      decode_args=("--local-prefill-below", str(LOCAL_BELOW), "--disable-prefix-cache"))
    yield c
    codes = c.stop()
    assert codes == {"prefill": 0, "decode": 0}, codes


@pytest.mark.parametrize("sname", list(SAMPLINGS))
@pytest.mark.parametrize("case", list(CASES))
def test_disaggregated_equals_colocated(cluster, case, sname):
    ids = prompt(CASES[case], salt=len(case))
    sp = sampling(max_new_tokens=12, **SAMPLINGS[sname])
    colocated = generate(cluster.decode.stub, ids, sp)
    disagg = generate(cluster.decode.stub, ids, sp, prefill_addr=cluster.prefill.addr)
    assert len(colocated.tokens) == 12
    assert disagg.tokens == colocated.tokens
    assert disagg.finish_reason == colocated.finish_reason == "length"
    assert not colocated.first.prefilled_remotely and disagg.first.prefilled_remotely
    assert disagg.first.prompt_tokens == len(ids) and disagg.first.ttft_seconds > 0
    # the prefill node's own timings: inside the decode node's TTFT, the first chunk inside the whole
    f = disagg.first
    assert 0 < f.prefill_first_chunk_seconds <= f.prefill_node_seconds < f.ttft_seconds, f
    assert colocated.first.prefill_node_seconds == 0
    pages = -(-len(ids) // PAGE)
    assert disagg.first.transfer.items == pages
    assert disagg.first.transfer.bytes == pages * cluster_item_bytes(cluster)


def cluster_item_bytes(cluster) -> int:
    """One KV page of SmolLM2-135M in fp32: layers x {k, v} x page_size x kv_heads x head_dim x 4 bytes."""
    assert cluster.decode.stub.ModelInfo(pb.ModelInfoRequest()).page_size == PAGE
    return 30 * 2 * PAGE * 3 * 64 * 4


def test_long_prompt_is_sent_in_several_batches(cluster):
    """Chunk streaming is real: one transfer batch per completed chunk, before prefill ends."""
    ids = prompt(6 * CHUNK, salt=3)
    before = cluster.prefill.stats().transfer_batches_total
    out = generate(cluster.decode.stub, ids, sampling(max_new_tokens=2), prefill_addr=cluster.prefill.addr)
    assert out.first.transfer.batches >= 6, out.first.transfer
    assert cluster.prefill.stats().transfer_batches_total - before == out.first.transfer.batches


def test_concurrent_mixed_lengths_then_all_pages_free(cluster):
    lengths = [3 + (37 * i) % 110 for i in range(32)]  # 3..112 tokens: one to seven pages
    prompts = [prompt(n, salt=i) for i, n in enumerate(lengths)]
    sp = sampling(max_new_tokens=5)
    with ThreadPoolExecutor(32) as pool:
        reference = list(pool.map(lambda ids: generate(cluster.decode.stub, ids, sp).tokens, prompts))
        disagg = list(pool.map(
            lambda ids: generate(cluster.decode.stub, ids, sp, prefill_addr=cluster.prefill.addr), prompts))
    for i, (ref, out) in enumerate(zip(reference, disagg, strict=True)):
        assert out.first.prefilled_remotely == (lengths[i] >= LOCAL_BELOW)
        assert out.tokens == ref, f"request {i} ({lengths[i]} prompt tokens) differs"
    for node in cluster.nodes:
        st = wait_all_free(node)
        assert st.requests_aborted == 0
        assert st.waiting == st.prefilling == st.running == st.transferring == 0


def test_one_token_requests_finish_alike(cluster):
    """The remote first token is sent before the decode node's next step; the finish still arrives."""
    ids = prompt(40, salt=11)
    for sp in (sampling(max_new_tokens=1), sampling(max_new_tokens=3, stop_token_ids=list(range(49152)))):
        colocated = generate(cluster.decode.stub, ids, sp)
        disagg = generate(cluster.decode.stub, ids, sp, prefill_addr=cluster.prefill.addr)
        assert disagg.tokens == colocated.tokens and len(disagg.tokens) == 1
        assert disagg.finish_reason == colocated.finish_reason
        assert disagg.first.token_ids == disagg.tokens and disagg.first.prefilled_remotely


def test_prompts_below_the_threshold_are_prefilled_locally(cluster):
    ids, sp = prompt(LOCAL_BELOW - 1, salt=5), sampling(max_new_tokens=6)
    out = generate(cluster.decode.stub, ids, sp, prefill_addr=cluster.prefill.addr)
    assert not out.first.prefilled_remotely and out.first.transfer.items == 0
    assert out.tokens == generate(cluster.decode.stub, ids, sp).tokens
