"""DeepSeek-V3.2 (tiny, with MoE layers, `--model DIR`) through the real daemons: disaggregated == colocated ==
transformers for prompts below and well above index_topk; the first TokenChunk reports as many `dsa` items as
`kv` items (the indexer pages ride with the latent pages); the decode node's indexer pages equal the prefill
node's byte for byte (tensor dumps of both daemons); the handshake refuses another index_topk, indexer head dim
or latent width, naming it."""

from __future__ import annotations

import pytest

from tests.deepseek_models import COMMON, INDEX_TOPK, VOCAB, save_deepseek
from tests.e2e._client import disagg_equals_colocated_and_hf, generate, pool_transfer, sampling, wait_all_free
from tests.e2e._nodes import start_cluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
transformers = pytest.importorskip("transformers", reason="transformers is a test dependency: pip install -e .[test]")

PAGE, CHUNK, LAYERS = 4, 5, 3
ARGS = ("--page-size", str(PAGE), "--chunk-size", str(CHUNK), "--max-pages", "128", "--attention-backend", "torch")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    path = tmp_path_factory.mktemp("deepseek-moe")
    hf = save_deepseek("moe", path)
    model = ("--model", str(path))
    nocache = ("--disable-prefix-cache",)  # these tests count whole-prompt transfers
    c = start_cluster(prefill_args=ARGS + model + nocache, decode_args=ARGS + model + nocache)
    c.model_dir = str(path)
    yield c, hf
    codes = c.stop()
    assert codes == {"prefill": 0, "decode": 0}, codes


def _ids(n: int) -> list[int]:
    return [(37 * i + n) % (VOCAB - 3) + 3 for i in range(n)]


