"""The in-process twin of disaggregation for DeepSeek-V3.2: the prefill-only engine hands over `kv` (latent)
pages and the `dsa` (indexer key) pages on the same ids with every chunk, the partial tail page with the last;
after the items are copied id for id the decode side's indexer pages equal the prefill side's byte for byte and
the decode engine generates what a colocated engine and transformers generate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _engine_runtime_fixtures import finish_like_colocated, prefill_only, run_until_done

from tests.deepseek_models import INDEX_TOPK, VOCAB, save_deepseek

pytestmark = pytest.mark.timeout(300)
transformers = pytest.importorskip("transformers", reason="transformers is a test dependency: pip install -e .[test]")

PAGE, CHUNK, NEW = 4, 6, 6


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    from pdpair.engine import Engine

    path = tmp_path_factory.mktemp("deepseek-disagg")
    hf = save_deepseek("moe", path)
    make = lambda **kw: Engine.from_model(str(path), device="cpu", dtype="float32", page_size=PAGE,  # noqa: E731
                                          max_pages=96, attention_backend="torch", max_running_requests=4, **kw)
    return hf, make(chunk_size=CHUNK), make(), make()


@pytest.mark.parametrize("n", [INDEX_TOPK - 3, 4 * PAGE, 3 * INDEX_TOPK + 1])
def test_indexer_pages_move_with_each_chunk_and_decode_matches(engines, n):
    from pdpair.engine import Request, SamplingParams

    hf, prefill, decode, colocated = engines
    ids = [(31 * i + 7 * n) % (VOCAB - 3) + 3 for i in range(n)]
    sp = SamplingParams(max_new_tokens=NEW, temperature=0.0, ignore_eos=True)
    rid = f"r{n}"
    dst = decode.scheduler.preallocate(Request(rid, ids, sp))
    assert {k: len(v) for k, v in dst.items()} == {"kv": -(-n // PAGE), "dsa": -(-n // PAGE)}
    assert np.array_equal(dst["dsa"], dst["kv"])  # one allocator
    assert decode.pools.kinds == ("kv",)

    chunks, _ = prefill_only(prefill, rid, ids, sp)
    assert len(chunks) == -(-n // CHUNK)
    for c in chunks:  # dsa rides with each chunk's kv pages, the same ids at the same offsets
        assert np.array_equal(c.kind_pages["dsa"], c.kind_pages["kv"])
        assert c.kind_starts["dsa"] == c.kind_starts["kv"]
    assert sum(len(c.kind_pages["dsa"]) for c in chunks) == -(-n // PAGE)  # the partial tail with the last
    if n > CHUNK:
        assert len(chunks[0].kind_pages["dsa"]) == CHUNK // PAGE  # complete pages before the last chunk
    src_pages = np.concatenate([c.kind_pages["dsa"] for c in chunks])
    for c in chunks:
        for kind, src in c.kind_pages.items():
            lo = c.kind_starts[kind]
            target = dst[kind][lo : lo + len(src)]
            decode.pools.pool(kind).buffer[target] = prefill.pools.pool(kind).buffer[src]
    src_index = prefill.pools.pool("dsa").buffer[src_pages].clone()
    prefill.scheduler.release(rid)
    got = decode.pools.pool("dsa").buffer[dst["dsa"]]
    assert torch.equal(got, src_index) and got.any()  # byte for byte, every layer's indexer keys

    finish_like_colocated(prefill, decode, colocated, rid, ids, sp, chunks[-1].first_token, NEW, hf)


def test_the_decode_side_reads_the_moved_indexer_pages(engines):
    """Control: the same hand-over with the `dsa` pages left out (zero keys) decodes something else, so the
    test above would catch indexer pages that did not arrive."""
    from pdpair.engine import Request, SamplingParams

    hf, prefill, decode, colocated = engines
    n = 3 * INDEX_TOPK + 1
    ids = [(31 * i + 7 * n) % (VOCAB - 3) + 3 for i in range(n)]
    sp = SamplingParams(max_new_tokens=NEW, temperature=0.0, ignore_eos=True)
    dst = decode.scheduler.preallocate(Request("no-dsa", ids, sp))
    chunks, _ = prefill_only(prefill, "no-dsa", ids, sp)
    for c in chunks:
        src, lo = c.kind_pages["kv"], c.kind_starts["kv"]
        decode.pools.pool("kv").buffer[dst["kv"][lo : lo + len(src)]] = prefill.pools.pool("kv").buffer[src]
    decode.pools.pool("dsa").buffer[dst["dsa"]] = 0
    prefill.scheduler.release("no-dsa")
    decode.scheduler.activate("no-dsa", chunks[-1].first_token)
    toks, _, _ = run_until_done(decode, {"no-dsa"})
    colocated.scheduler.submit(Request("no-dsa", ids, sp))
    ref, _, _ = run_until_done(colocated, {"no-dsa"})
    assert toks["no-dsa"] != ref["no-dsa"]
    for eng in (prefill, decode, colocated):
        assert eng.pools.all_free()
