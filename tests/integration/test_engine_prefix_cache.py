"""The prefix cache in a colocated engine (embedded SmolLM2): outputs token-exact with the cache off, prefill
starting after the matched prefix, eviction under a small pool, and every page accounted for after a random mix
of hits, aborts, retractions and evictions."""

from __future__ import annotations

import numpy as np
import pytest
from _engine_runtime_fixtures import make_engine, one_thread
from pdpair.engine import Request, SamplingParams, StepEvent

pytestmark = pytest.mark.usefixtures("one_thread")
_ = one_thread
SP = SamplingParams(max_new_tokens=6, temperature=0.0, ignore_eos=True)


def _chat(eng, convs: list[list[int]], turns: int) -> list[list[list[int]]]:
    """Each turn extends every conversation by its answer plus a new user token; outputs per turn."""
    hist = [list(c) for c in convs]
    outs = []
    for turn in range(turns):
        res = eng.generate(hist, SP)
        for h, o in zip(hist, res, strict=True):
            h.extend(o.token_ids + [400 + turn])
        outs.append([o.token_ids for o in res])
        eng.check_integrity()
    return outs


@pytest.mark.timeout(120)
def test_multi_turn_and_shared_system_prompt_match_the_cache_off_outputs():
    system = list(range(1000, 1045))  # 45 tokens: 11 whole pages and a partial one
    convs = [system + [7, 8, 9], system + [11], system + [12, 13, 14, 15]]
    off = _chat(make_engine(page_size=4, max_pages=200), convs, 3)
    eng = make_engine(page_size=4, max_pages=200, prefix_cache=True)
    on = _chat(eng, convs, 3)
    assert on == off
    s = eng.scheduler.stats()
    # turn 2 and 3: every conversation finds at least its previous turn's whole pages
    assert s.cache_hit_tokens >= 2 * 3 * 44, s
    assert s.cached_pages > 0 and s.free_pages + s.cached_pages == s.total_pages


@pytest.mark.timeout(120)
def test_a_hit_prefills_only_the_tokens_after_the_matched_pages():
    eng = make_engine(page_size=4, max_pages=100, prefix_cache=True)
    prompt = list(range(2000, 2030))
    eng.generate([prompt], SP)
    extended = prompt + [5, 6, 7]
    seen = []
    run = eng.runner.run
    eng.runner.run = lambda mode, reqs, lens: (seen.append((mode.name, [r.num_cached for r in reqs], list(lens))),
                                               run(mode, reqs, lens))[1]
    out = eng.generate([extended], SP)
    first = next(s for s in seen if s[0] == "EXTEND")
    assert first[1] == [28] and first[2] == [5]  # 30 + 6 - 1 cached tokens: 7 whole pages; 5 tokens computed
    assert out[0].token_ids == make_engine(page_size=4, max_pages=100).generate([extended], SP)[0].token_ids


@pytest.mark.timeout(120)
def test_eviction_mid_run_keeps_outputs():
    """A pool too small to keep every conversation cached: later turns evict older pages and still match."""
    convs = [list(range(3000 + 40 * i, 3030 + 40 * i)) for i in range(4)]
    off = _chat(make_engine(page_size=4, max_pages=200), convs, 2)
    eng = make_engine(page_size=4, max_pages=40, prefix_cache=True)
    assert _chat(eng, convs, 2) == off
    assert eng.scheduler.stats().cache_evicted_pages > 0


