"""Request validation at the HTTP edge: msgspec decoding and job building → 400 with an OpenAI error body."""

from __future__ import annotations

import json

import pytest
from pdpair.router.errors import ApiError, http_status_for
from pdpair.router.job import build_job
from pdpair.router.protocol import ChatCompletionRequest, CompletionRequest, decode_request
from pdpair.router.tokenizer import ModelCard, RouterTokenizer

from tests.unit._router_fixtures import byte_bpe

CARD = ModelCard(model_id="tiny", context_length=64, vocab_size=400, eos_token_ids=(0,), page_size=16)
TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}" \
           "{% if add_generation_prompt %}<assistant>{% endif %}"
MSG = [{"role": "user", "content": "hello"}]


def _tok() -> RouterTokenizer:
    return RouterTokenizer(byte_bpe(), TEMPLATE, "<s>", "<|endoftext|>")


def _chat(**fields) -> bytes:
    return json.dumps({"model": "tiny", "messages": MSG, **fields}).encode()


def _err(fn) -> dict:
    with pytest.raises(ApiError) as info:
        fn()
    body = json.loads(info.value.to_json())["error"]
    assert info.value.status == 400 and set(body) == {"message", "type", "param", "code"}
    assert body["type"] == "invalid_request_error"
    return body


@pytest.mark.parametrize(
    "body, param",
    [
        (_chat(max_tokens=-1), "max_tokens"),
        (_chat(max_tokens=0), "max_tokens"),
        (_chat(max_tokens="ten"), "max_tokens"),
        (_chat(temperature=3.5), "temperature"),
        (_chat(top_p=0), "top_p"),
        (_chat(seed=-1), "seed"),
        (_chat(stop=[1, 2]), "stop[0]"),
        (_chat(stop=""), "stop"),
        (_chat(n=3), "n"),
        (_chat(logprobs=True), "logprobs"),
        (_chat(messages=[]), "messages"),
        (_chat(messages=[{"content": "no role"}]), "messages[0]"),
        (json.dumps({"messages": MSG}).encode(), None),  # model missing
    ],
)
def test_invalid_chat_bodies(body, param):
    err = _err(lambda: decode_request(body, ChatCompletionRequest))
    assert err["param"] == param, err


def test_invalid_json_and_non_object():
    assert _err(lambda: decode_request(b"{oops", ChatCompletionRequest))["code"] == "invalid_json"
    _err(lambda: decode_request(b"[1, 2]", ChatCompletionRequest))


@pytest.mark.parametrize("prompt", ["", [], ["a", "b"], [1, "a"], [-5]])
def test_invalid_prompts(prompt):
    _err(lambda: decode_request(json.dumps({"model": "tiny", "prompt": prompt}).encode(), CompletionRequest))


def test_unknown_model_and_context_limits():
    tok = _tok()
    other = decode_request(_chat(model="other"), ChatCompletionRequest)
    assert _err(lambda: build_job(other, tok, CARD))["param"] == "model"
    long = json.dumps({"model": "tiny", "prompt": "word " * 200}).encode()
    assert _err(lambda: build_job(decode_request(long, CompletionRequest), tok, CARD))["code"] == \
        "context_length_exceeded"
    big = json.dumps({"model": "tiny", "prompt": "hi", "max_tokens": 64}).encode()
    assert _err(lambda: build_job(decode_request(big, CompletionRequest), tok, CARD))["param"] == "max_tokens"
    ids = json.dumps({"model": "tiny", "prompt": [1, 400]}).encode()
    assert _err(lambda: build_job(decode_request(ids, CompletionRequest), tok, CARD))["param"] == "prompt"


def test_job_from_chat_request():
    tok = _tok()
    req = decode_request(_chat(max_tokens=8, temperature=0, seed=3, stop="x", top_k=5, stream=True,
                               stream_options={"include_usage": True}), ChatCompletionRequest)
    job = build_job(req, tok, CARD)
    assert job.prompt_ids == byte_bpe().encode("<user>hello\n<assistant>", add_special_tokens=False).ids
    s = job.sampling
    assert (s.max_new_tokens, s.temperature, s.top_k, s.seed, list(s.stop)) == (8, 0.0, 5, 3, ["x"])
    assert job.stops == ("x",) and job.stream and job.include_usage and job.response_id.startswith("chatcmpl-")


def test_job_defaults():
    tok = _tok()
    chat = build_job(decode_request(_chat(), ChatCompletionRequest), tok, CARD)
    assert chat.sampling.max_new_tokens == CARD.context_length - len(chat.prompt_ids)  # the room left
    assert chat.sampling.temperature == 1.0 and chat.sampling.top_p == 1.0 and not chat.sampling.HasField("seed")
    comp = build_job(decode_request(b'{"model": "tiny", "prompt": [5, 6, 7]}', CompletionRequest), tok, CARD)
    assert comp.prompt_ids == [5, 6, 7] and comp.sampling.max_new_tokens == 16  # the OpenAI default


def test_content_parts_and_null_fields():
    req = decode_request(
        _chat(messages=[{"role": "user", "content": [{"type": "text", "text": "he"}, {"type": "text", "text": "llo"}]}],
              temperature=None, top_p=None, stop=None),
        ChatCompletionRequest,
    )
    assert req.messages[0].text() == "hello"
    assert build_job(req, _tok(), CARD).prompt_ids == build_job(
        decode_request(_chat(), ChatCompletionRequest), _tok(), CARD).prompt_ids


def test_grpc_status_mapping():
    import grpc

    assert http_status_for(grpc.StatusCode.INVALID_ARGUMENT) == 400
    assert http_status_for(grpc.StatusCode.RESOURCE_EXHAUSTED) == 429
    assert http_status_for(grpc.StatusCode.UNAVAILABLE) == 503
    assert http_status_for(grpc.StatusCode.DEADLINE_EXCEEDED) == 504
    assert http_status_for(grpc.StatusCode.ABORTED) == 500 and http_status_for(grpc.StatusCode.INTERNAL) == 500
