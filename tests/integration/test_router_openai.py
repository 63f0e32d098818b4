"""The real router HTTP server and the official openai client against fake decode/prefill nodes.

The fake nodes stream scripted token ids of the real SmolLM2 tokenizer; the expected texts and prompt ids come
from transformers' tokenizer built from the same GGUF, independently of the router's code.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import grpc
import pytest

from tests.integration._router_fixtures import (
    MODEL_ID,
    FakeDecodeNode,
    FakePrefillNode,
    RouterHarness,
    hf_tokenizer,
    model_info,
)

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.timeout(120)

ANSWER = "Paris is the capital of France. Voilà 🙂 — 東京 too."
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def _answer_script(text: str = ANSWER, per_chunk: int = 1, finish: str = "stop", eos: bool = True):
    ids = hf_tokenizer().encode(text, add_special_tokens=False)
    if eos:
        ids = ids + [hf_tokenizer().eos_token_id]

    def script(request):
        return [ids[i : i + per_chunk] for i in range(0, len(ids), per_chunk)], finish

    return script, ids


@pytest.fixture(scope="module")
def cluster():
    script, _ = _answer_script()
    decode = FakeDecodeNode(script=script, info=model_info())
    with RouterHarness([decode], [FakePrefillNode()]) as h:
        h.wait_ready()
        yield h


def _client(h: RouterHarness):
    return openai.OpenAI(base_url=h.router_url + "/v1", api_key="x", max_retries=0, timeout=30)


def test_chat_non_stream_text_usage_and_prompt_ids(cluster):
    resp = _client(cluster).chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=64, seed=7)
    _, ids = _answer_script()
    expected_prompt = hf_tokenizer().apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True)
    if isinstance(expected_prompt, dict) or hasattr(expected_prompt, "input_ids"):
        expected_prompt = expected_prompt["input_ids"]
    sent = cluster.decode[0].requests[-1]
    assert list(sent.token_ids) == list(expected_prompt)
    assert sent.prefill_addr == cluster.prefill_addrs[0]
    assert sent.sampling.max_new_tokens == 64 and sent.sampling.seed == 7
    assert resp.choices[0].message.content == ANSWER
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.prompt_tokens == len(expected_prompt)
    assert resp.usage.completion_tokens == len(ids)
    assert resp.usage.total_tokens == len(expected_prompt) + len(ids)
    ext = resp.model_extra["pdpair"]
    assert ext["prefilled_remotely"] is True and ext["prefill_node"] == cluster.prefill_addrs[0]
    assert ext["transfer"]["bytes"] == 3_000_000 and ext["transfer"]["gbps"] == pytest.approx(3.0)


@pytest.mark.parametrize(
    "messages",
    [
        MESSAGES,
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 🙂"},
         {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Name a river in 東京."}],
    ],
)
def test_router_chat_encoding_matches_transformers(messages):
    from pdpair.router.tokenizer import RouterTokenizer

    expected = hf_tokenizer().apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if not isinstance(expected, list):
        expected = expected["input_ids"]
    assert RouterTokenizer.from_model_info(model_info()).encode_chat(messages) == list(expected)


def test_chat_stream_deltas_concatenate_to_the_answer(cluster):
    stream = _client(cluster).chat.completions.create(
        model=MODEL_ID, messages=MESSAGES, max_tokens=64, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ANSWER
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == "stop"
    assert finals[0].model_extra["pdpair"]["ttft_s"] == pytest.approx(0.125)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(_answer_script()[1])


def test_completions_stream_and_non_stream(cluster):
    client = _client(cluster)
    prompt = "The capital of France is"
    resp = client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=32)
    assert list(cluster.decode[0].requests[-1].token_ids) == hf_tokenizer().encode(prompt)
    assert resp.choices[0].text == ANSWER and resp.object == "text_completion"
    assert resp.usage.prompt_tokens == len(hf_tokenizer().encode(prompt))
    parts = list(client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=32, stream=True))
    assert "".join(p.choices[0].text for p in parts if p.choices) == ANSWER
    assert parts[-1].choices[0].finish_reason == "stop"


def test_models_health_metrics(cluster):
    assert [m.id for m in _client(cluster).models.list().data] == [MODEL_ID]
    with urllib.request.urlopen(cluster.router_url + "/health") as r:
        assert r.status == 200 and json.loads(r.read())["status"] == "ok"
    with urllib.request.urlopen(cluster.router_url + "/metrics") as r:
        body = r.read().decode()
    assert 'pdpair_router_requests_total{endpoint="/v1/chat/completions",status="200"}' in body
    assert "pdpair_router_ttft_seconds_bucket" in body and "pdpair_router_inflight_requests" in body


@pytest.mark.parametrize(
    "body, param",
    [
        ({"model": MODEL_ID, "messages": MESSAGES, "max_tokens": -3}, "max_tokens"),
        ({"model": MODEL_ID, "messages": MESSAGES, "temperature": "hot"}, "temperature"),
        ({"model": MODEL_ID, "messages": "hello"}, "messages"),
        ({"model": "gpt-4o", "messages": MESSAGES}, "model"),
        ({"model": MODEL_ID, "messages": MESSAGES, "n": 2}, "n"),
        ({"model": MODEL_ID, "messages": [{"role": "user", "content": "word " * 3000}]}, "messages"),
        ({"model": MODEL_ID, "messages": MESSAGES, "max_tokens": 100_000}, "max_tokens"),
    ],
)
def test_bad_requests_are_400_with_openai_error_body(cluster, body, param):
    n_before = len(cluster.decode[0].requests)
    with pytest.raises(openai.BadRequestError) as info:
        _client(cluster).post("/chat/completions", body=body, cast_to=object)
    err = info.value.response.json()["error"]
    assert info.value.status_code == 400 and err["param"] == param
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert len(cluster.decode[0].requests) == n_before  # nothing reached a node


def test_invalid_json_is_400(cluster):
    req = urllib.request.Request(cluster.router_url + "/v1/completions", data=b"{not json",
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req)
    assert info.value.code == 400 and json.loads(info.value.read())["error"]["code"] == "invalid_json"


def test_stop_string_is_trimmed():
    script, _ = _answer_script("The answer is 42. END of story", eos=False)
    decode = FakeDecodeNode(script=script, info=model_info())
    with RouterHarness([decode]) as h:
        h.wait_ready()
        client = _client(h)
        resp = client.completions.create(model=MODEL_ID, prompt="Q:", max_tokens=32, stop=["END", "zzz"])
        assert resp.choices[0].text == "The answer is 42. " and resp.choices[0].finish_reason == "stop"
        assert list(decode.requests[-1].sampling.stop) == ["END", "zzz"]
        assert decode.requests[-1].prefill_addr == ""  # colocated: no prefill node configured
        parts = list(client.completions.create(model=MODEL_ID, prompt="Q:", max_tokens=32, stop="END", stream=True))
        assert "".join(p.choices[0].text for p in parts if p.choices) == "The answer is 42. "


@pytest.mark.parametrize(
    "code, status",
    [(grpc.StatusCode.INVALID_ARGUMENT, 400), (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
     (grpc.StatusCode.DEADLINE_EXCEEDED, 504), (grpc.StatusCode.INTERNAL, 500)],
)
def test_node_status_codes_map_to_http(code, status):
    script, _ = _answer_script()
    decode = FakeDecodeNode(script=script, info=model_info(),
                            abort_with=(code, "scripted failure at prefill node 10.1.2.3:50051"))
    with RouterHarness([decode]) as h:
        h.wait_ready()
        for stream in (False, True):
            with pytest.raises(openai.APIStatusError) as info:
                r = _client(h).chat.completions.create(model=MODEL_ID, messages=MESSAGES, stream=stream)
                list(r) if stream else None
            assert info.value.status_code == status
            message = info.value.response.json()["error"]["message"]
            assert "10.1.2.3" not in message and "50051" not in message and h.decode_addrs[0] not in message
            # the request's own fault keeps its explanation; node failures say only what happened
            assert ("scripted failure" in message) == (status == 400)


def test_no_healthy_pair_is_503():
    script, _ = _answer_script()
    decode = FakeDecodeNode(script=script, info=model_info())
    prefill = FakePrefillNode()
    with RouterHarness([decode], [prefill]) as h:
        h.wait_ready()
        decode.stats_down = True
        with pytest.raises(openai.APIStatusError) as info:
            for _ in range(100):  # until the next Stats poll (every 0.1 s) has taken the node out
                _client(h).chat.completions.create(model=MODEL_ID, messages=MESSAGES)
        assert info.value.status_code == 503
        assert info.value.response.json()["error"]["code"] == "no_healthy_pair"
        with pytest.raises(urllib.error.HTTPError) as health:
            urllib.request.urlopen(h.router_url + "/health")
        assert health.value.code == 503
        decode.stats_down = False
        h.wait_ready()
        assert _client(h).chat.completions.create(model=MODEL_ID, messages=MESSAGES).choices[0].message.content


def test_client_disconnect_cancels_the_generate_call():
    script, _ = _answer_script("word " * 400, eos=False)
    decode = FakeDecodeNode(script=script, info=model_info(), chunk_delay_s=0.02)
    with RouterHarness([decode], [FakePrefillNode()]) as h:
        h.wait_ready()
        stream = _client(h).chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=1000, stream=True)
        for i, _chunk in enumerate(stream):
            if i == 3:
                break
        stream.close()
        assert decode.cancelled.wait(10), "the fake decode node never saw the cancellation"
        assert not decode.finished.is_set()
        from pdpair.router.state import STATE

        pool = h.app[STATE].pool
        for _ in range(200):  # the handler's cleanup runs right after the cancellation
            if pool.decode[0].inflight == 0 and pool.prefill[0].inflight == 0:
                break
            time.sleep(0.01)
        assert (pool.decode[0].inflight, pool.prefill[0].inflight) == (0, 0)