@pytest.mark.timeout(300)
def test_random_hits_aborts_and_evictions_keep_every_page_accounted_for():
    rng = np.random.default_rng(1)
    eng = make_engine(page_size=4, max_pages=40, chunk_size=32, max_running_requests=8, prefix_cache=True)
    sched = eng.scheduler
    bases = [rng.integers(0, 5000, 24).tolist() for _ in range(3)]
    live: list[str] = []
    submitted = steps = 0
    while submitted < 40 or sched.has_work():
        if submitted < 40 and rng.random() < 0.5:
            ids = bases[int(rng.integers(3))][: int(rng.integers(4, 24))] + rng.integers(0, 5000, 3).tolist()
            sp = SamplingParams(max_new_tokens=int(rng.integers(1, 10)), temperature=0.0, ignore_eos=True)
            sched.submit(Request(f"r{submitted}", ids, sp), prefill_only=bool(rng.random() < 0.2))
            live.append(f"r{submitted}")
            submitted += 1
        if live and rng.random() < 0.1:
            assert sched.abort(live.pop(int(rng.integers(len(live)))))
        for ev in sched.step():
            if isinstance(ev, StepEvent) and ev.finish_reason is not None:
                live.remove(ev.rid)
            elif not isinstance(ev, StepEvent) and ev.is_last:
                sched.release(ev.rid)
                live.remove(ev.rid)
        eng.check_integrity()
        steps += 1
        assert steps < 3000, sched.stats()
    s = sched.stats()
    assert s.cache_hit_tokens > 0 and s.cache_evicted_pages > 0, s
    assert s.free_pages + s.cached_pages == s.total_pages and not live


@pytest.mark.timeout(120)
def test_prefill_only_hands_over_only_the_pages_the_destination_lacks():
    """The prefill side of a decode-side hit: the whole prompt is computed (here partly from its own cache),
    the chunk events carry pages from `peer_cached_pages` on (cached ones included), offset from 0 in the
    destination's ids."""
    eng = make_engine(page_size=4, max_pages=100, chunk_size=8, prefix_cache=True)
    ids = list(range(4000, 4030))
    eng.generate([ids[:14]], SP)  # its own cache then holds 3 whole pages of this prompt (13 computed tokens)
    req = Request("p", ids, SamplingParams(max_new_tokens=1, temperature=0.0), peer_cached_pages=1)
    eng.scheduler.submit(req, prefill_only=True)
    events = []
    while not events or not events[-1].is_last:
        events += [e for e in eng.scheduler.step() if not isinstance(e, StepEvent)]
    held = req.items["kv"].copy()
    assert req.shared_pages == 3
    sent = np.concatenate([e.kind_pages["kv"] for e in events])
    starts = [e.kind_starts["kv"] for e in events if len(e.kind_pages["kv"])]
    # pages 1..7 of the 30-token prompt's 8: pages 1-2 read from the prefix cache, the rest computed
    assert sent.tolist() == held[1:].tolist() and set(held[1:3].tolist()) <= set(events[0].kind_pages["kv"].tolist())
    assert starts[0] == 0 and events[-1].first_token is not None
    eng.scheduler.release("p")
    eng.check_integrity()


@pytest.mark.timeout(120)
def test_a_decode_destination_borrows_the_cached_prefix_and_quarantine_never_takes_it():
    """preallocate registers only the pages after the cached prefix; detaching (the quarantine path of a failed
    transfer) hands over only those, while the borrowed pages stay cached and unreferenced."""
    eng = make_engine(page_size=4, max_pages=60, prefix_cache=True)
    ids = list(range(5000, 5022))
    out = eng.generate([ids], SP)[0].token_ids  # 22 + 6 - 1 computed tokens: 6 whole pages cached
    cached = set(eng.prefix_cache.items()["kv"].tolist())
    sched = eng.scheduler
    req = Request("d", ids + out + [1, 2, 3, 4], SP)  # 32 tokens: 8 pages, the first 6 cached
    dst = sched.preallocate(req)
    assert req.shared_pages == 6 and len(dst["kv"]) == 2 and not set(dst["kv"].tolist()) & cached
    assert eng.prefix_cache.num_evictable == 0  # borrowed: locked against eviction
    held = sched.detach("d")
    assert held["kv"].tolist() == dst["kv"].tolist()
    eng.check_integrity({"kv": [held["kv"]]})
    assert set(eng.prefix_cache.items()["kv"].tolist()) == cached and eng.prefix_cache.num_evictable == 6
    eng.pools.allocator("kv").free(held["kv"])
    with pytest.raises(AssertionError, match="held twice|held but free|in use"):
        eng.check_integrity({"kv": [held["kv"]]})  # the check notices a holder that no longer holds
    eng.check_integrity()
