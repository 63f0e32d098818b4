"""The embedded SmolLM2 GGUF against Hugging Face transformers loading the same file.

(a) teacher-forced logits through our model with a dense attention backend;
(b) greedy generation through the public `Engine` API, token-exact against `generate`.
"""

from __future__ import annotations

import inspect
import textwrap

import pytest
import torch
from _engine_model_fixtures import GGUF_NAME, dense_logits, embedded_dir, engine_importable

pytestmark = pytest.mark.timeout(600)

NEW_TOKENS = 32


@pytest.fixture(scope="module")
def hf_model():
    transformers = pytest.importorskip("transformers", reason="transformers is a test dependency: pip install -e .[test]")
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(embedded_dir()), gguf_file=GGUF_NAME, dtype=torch.float32
    )
    return model.eval()


@pytest.fixture(scope="module")
def ours():
    from pdpair.engine.loader import load_model

    return load_model("smollm2-135m", device="cpu", dtype=torch.float32)


def _prompts(tok) -> dict[str, list[int]]:
    chat = lambda text: tok.apply_chat_template([{"role": "user", "content": text}])  # noqa: E731
    long_code = tok.encode(inspect.getsource(textwrap))[:1536]
    return {
        "chat_capital": chat("What is the capital of France? Answer in one sentence."),
        "chat_system": tok.apply_chat_template(
            [{"role": "system", "content": "You are a terse assistant."}, {"role": "user", "content": "List three colors."}]
        ),
        "chat_multiturn": tok.apply_chat_template(
            [
                {"role": "user", "content": "Hi! Can you help me with math?"},
                {"role": "assistant", "content": "Of course. What do you need?"},
                {"role": "user", "content": "What is 12 times 7?"},
            ]
        ),
        "plain_story": tok.encode("Once upon a time, in a small village by the sea, there lived"),
        "code": tok.encode("def fibonacci(n: int) -> int:\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"),
        "french": tok.encode("La tour Eiffel est un monument de Paris construit en"),
        "chinese": tok.encode("人工智能是计算机科学的一个分支，它"),
        "chat_german": chat("Erkläre kurz, was ein Regenbogen ist."),
        "long_code": long_code,
    }


def test_prompt_set_is_varied(ours):
    prompts = _prompts(ours.tokenizer)
    assert len(prompts) >= 8
    assert len(prompts["long_code"]) > 1500, len(prompts["long_code"])


def test_teacher_forced_logits_match_hf(hf_model, ours):
    prompts = _prompts(ours.tokenizer)
    names = ["chat_capital", "plain_story", "code", "chinese", "chat_multiturn"]
    seqs = [prompts[n] for n in names]
    # all sequences in one flat batch: also checks that requests do not leak into each other
    got = dense_logits(ours.model, seqs)
    for name, seq, logits in zip(names, seqs, got, strict=True):
        with torch.inference_mode():
            ref = hf_model(torch.tensor([seq])).logits[0].float()
        assert logits.shape == ref.shape, (name, logits.shape, ref.shape)
        scale = ref.abs().max().item()
        err = (logits - ref).abs().max().item()
        assert err < 1e-3 * scale, f"{name}: max |diff| {err:.3g} vs logits scale {scale:.3g}"
        agree = (logits.argmax(-1) == ref.argmax(-1)).float().mean().item()
        assert agree > 0.99, f"{name}: argmax agrees on only {agree:.1%} of positions"


def _first_diff(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


@pytest.mark.slow
def test_greedy_generation_matches_hf(hf_model, ours):
    reason = engine_importable()
    if reason:
        pytest.skip(reason)
    from pdpair.engine import Engine, SamplingParams

    eng = Engine.from_model("smollm2-135m", device="cpu", dtype="float32", max_pages=256)
    prompts = _prompts(eng.tokenizer)
    names = list(prompts)
    # all prompts in one batch; EOS ignored so every prompt yields NEW_TOKENS tokens to compare
    outs = eng.generate(
        [prompts[n] for n in names], SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
    )
    # HF keeps going past <|im_end|> when its stop id is one the model never picks (the last vocab entry)
    never = eng.model_config.vocab_size - 1
    for name, out in zip(names, outs, strict=True):
        with torch.inference_mode():
            ref = hf_model.generate(
                torch.tensor([prompts[name]]), max_new_tokens=NEW_TOKENS, do_sample=False,
                eos_token_id=never, pad_token_id=never,
            )[0, len(prompts[name]) :].tolist()
        assert len(ref) == NEW_TOKENS and never not in ref, (name, len(ref))
        assert list(out.token_ids) == ref, (
            f"{name}: first difference at token {_first_diff(list(out.token_ids), ref)}"
            f"\n ours: {eng.tokenizer.decode(out.token_ids)!r}\n   hf: {eng.tokenizer.decode(ref)!r}"
        )


def test_bare_gguf_path_loads_the_same_model(ours):
    from pdpair.engine.loader import load_model
    from pdpair.engine.loader.gguf import embedded_gguf_path

    path = embedded_gguf_path()
    lm = load_model(str(path))
    assert lm.model_id == path.stem
    assert lm.config == ours.config
    assert lm.weights_digest == ours.weights_digest
