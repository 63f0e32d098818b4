"""Stop conditions and bad input through the public API; bad input never disturbs requests in flight."""

from __future__ import annotations

import dataclasses

import pytest
from _engine_runtime_fixtures import make_engine, one_thread, prompts, run_until_done
from pdpair.engine import Request, SamplingParams

pytestmark = pytest.mark.usefixtures("one_thread")
_ = one_thread

GREEDY = SamplingParams(max_new_tokens=8, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def eng():
    return make_engine(max_pages=128)


@pytest.mark.timeout(300)
def test_stop_conditions(eng):
    p = prompts(eng)[0]  # chat-templated question: the model answers and ends its turn
    free = eng.generate([p], SamplingParams(max_new_tokens=64, temperature=0.0))[0]
    assert free.finish_reason == "stop" and free.token_ids[-1] in eng.tokenizer.eos_token_ids
    ignored = eng.generate([p], SamplingParams(max_new_tokens=len(free.token_ids) + 2, temperature=0.0,
                                               ignore_eos=True))[0]
    assert ignored.finish_reason == "length" and ignored.token_ids[: len(free.token_ids)] == free.token_ids
    third = free.token_ids[2]
    by_id = eng.generate([p], SamplingParams(max_new_tokens=64, temperature=0.0, stop_token_ids=(third,)))[0]
    assert by_id.token_ids == free.token_ids[:3] and by_id.finish_reason == "stop"
    text = eng.tokenizer.decode(free.token_ids[:-1])
    needle = text.strip().split()[1]  # the second word of the answer
    by_str = eng.generate([p], SamplingParams(max_new_tokens=64, temperature=0.0, stop=(needle,)))[0]
    assert by_str.finish_reason == "stop" and needle in eng.tokenizer.decode(by_str.token_ids)
    assert needle not in eng.tokenizer.decode(by_str.token_ids[:-1])
    assert eng.generate([p], SamplingParams(max_new_tokens=1, temperature=0.0))[0].finish_reason == "length"
    assert eng.pools.all_free()


def _bad_inputs(eng):
    vocab, ctx = eng.model_config.vocab_size, eng.model_config.context_length
    return [
        ([], GREEDY, "empty prompt"),
        ([1] * (ctx + 1), GREEDY, "longer than the model context"),
        ([1, vocab, 2], GREEDY, "outside the vocabulary"),
        ([1, -1], GREEDY, "outside the vocabulary"),
    ]


@pytest.mark.timeout(300)
def test_bad_input_raises_and_leaves_others_alone(eng):
    ps = prompts(eng)
    expected = [o.token_ids for o in eng.generate(ps[1:3], GREEDY)]
    sched = eng.scheduler
    sched.submit(Request("a", ps[1], GREEDY))
    sched.submit(Request("b", ps[2], GREEDY))
    first = {ev.rid: ev.new_token_ids for ev in sched.step()}
    for ids, sp, msg in _bad_inputs(eng):
        with pytest.raises(ValueError, match=msg):
            sched.submit(Request("bad", ids, sp))
        with pytest.raises(ValueError, match=msg):
            eng.generate([ps[0], ids], sp)  # checked before anything is queued
        with pytest.raises(ValueError, match=msg):
            sched.preallocate(Request("bad", ids, sp))
    for kwargs in (dict(max_new_tokens=0), dict(max_new_tokens=-1), dict(temperature=-0.5)):
        with pytest.raises(ValueError):
            SamplingParams(**kwargs)
    with pytest.raises(ValueError, match="already in flight"):
        sched.submit(Request("a", ps[0], GREEDY))
    with pytest.raises(ValueError, match="sampling params"):
        eng.generate([ps[0], ps[1]], [GREEDY])
    assert not sched.abort("never-submitted")
    with pytest.raises(KeyError):
        sched.activate("a", 1)  # not a preallocated request
    toks, reasons, _ = run_until_done(eng, {"a", "b"})
    assert first.get("a", []) + toks["a"] == expected[0]
    assert first.get("b", []) + toks["b"] == expected[1]
    assert eng.pools.all_free() and not sched.has_work()
    eng.pools.check_integrity()


@pytest.mark.timeout(120)
def test_activate_rejects_bad_first_token(eng):
    sched = eng.scheduler
    assert sched.preallocate(Request("p", prompts(eng)[1], GREEDY)) is not None
    with pytest.raises(ValueError, match="outside the vocabulary"):
        sched.activate("p", eng.model_config.vocab_size)
    assert sched.abort("p") and eng.pools.all_free()


def test_engine_surface(eng):
    cfg = eng.config
    assert cfg.device == "cpu" and cfg.dtype == "float32" and cfg.attention_backend == "torch"
    assert eng.model_id == "smollm2-135m" and eng.pools.kinds == ("kv",)
    assert eng.model_config.num_layers == 30
    other = make_engine(max_pages=64)
    assert other.fingerprint == eng.fingerprint
    assert make_engine(max_pages=64, page_size=8).fingerprint != eng.fingerprint
    (region,) = eng.pools.regions()
    assert region.num_items == cfg.max_pages and region.item_bytes * region.num_items == eng.pools.kv.buffer.nbytes
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.page_size = 1  # frozen
