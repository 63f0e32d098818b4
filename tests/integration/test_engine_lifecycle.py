"""Engine-side lifecycle on the real SmolLM2: a poison request fails alone in its batch; preallocated
requests count against the admission reserve; activating landed remote prefills never makes the decode
batch retract requests."""

from __future__ import annotations

import pytest
from pdpair.engine import Request, SamplingParams
from pdpair.engine.faults import Faults
from pdpair.engine.scheduler.isolate import Isolator

from tests.integration._engine_runtime_fixtures import make_engine, one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

POISON = 3


def _run(eng, reqs: list[Request]) -> dict[str, tuple[list[int], str]]:
    out = {r.rid: ([], None) for r in reqs}
    for r in reqs:
        eng.scheduler.submit(r)
    while eng.scheduler.has_work():
        for ev in eng.scheduler.step():
            toks, _ = out[ev.rid]
            out[ev.rid] = (toks + list(ev.new_token_ids), ev.finish_reason)
    return out


def _reqs(prompts, n=8) -> list[Request]:
    return [Request(f"r{i}", p, SamplingParams(max_new_tokens=n, temperature=0.0)) for i, p in enumerate(prompts)]


def test_a_poison_request_fails_alone_in_its_batch():
    prompts = [[1000 + 7 * i + j for j in range(20 + 5 * i)] for i in range(5)]
    reference = _run(make_engine(), _reqs(prompts))
    eng = make_engine()
    eng.scheduler.isolator = Isolator(POISON)
    poisoned = prompts[:2] + [[POISON, *prompts[2]]] + prompts[3:]
    out = _run(eng, _reqs(poisoned))
    assert out["r2"] == ([], "error")
    for rid in ("r0", "r1", "r3", "r4"):
        assert out[rid] == reference[rid]
    assert eng.scheduler.isolator.failed_requests == 1
    eng.pools.check_integrity()
    assert all(eng.pools.allocator(k).num_free == eng.pools.allocator(k).num_total for k in eng.pools.kinds)


def test_faults_are_off_by_default(monkeypatch):
    monkeypatch.delenv("PDPAIR_FAULT_POISON_TOKEN", raising=False)
    monkeypatch.delenv("PDPAIR_FAULT_STEP_ERROR", raising=False)
    assert Faults.from_env() == Faults()
    monkeypatch.setenv("PDPAIR_FAULT_POISON_TOKEN", "9")
    assert Faults.from_env().poison_token == 9


def test_preallocated_requests_count_against_the_reserve():
    """A pool of 20 pages; three preallocated 3-page prompts leave 11 free. A local 10-page prompt needs 10 +
    a reserve of one page per resident request: with the preallocated ones counted (3) it must wait."""
    eng = make_engine(page_size=16, max_pages=20)
    sched = eng.scheduler
    for i in range(3):
        assert sched.preallocate(Request(f"p{i}", [1000 + i] * 40, SamplingParams(max_new_tokens=4))) is not None
    sched.submit(Request("local", [2000] * 160, SamplingParams(max_new_tokens=4)))
    sched.step()
    assert sched.stats().waiting == 1 and sched.stats().prefilling == 0
    for i in range(3):
        sched.abort(f"p{i}")
    sched.step()
    assert sched.stats().waiting == 0
    while sched.has_work():
        sched.step()
    eng.pools.check_integrity()


def test_activation_waits_for_headroom_instead_of_evicting():
    """A landed remote prefill joins the decode batch only while the pool keeps a page of headroom per
    running request; until then it waits (its first token too) rather than forcing a retraction."""
    eng = make_engine(page_size=4, max_pages=40)
    sched, kv = eng.scheduler, eng.pools.allocator(eng.pools.kinds[0])
    remote = Request("remote", [3000] * 12, SamplingParams(max_new_tokens=3, temperature=0.0, ignore_eos=True))
    assert sched.preallocate(remote) is not None
    for i in range(2):
        sched.submit(Request(f"run{i}", [1000 + i] * 6, SamplingParams(max_new_tokens=30, temperature=0.0,
                                                                        ignore_eos=True)))
    while len(sched.decode) < 2:
        sched.step()
    hog = kv.alloc(kv.num_free - 2)  # two free pages for two running requests: no headroom for a third
    sched.activate("remote", 1234)
    for _ in range(2):
        assert all(ev.rid != "remote" for ev in sched.step())
        assert "remote" not in {r.rid for r in sched.decode.reqs}
    kv.free(hog)
    events = [ev for _ in range(2) for ev in sched.step() if ev.rid == "remote"]
    assert events and events[0].new_token_ids[0] == 1234
    while sched.has_work():
        sched.step()
    eng.pools.check_integrity()