@pytest.mark.parametrize("n", [INDEX_TOPK - 5, 3 * INDEX_TOPK + 3])
def test_disaggregated_equals_colocated_and_transformers(cluster, n):
    c, hf = cluster
    t = disagg_equals_colocated_and_hf(c, hf, _ids(n), 8)
    kv, dsa = pool_transfer(t, "kv"), pool_transfer(t, "dsa")
    pages = -(-n // PAGE)
    assert kv.items == dsa.items == pages, t  # one dsa item per kv item: the same pages
    assert kv.bytes == pages * LAYERS * PAGE * (COMMON["kv_lora_rank"] + COMMON["qk_rope_head_dim"]) * 4
    assert dsa.bytes == pages * LAYERS * PAGE * COMMON["index_head_dim"] * 4
    assert kv.items + dsa.items == t.items and kv.bytes + dsa.bytes == t.bytes
    for node in c.nodes:
        st = wait_all_free(node)
        assert st.integrity_ok and {p.kind for p in st.pools} == {"kv"}  # dsa has no allocator of its own



def test_prefix_cache_sends_only_the_new_latent_and_indexer_pages(cluster):
    """With the prefix cache (the daemons' default) a follow-up prompt extending an earlier one moves only the
    pages after the prefix the decode node holds, as many `dsa` pages as `kv` pages, and still generates what
    colocated and transformers generate."""
    _, hf = cluster
    model = ("--model", cluster[0].model_dir)
    c = start_cluster(prefill_args=ARGS + model, decode_args=ARGS + model)
    try:
        first = _ids(3 * INDEX_TOPK + 3)
        disagg_equals_colocated_and_hf(c, hf, first, 4)
        follow = first + _ids(2 * INDEX_TOPK)
        t = disagg_equals_colocated_and_hf(c, hf, follow, 6)
        kv, dsa = pool_transfer(t, "kv"), pool_transfer(t, "dsa")
        whole = -(-len(follow) // PAGE)
        assert 0 < kv.items == dsa.items < whole - len(first) // PAGE + 1, t  # the cached prefix stays put
        assert dsa.bytes == kv.items * LAYERS * PAGE * COMMON["index_head_dim"] * 4
        for node in c.nodes:
            st = wait_all_free(node)
            assert st.integrity_ok and st.prefix_cache.enabled and st.prefix_cache.cached_pages > 0
    finally:
        codes = c.stop()
    assert codes == {"prefill": 0, "decode": 0}, codes


@pytest.mark.parametrize("kind, fact, value", [("dsa", "index_topk", "16"), ("dsa", "index_head_dim", "64"),
                                               ("kv", "latent_dim", "96")])
def test_handshake_refuses_other_indexer_or_latent_facts(cluster, kind, fact, value):
    import grpc
    import msgspec
    from pdpair.engine import Engine
    from pdpair.node.layout import engine_layout, layout_to_proto
    from pdpair.proto import pdpair_pb2 as pb
    from pdpair.proto import pdpair_pb2_grpc as pb_grpc

    c, _ = cluster
    eng = Engine.from_model(c.model_dir, device="cpu", dtype="float32", page_size=PAGE, max_pages=8,
                            max_running_requests=2)
    ours = engine_layout(eng, f"probe-{fact}", "127.0.0.1:1", "tcp")
    assert ours.region("dsa").dtype == f"float32;index_head_dim={COMMON['index_head_dim']};index_topk={INDEX_TOPK}"
    stub = pb_grpc.PrefillNodeStub(grpc.insecure_channel(c.prefill.addr))
    stub.Handshake(pb.HandshakeRequest(decode_layout=layout_to_proto(ours)), timeout=30)
    old = f"{fact}={ours.region(kind).dtype.split(fact + '=')[1].split(';')[0]}"
    regions = tuple(msgspec.structs.replace(r, dtype=r.dtype.replace(old, f"{fact}={value}")) if r.kind == kind
                    else r for r in ours.regions)
    with pytest.raises(grpc.RpcError) as err:
        stub.Handshake(pb.HandshakeRequest(decode_layout=layout_to_proto(msgspec.structs.replace(
            ours, node_id=f"probe2-{fact}", regions=regions))), timeout=30)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"regions[{kind}].{fact}" in err.value.details()


def test_decode_side_indexer_pages_equal_the_prefill_side_byte_for_byte(cluster, tmp_path):
    """Both daemons dump the indexer keys of each request's context read back from their `dsa` pool: the
    prefill node after the last chunk, the decode node at its first decode step, whose prompt rows are the
    moved pages."""
    import torch
    from pdpair.engine.debug.format import read_runs

    model = ("--model", cluster[0].model_dir)
    dump = lambda d: ("--dump-dir", str(tmp_path / d), "--dump-filter", r"^layers\.\d+\.dsa\.context$")  # noqa: E731
    c = start_cluster(prefill_args=ARGS + model + dump("prefill"), decode_args=ARGS + model + dump("decode"))
    ids = _ids(3 * INDEX_TOPK + 2)
    try:
        out = generate(c.decode.stub, ids, sampling(max_new_tokens=3), c.prefill.addr, rid="dsa-bytes")
        assert out.first.prefilled_remotely and len(out.tokens) == 3
    finally:
        codes = c.stop()  # every queued tensor written
    assert codes == {"prefill": 0, "decode": 0}, codes
    [prefill], [decode] = read_runs(tmp_path / "prefill"), read_runs(tmp_path / "decode")

    def context(run, rec, layer):
        i = rec.rids.index("dsa-bytes")
        start = sum(rec.seq_lens[:i])
        return run.load(rec, f"layers.{layer}.dsa.context")[start : start + rec.seq_lens[i]]

    last_chunk = [r for r in prefill.records if "dsa-bytes" in r.rids][-1]
    first_decode = next(r for r in decode.records if "dsa-bytes" in r.rids)
    assert last_chunk.seq_lens[last_chunk.rids.index("dsa-bytes")] == len(ids)
    assert first_decode.mode == "decode"
    for layer in range(LAYERS):
        sent, landed = context(prefill, last_chunk, layer), context(decode, first_decode, layer)[: len(ids)]
        assert sent.shape == (len(ids), COMMON["index_head_dim"]) and sent.abs().sum() > 0
        assert torch.equal(landed.view(torch.uint8), sent.view(torch.uint8)), f"layer {layer}"
