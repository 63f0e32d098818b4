"""Penalties, logit_bias, u64 seeds and tiny temperatures through the real engine (embedded SmolLM2)."""

import pytest
from _engine_runtime_fixtures import make_engine, one_thread  # noqa: F401
from pdpair.engine import SamplingParams

pytestmark = pytest.mark.usefixtures("one_thread")
N = 24


@pytest.fixture(scope="module")
def eng():
    return make_engine(max_pages=64)


def _gen(eng, prompt, **kw):
    return eng.generate([prompt], SamplingParams(max_new_tokens=N, ignore_eos=True, **kw))[0].token_ids


def test_penalties_change_generation(eng):
    prompt = eng.tokenizer.encode("one one one one one one one one one one one one")
    plain = _gen(eng, prompt, temperature=0)
    assert len(set(plain)) < N // 2  # the model repeats itself
    penalised = _gen(eng, prompt, temperature=0, frequency_penalty=2.0, presence_penalty=2.0)
    assert len(set(penalised)) > 2 * len(set(plain))
    repeated = _gen(eng, prompt, temperature=0, repetition_penalty=2.0)
    assert not set(repeated[:4]) & set(prompt)  # the prompt's tokens are pushed down at once
    forced = eng.tokenizer.encode(" banana")[0]
    assert _gen(eng, prompt, temperature=0, logit_bias={forced: 100.0}) == [forced] * N
    with pytest.raises(ValueError, match="logit_bias"):
        _gen(eng, prompt, logit_bias={eng.runner.vocab_size: 1.0})


def test_max_u64_seed_generates_deterministically(eng):
    prompt = eng.tokenizer.encode("Once upon a time")
    sp = SamplingParams(max_new_tokens=N, temperature=1.0, seed=2**64 - 1, ignore_eos=True)
    first = eng.generate([prompt, prompt], [sp, sp])
    again = eng.generate([prompt], sp)
    assert first[0].token_ids == first[1].token_ids == again[0].token_ids
    assert len(first[0].token_ids) == N


def test_tiny_temperature_is_greedy(eng):
    prompt = eng.tokenizer.encode("The capital of France is")
    assert _gen(eng, prompt, temperature=1e-37, seed=3) == _gen(eng, prompt, temperature=0)
