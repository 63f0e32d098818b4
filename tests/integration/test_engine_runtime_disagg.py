"""The in-process twin of disaggregation: prefill-only on one engine, pages copied into a second engine's
preallocated pages, activate, decode. Must generate exactly what a colocated run generates."""

from __future__ import annotations

import numpy as np
import pytest
from _engine_runtime_fixtures import make_engine, one_thread, prefill_only, prompts, run_until_done
from pdpair.engine import Request, SamplingParams
from pdpair.engine.request import ReqStatus

pytestmark = pytest.mark.usefixtures("one_thread")
_ = one_thread

PAGE = 4
GREEDY = SamplingParams(max_new_tokens=6, temperature=0.0, ignore_eos=True)
SEEDED = SamplingParams(max_new_tokens=6, temperature=1.0, top_p=0.9, seed=7, ignore_eos=True)


@pytest.fixture(scope="module")
def engines():
    prefill = make_engine(page_size=PAGE, chunk_size=10, max_pages=128)
    decode = make_engine(page_size=PAGE, max_pages=128)
    colocated = make_engine(page_size=PAGE, max_pages=128)
    return prefill, decode, colocated


def _copy_pages(src_eng, src: np.ndarray, dst_eng, dst: np.ndarray) -> None:
    """What the transfer engine does: item i of the source lands in item i of the destination."""
    assert len(src) == len(dst)
    dst_eng.pools.kv.buffer[dst] = src_eng.pools.kv.buffer[src]


def _disagg(prefill, decode, rid: str, ids: list[int], sp: SamplingParams,
            also: frozenset[str] = frozenset()) -> tuple[dict[str, list[int]], dict[str, str]]:
    """Run `rid` disaggregated; returns tokens and finish reasons of `rid` and of local requests `also`."""
    dst = decode.scheduler.preallocate(Request(rid, ids, sp))
    assert dst is not None and len(dst["kv"]) == -(-len(ids) // PAGE)
    assert decode.scheduler.stats().prealloc == 1
    chunks, req = prefill_only(prefill, rid, ids, sp)
    # chunk events enumerate the prompt's pages once each, in request order
    assert [c.kind_starts["kv"] for c in chunks] == list(np.cumsum([0] + [len(c.kind_pages["kv"]) for c in chunks[:-1]]))
    sent = np.concatenate([c.kind_pages["kv"] for c in chunks])
    assert len(sent) == len(dst["kv"])  # SEEDS.md §2: over the prompt, not fill_ids
    assert all(c.first_token is None for c in chunks[:-1]) and chunks[-1].first_token is not None
    for i, c in enumerate(chunks[:-1]):  # every page announced before the last chunk is complete
        assert (c.kind_starts["kv"] + len(c.kind_pages["kv"])) * PAGE <= 10 * (i + 1)
    assert req.status is ReqStatus.HELD and prefill.scheduler.stats().held == 1
    _copy_pages(prefill, sent, decode, dst["kv"][: len(sent)])
    prefill.scheduler.release(rid)
    assert prefill.pools.all_free()
    decode.scheduler.activate(rid, chunks[-1].first_token)
    toks, reasons, _ = run_until_done(decode, {rid} | also)
    assert toks[rid][0] == chunks[-1].first_token
    return toks, reasons


@pytest.mark.timeout(300)
@pytest.mark.parametrize("length", [12, 23, 8])  # 12 and 8: multiples of the page size (SEEDS.md §2)
@pytest.mark.parametrize("sp", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_disaggregated_equals_colocated(engines, length, sp):
    prefill, decode, colocated = engines
    ids = (prompts(colocated)[0] * 3)[:length]
    expected = colocated.generate([ids], sp)[0]
    rid = f"r{length}-{sp.seed}"
    toks, reasons = _disagg(prefill, decode, rid, ids, sp)
    assert (toks[rid], reasons[rid]) == (expected.token_ids, expected.finish_reason)
    for eng in engines:
        assert eng.pools.all_free()
        eng.pools.check_integrity()


@pytest.mark.timeout(300)
def test_activated_request_decodes_beside_local_ones(engines):
    """A disaggregated request joins a running batch of local requests without disturbing them."""
    prefill, decode, colocated = engines
    ps = prompts(colocated)
    expected = [o.token_ids for o in colocated.generate(ps[:3], GREEDY)]
    decode.scheduler.submit(Request("local-a", ps[1], GREEDY))
    decode.scheduler.submit(Request("local-b", ps[2], GREEDY))
    first = {ev.rid: ev.new_token_ids for ev in decode.scheduler.step()}
    toks, _ = _disagg(prefill, decode, "remote", ps[0], GREEDY, frozenset({"local-a", "local-b"}))
    assert toks["remote"] == expected[0]
    assert first.get("local-a", []) + toks["local-a"] == expected[1]
    assert first.get("local-b", []) + toks["local-b"] == expected[2]
    assert decode.pools.all_free() and not decode.scheduler.has_work()


@pytest.mark.timeout(120)
def test_preallocate_abort_and_detach(engines):
    prefill, decode, _ = engines
    ids = list(range(10, 40))
    items = decode.scheduler.preallocate(Request("p1", ids, GREEDY))
    assert items is not None and not decode.pools.all_free()
    assert decode.scheduler.abort("p1") and decode.pools.all_free()
    assert not decode.scheduler.abort("p1")
    # a pool too small for the prompt right now: None, nothing taken
    small = make_engine(page_size=PAGE, max_pages=12)
    assert small.scheduler.preallocate(Request("first", ids, GREEDY)) is not None
    assert small.scheduler.preallocate(Request("second", ids, GREEDY)) is None
    assert small.pools.allocator("kv").num_used == 8 and small.scheduler.stats().prealloc == 1
    assert small.scheduler.abort("first") and small.pools.all_free()
    # detach hands the pages to the caller, who frees them
    chunks, _ = prefill_only(prefill, "d1", ids, GREEDY)
    held = prefill.scheduler.detach("d1")
    assert sorted(held["kv"].tolist()) == sorted(np.concatenate([c.kind_pages["kv"] for c in chunks]).tolist())
    assert prefill.pools.allocator("kv").num_used == len(held["kv"])
    prefill.pools.allocator("kv").free(held["kv"])
    assert prefill.pools.all_free()
    with pytest.raises(KeyError):
        prefill.scheduler.detach("d1")
    # detach mid-prefill (a cancelled transfer): pages come back too
    prefill.scheduler.submit(Request("d2", ids, GREEDY), prefill_only=True)
    prefill.scheduler.step()
    prefill.scheduler.release("d2")
    assert prefill.pools.all_free() and not prefill.scheduler.has_work()
