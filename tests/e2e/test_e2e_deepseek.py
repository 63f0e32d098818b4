"""DeepSeek-V3.2 (tiny, with MoE layers, `--model DIR`) through the real daemons: disaggregated == colocated ==
transformers for prompts below and well above index_topk; the first TokenChunk reports as many `dsa` items as
`kv` items (the indexer pages ride with the latent pages); concurrent requests leave every page free."""

from __future__ import annotations

import pytest

from tests.deepseek_models import COMMON, INDEX_TOPK, VOCAB, save_deepseek
from tests.e2e._client import disagg_equals_colocated_and_hf, pool_transfer, wait_all_free
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
    c = start_cluster(prefill_args=ARGS + model, decode_args=ARGS + model)
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
