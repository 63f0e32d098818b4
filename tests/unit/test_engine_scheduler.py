"""Scheduler managers without a model: admission with a reserve, chunk budget, decode growth and retraction."""

import torch
from pdpair.engine import Request, SamplingParams
from pdpair.engine.memory import KVPool, PoolSet, ReqToTokenPool
from pdpair.engine.request import ReqStatus
from pdpair.engine.scheduler.decode import DecodeManager
from pdpair.engine.scheduler.prefill import PrefillManager
from pdpair.engine.scheduler.resources import ResourceManager
from pdpair.engine.scheduler.stop import StopChecker
from pdpair.engine.scheduler.waiting import WaitingQueue

PS = 4


def _resources(pages: int, rows: int = 8) -> ResourceManager:
    pools = PoolSet([KVPool(pages, 1, PS, 1, 2, torch.float32, "cpu")], PS)
    return ResourceManager(pools, ReqToTokenPool(rows, 64, PS, "cpu"))


def _req(rid: str, n: int, **sp) -> Request:
    return Request(rid, list(range(1, n + 1)), SamplingParams(**sp))


def test_admission_is_fifo_and_keeps_a_reserve():
    res = _resources(pages=10)
    wq = WaitingQueue(res)
    for rid, n in (("a", 8), ("b", 16), ("c", 1)):  # 2, 4 and 1 pages
        wq.push(_req(rid, n))
    admitted = wq.next_batch(reserve_pages=4, slots=8)
    # a: 10 - 2 >= 4; b: 8 - 4 >= 4 + 1 (one more page per admitted request) fails; c may not jump the queue
    assert [r.rid for r in admitted] == ["a"] and len(wq) == 2
    assert admitted[0].status is ReqStatus.PREFILLING and admitted[0].num_pages == 2
    assert res.req_to_token.table[admitted[0].row, :8].tolist() == list(range(8))
    assert [r.rid for r in wq.next_batch(reserve_pages=0, slots=8)] == ["b", "c"]
    assert res.kv.num_free == 3
    res.pools.check_integrity()


def test_chunk_budget_spans_requests_in_order():
    pm = PrefillManager(chunk_size=10)
    a, b, c = _req("a", 7), _req("b", 6), _req("c", 3)
    pm.add([a, b, c])
    reqs, lens = pm.next_batch()
    assert [r.rid for r in reqs] == ["a", "b"] and lens == [7, 3]
    a.num_cached, b.num_cached = 7, 3
    pm.remove(a)
    reqs, lens = pm.next_batch()
    assert [r.rid for r in reqs] == ["b", "c"] and lens == [3, 3]


def test_decode_grows_a_page_at_boundaries_and_retracts_newest():
    res = _resources(pages=5)
    dm = DecodeManager(res)
    reqs = []
    for rid in ("old", "new"):
        r = _req(rid, 8)
        assert res.acquire(r, 8, 0)
        r.num_cached, r.output_ids = 8, [5]  # prompt cached, token at position 8 pending: needs page 2
        r.status = ReqStatus.RUNNING
        dm.add(r)
        reqs.append(r)
    batch, retracted = dm.next_batch()  # 1 free page, 2 needed: the newest goes
    assert [r.rid for r in batch] == ["old"] and [r.rid for r in retracted] == ["new"]
    assert reqs[0].num_pages == 3 and res.kv.num_free == 0
    res.release(retracted[0])
    assert res.kv.num_free == 2 and retracted[0].row is None
    res.release(reqs[0])
    assert res.pools.all_free() and res.req_to_token.num_free == 8


def test_decode_manager_knows_when_a_penalised_request_is_running():
    """The flag that keeps overlap scheduling off follows every way a request enters and leaves: add, remove,
    discard and retraction (the newest request goes when the pool runs dry)."""
    res = _resources(pages=5)
    dm = DecodeManager(res)
    plain, pen = _req("plain", 8), _req("pen", 8, repetition_penalty=1.2)
    for r in (plain, pen):
        assert res.acquire(r, 8, 0)
        r.num_cached, r.output_ids = 8, [5]
        dm.add(r)
    assert dm.uses_penalties
    _, retracted = dm.next_batch()  # 1 free page, 2 needed: the penalised request (newest) is retracted
    assert retracted == [pen] and not dm.uses_penalties
    dm.add(pen)
    dm.discard(pen)
    dm.discard(pen)  # not here any more: nothing changes
    assert not dm.uses_penalties and dm.reqs == [plain]
    dm.add(pen)
    dm.remove(plain)
    assert dm.uses_penalties
    dm.remove(pen)
    assert not dm.uses_penalties and not dm.reqs


def test_length_reached_set_agrees_with_length_reached():
    sc = StopChecker([2], context_length=12, decode=None)
    reqs = [_req("a", 3, max_new_tokens=2), _req("b", 10, max_new_tokens=50), _req("c", 4, max_new_tokens=9)]
    for outs in ([1], [1, 1], [1, 1, 1]):
        for r in reqs:
            r.output_ids = list(outs)
        assert sc.length_reached_set(reqs) == {r for r in reqs if sc.length_reached(r)}
    assert sc.length_reached_set(reqs) == set(reqs[:2])  # a: 3 >= 2 new tokens; b: 10 + 3 >= 12 context

def test_stop_checker():
    sc = StopChecker([2], context_length=20, decode=lambda ids: "".join(chr(96 + t) for t in ids))
    r = _req("r", 3, max_new_tokens=4, stop=("cd",), stop_token_ids=(9,))
    for tok, want in ((1, None), (3, None), (4, "stop")):  # "a", "c", "d": "cd" completes
        r.output_ids.append(tok)
        assert sc.finish_reason(r) == want
    r2 = _req("r2", 3, max_new_tokens=2, ignore_eos=True)
    r2.output_ids.append(2)
    assert sc.finish_reason(r2) is None  # EOS ignored
    r2.output_ids.append(9)
    assert sc.finish_reason(r2) == "length"
    r3 = _req("r3", 19)
    r3.output_ids.append(5)
    assert sc.finish_reason(r3) == "length"  # context end
    r3.output_ids[-1] = 2
    assert sc.finish_reason(r3) == "stop"
