"""The in-process twin of disaggregation for hybrid mamba2 models: the prefill-only engine hands over `kv` pages
per chunk and the request's one `mamba` slot once, with the last chunk (after its forward); after the items are
copied id for id the decode slot equals the prefill slot byte for byte, and the decode engine generates what a
colocated engine and transformers generate. Slots are held from admission to release on both sides."""

from __future__ import annotations

import pytest
import torch
from _engine_runtime_fixtures import finish_like_colocated, prefill_only

from tests.hybrid_models import D_CONV, SSD_CHUNK, VOCAB, hf_state, save_hybrid

pytestmark = pytest.mark.timeout(300)
transformers = pytest.importorskip("transformers", reason="transformers is a test dependency: pip install -e .[test]")

PAGE, CHUNK, NEW = 4, 5, 6


@pytest.fixture(scope="module", params=["bamba", "granite"])
def engines(request, tmp_path_factory):
    from pdpair.engine import Engine

    path = tmp_path_factory.mktemp(f"hybrid-disagg-{request.param}")
    hf = save_hybrid(request.param, path)
    make = lambda **kw: Engine.from_model(str(path), device="cpu", dtype="float32", page_size=PAGE,  # noqa: E731
                                          max_pages=96, attention_backend="torch", max_running_requests=4, **kw)
    return hf, make(chunk_size=CHUNK), make(), make()


@pytest.mark.parametrize("n", [D_CONV - 2, CHUNK, 4 * PAGE, 2 * SSD_CHUNK + 3])
def test_state_slot_moves_once_and_decode_matches(engines, n):
    from pdpair.engine import Request, SamplingParams

    hf, prefill, decode, colocated = engines
    ids = [(31 * i + 7 * n) % (VOCAB - 3) + 3 for i in range(n)]
    sp = SamplingParams(max_new_tokens=NEW, temperature=0.0, ignore_eos=True)
    rid = f"r{n}"
    dst = decode.scheduler.preallocate(Request(rid, ids, sp))
    assert {k: len(v) for k, v in dst.items()} == {"kv": -(-n // PAGE), "mamba": 1}
    assert dst["mamba"][0] != 0  # item 0 is the padding dummy
    assert decode.pools.allocator("mamba").num_used == 1  # held from admission on

    chunks, req = prefill_only(prefill, rid, ids, sp)
    assert len(chunks) == -(-n // CHUNK)
    assert all("mamba" not in c.kind_pages for c in chunks[:-1])  # the state goes once, with the last chunk
    last = chunks[-1]
    assert last.kind_starts["mamba"] == 0 and len(last.kind_pages["mamba"]) == 1
    src_slot = int(last.kind_pages["mamba"][0])
    # the slot holds the state over the prompt only (SEEDS.md §2): transformers' cache after the prompt
    _, convs, ssms = hf_state(hf, ids)
    pool = prefill.mamba_pool
    for i, (conv, ssm) in enumerate(zip(convs, ssms, strict=True)):
        torch.testing.assert_close(pool.conv[src_slot, i], conv, rtol=0, atol=2e-5 * max(1.0, conv.abs().max()))
        torch.testing.assert_close(pool.ssm[src_slot, i], ssm, rtol=0, atol=2e-5 * max(1.0, ssm.abs().max()))
    for c in chunks:
        for kind, src in c.kind_pages.items():
            lo = c.kind_starts[kind]
            target = dst[kind][lo : lo + len(src)]
            decode.pools.pool(kind).buffer[target] = prefill.pools.pool(kind).buffer[src]
    src_bytes = pool.buffer[src_slot].clone()
    prefill.scheduler.release(rid)
    assert prefill.pools.all_free()
    got = decode.mamba_pool.buffer[int(dst["mamba"][0])]
    assert torch.equal(got, src_bytes) and got.any()  # byte for byte, every mamba layer's conv and SSM state

    finish_like_colocated(prefill, decode, colocated, rid, ids, sp, last.first_token, NEW, hf)


def test_admission_counts_slots(engines):
    """Free pages but no free slot: nothing is admitted until a slot comes back."""
    from pdpair.engine import Request, SamplingParams

    _, _, decode, _ = engines
    sp = SamplingParams(max_new_tokens=2, temperature=0.0, ignore_eos=True)
    held = [decode.scheduler.preallocate(Request(f"s{i}", [5, 6, 7], sp)) for i in range(3)]
    assert all(h is not None for h in held)
    slots = decode.pools.allocator("mamba")
    extra = slots.alloc(slots.num_free)  # take the last slot away: pages remain plentiful
    assert decode.pools.allocator("kv").num_free > 10
    assert decode.scheduler.preallocate(Request("s-none", [5, 6, 7], sp)) is None
    slots.free(extra)
    for i in range(3):
        decode.scheduler.release(f"s{i}")
    decode.pools.check_integrity()
    assert decode.pools.all_free()
