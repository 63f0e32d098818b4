"""A prefill node with --tp-size 2 sends to a decode node with --tp-size 2 (gloo): each attention-TP rank
writes its share of the KV heads (SmolLM2's 3 KV heads: 2 + 1) from its own transfer engine into the
same-numbered decode rank's pools; the request's pages are ready once both ranks' writes completed. Greedy
tokens equal the one-rank engine's; a request cancelled mid-prefill drains both ranks' writes; both nodes
end with every page free."""

from __future__ import annotations

import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from pdpair.engine import Engine, SamplingParams
from pdpair.proto import pdpair_pb2 as pb

from tests.e2e._client import generate, new_rid, prompt, sampling, wait_all_free, wait_for
from tests.e2e._nodes import start_node, wait_healthy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PROMPTS = [prompt(40, salt=11), prompt(9, salt=12), prompt(150, salt=13), prompt(70, salt=14)]
NEW = 8


def test_tp2_prefill_node_to_tp2_decode_node_equals_one_rank():
    log_dir = Path(tempfile.mkdtemp(prefix="pdpair-tp-disagg-"))
    prefill = start_node("prefill", "--tp-size", "2", log_dir=log_dir)
    decode = start_node("decode", "--tp-size", "2", log_dir=log_dir)
    try:
        engine = Engine.from_model(max_pages=128, chunk_size=64)  # while the nodes load
        expected = [o.token_ids for o in engine.generate(PROMPTS, SamplingParams(max_new_tokens=NEW,
                                                                                 temperature=0.0))]
        full_item = next(r.item_bytes for r in engine.pools.regions() if r.kind == "kv")  # all 3 KV heads
        del engine
        wait_healthy([prefill, decode])
        with ThreadPoolExecutor(len(PROMPTS)) as pool:
            disagg = list(pool.map(lambda p: generate(decode.stub, p, sampling(NEW), prefill_addr=prefill.addr),
                                   PROMPTS))
        assert [g.tokens for g in disagg] == expected
        assert all(g.first.prefilled_remotely for g in disagg)
        before = prefill.stats().transfer_batches_total
        # both ranks' shares moved (2 + 1 KV heads): every page's bytes are a whole one-rank item's, not the
        # two thirds rank 0 holds
        for g, ids in zip(disagg, PROMPTS, strict=True):
            t = g.first.transfer
            assert (t.items, t.bytes) == (-(-len(ids) // 16), -(-len(ids) // 16) * full_item), t
        # a request cancelled mid-prefill: every rank's writes drain, both nodes get every page back
        call = decode.stub.Generate(pb.GenerateRequest(rid=new_rid("cancel"), token_ids=prompt(30 * 64, salt=15),
                                                       sampling=sampling(4), prefill_addr=prefill.addr), timeout=120)
        wait_for(lambda: prefill.stats().transfer_batches_total > before, "pages of the long prompt to move",
                 timeout=60)
        call.cancel()
        with pytest.raises(grpc.RpcError) as cancelled:
            list(call)
        assert cancelled.value.code() == grpc.StatusCode.CANCELLED
        wait_all_free(decode, reserved=1)  # both nodes run ranks: item 0 holds their padding rows
        wait_all_free(prefill, reserved=1)
    finally:
        codes = decode.stop(), prefill.stop()
    assert codes == (0, 0)
