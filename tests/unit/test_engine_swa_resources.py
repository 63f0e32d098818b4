"""Per-kind items without a model: the `swa` pool grows chunk by chunk, gives back pages behind the window,
and hands over exactly the window tail; the `kv` pool keeps the whole context."""

from __future__ import annotations

import torch
from pdpair.engine import Request
from pdpair.engine.memory import SWA_KIND, KVPool, PoolSet, ReqToTokenPool
from pdpair.engine.scheduler.handoff import chunk_items, destination_items
from pdpair.engine.scheduler.resources import ResourceManager

PS, W = 4, 7


def _res(pages: int = 32) -> ResourceManager:
    pools = PoolSet([KVPool(pages, 1, PS, 1, 2, torch.float32, "cpu"),
                     KVPool(pages, 2, PS, 1, 2, torch.float32, "cpu", kind=SWA_KIND, window=W)], PS)
    return ResourceManager(pools, ReqToTokenPool(4, 128, PS, "cpu", pools.kinds))


def _live(req: Request, kind: str) -> list[int]:
    return list(range(req.items_first[kind], req.items_first[kind] + len(req.items[kind])))


def test_prefill_chunks_hold_the_window_behind_each_chunk_and_hand_over_the_tail():
    res = _res()
    req = Request("r", list(range(3, 33)))  # 30 tokens, chunks of 6
    assert res.acquire(req, req.seq_len, 0)
    assert len(req.items["kv"]) == 8 and len(req.items["swa"]) == 0  # swa grows per chunk
    sent_kv = []
    while req.num_cached < req.prompt_len:
        n = min(6, req.prompt_len - req.num_cached)
        res.trim(req)
        assert res.grow(req, req.num_cached + n)
        c = req.num_cached
        # exactly the pages from the one holding key c - W + 1 to the one holding token c + n - 1
        assert _live(req, "swa") == list(range(max(0, c - W + 1) // PS, -(-(c + n) // PS))), c
        req.num_cached += n
        if req.num_cached < req.prompt_len:
            items, starts = chunk_items(res, req, last=False)
            assert "swa" not in items and starts["kv"] == len(sent_kv)
            sent_kv += items["kv"].tolist()
    req.output_ids.append(5)  # the sampled token is in fill_ids on the last chunk (SEEDS.md 2)
    items, starts = chunk_items(res, req, last=True)
    assert sent_kv + items["kv"].tolist() == req.items["kv"].tolist()
    # keys the first decode query (position 30) sees: [24, 30) -> pages 6, 7
    assert starts["swa"] == 0 and items["swa"].tolist() == req.pages("swa", 6, 8).tolist()
    assert res.pools.allocator("swa").num_used == 2
    res.release(req)
    res.pools.check_integrity()
    assert res.pools.all_free()


def test_decode_destination_reserves_the_tail_and_decoding_stays_bounded():
    res = _res()
    req = Request("d", list(range(3, 21)))  # 18 tokens: tail = keys [12, 18) -> pages 3, 4
    assert res.acquire(req, req.prompt_len, 0, window_from=req.prompt_len)
    dst = destination_items(res, req)
    assert len(dst["kv"]) == 5 and len(dst["swa"]) == 2 and req.items_first["swa"] == 3
    req.num_cached = req.prompt_len
    peak = 0
    for _ in range(40):  # decode one token at a time, past several windows
        res.trim(req)
        assert res.grow(req, req.num_cached + 1)
        peak = max(peak, res.pools.allocator("swa").num_used)
        req.output_ids.append(7)
        req.num_cached += 1
    assert peak <= (W - 1) // PS + 2 and len(req.items["kv"]) == -(-req.num_cached // PS)
    res.release(req)
    assert res.pools.all_free() and res.req_to_token.num_free == res.req_to_token.num_total
