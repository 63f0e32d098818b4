"""After many random requests (aborted, stopped early, retracted under page pressure) every page is free."""

from __future__ import annotations

import numpy as np
import pytest
from _engine_runtime_fixtures import make_engine, one_thread
from pdpair.engine import Request, SamplingParams, StepEvent

pytestmark = pytest.mark.usefixtures("one_thread")
_ = one_thread


@pytest.mark.timeout(300)
def test_hundred_random_requests_leave_every_page_free():
    rng = np.random.default_rng(0)
    # a small pool so admission waits and decode retracts
    eng = make_engine(page_size=4, max_pages=28, chunk_size=32, max_running_requests=12)
    sched = eng.scheduler
    vocab = eng.model_config.vocab_size
    submitted, finished, aborted = 0, {}, set()
    live: list[str] = []
    steps = 0
    while submitted < 100 or sched.has_work():
        for _ in range(int(rng.integers(0, 4))):
            if submitted == 100:
                break
            n = int(rng.integers(1, 30))
            kind = rng.random()
            sp = SamplingParams(
                max_new_tokens=int(rng.integers(1, 16)),
                temperature=float(rng.choice([0.0, 0.8])), seed=int(rng.integers(1000)),
                stop_token_ids=tuple(int(t) for t in rng.integers(0, vocab, 50)) if kind < 0.2 else (),
                ignore_eos=bool(kind > 0.5))
            rid = f"r{submitted}"
            sched.submit(Request(rid, rng.integers(0, vocab, n).tolist(), sp),
                         prefill_only=bool(0.9 < kind))
            live.append(rid)
            submitted += 1
        if live and rng.random() < 0.15:  # abort at a random stage
            rid = live.pop(int(rng.integers(len(live))))
            assert sched.abort(rid)
            aborted.add(rid)
        for ev in sched.step():
            if isinstance(ev, StepEvent) and ev.finish_reason is not None:
                finished[ev.rid] = ev.finish_reason
                live.remove(ev.rid)
            elif not isinstance(ev, StepEvent) and ev.is_last:
                sched.release(ev.rid)  # a prefill node hands pages over, then frees them
                finished[ev.rid] = "prefilled"
                live.remove(ev.rid)
        eng.pools.check_integrity()
        steps += 1
        assert steps < 2000, f"no progress: {sched.stats()}"
    assert len(finished) + len(aborted) == 100 and not live
    assert set(finished.values()) <= {"stop", "length", "prefilled"}
    assert eng.pools.all_free(), sched.stats()
    assert eng.req_to_token.num_free == eng.req_to_token.num_total
    eng.pools.check_integrity()


@pytest.mark.timeout(300)
def test_retraction_under_page_pressure_keeps_outputs():
    """When decode runs out of pages the newest requests are retracted and later re-prefilled over
    prompt + generated tokens: the output is the same as with a roomy pool."""
    ps = [list(range(100 + i, 110 + i)) for i in range(4)]
    sp = SamplingParams(max_new_tokens=14, temperature=0.0, ignore_eos=True)
    roomy = make_engine(page_size=4, max_pages=64).generate(ps, sp)
    tight = make_engine(page_size=4, max_pages=14)  # 4 x 6 pages needed at the end, 14 available
    retracted = []
    orig = tight.scheduler._retract
    tight.scheduler._retract = lambda req, events: (retracted.append(req.rid), orig(req, events))
    outs = tight.generate(ps, sp)
    assert retracted, "the pool was large enough: nothing exercised retraction"
    assert [o.token_ids for o in outs] == [o.token_ids for o in roomy]
    assert tight.pools.all_free()
    tight.pools.check_integrity()
