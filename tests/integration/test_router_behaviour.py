"""Router behaviour around the nodes: startup before ModelInfo, pairing across nodes, mid-stream failures."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import grpc
import pytest
from pdpair.router import sse

from tests.integration._router_fixtures import (
    MODEL_ID,
    FakeDecodeNode,
    FakePrefillNode,
    RouterHarness,
    fast_tokenizer,
    model_info,
    smollm2_assets,
)

pytestmark = pytest.mark.timeout(120)


def _script(ids=(504, 905, 314, 253), finish="length"):
    return lambda request: ([[i] for i in ids], finish)


def _post(url: str, body: dict) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


BODY = {"model": MODEL_ID, "prompt": "Hello", "max_tokens": 4}


def test_not_ready_until_a_node_answers_model_info():
    smollm2_assets()
    decode = FakeDecodeNode(script=_script(), info=model_info(), info_ready=threading.Event())
    with RouterHarness([decode]) as h:
        status, body = _post(h.router_url + "/v1/completions", BODY)
        assert status == 503 and json.loads(body)["error"]["code"] == "not_ready"
        assert _get(h.router_url + "/health") == 503 and _get(h.router_url + "/v1/models") == 503
        decode.info_ready.set()  # the router retries ModelInfo until it answers
        h.wait_ready()
        status, body = _post(h.router_url + "/v1/completions", BODY)
        assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 4


def test_round_robin_spreads_requests_over_pairs():
    decodes = [FakeDecodeNode(script=_script(), info=model_info()) for _ in range(2)]
    prefills = [FakePrefillNode() for _ in range(3)]
    with RouterHarness(decodes, prefills) as h:
        h.wait_ready()
        for _ in range(6):
            assert _post(h.router_url + "/v1/completions", BODY)[0] == 200
        assert [len(d.requests) for d in decodes] == [3, 3]
        used = [r.prefill_addr for d in decodes for r in d.requests]
        assert sorted(used) == sorted(h.prefill_addrs * 2)


def test_least_loaded_avoids_the_busy_node():
    decodes = [FakeDecodeNode(script=_script(), info=model_info()) for _ in range(2)]
    decodes[0].stats.running = 40  # reported by Stats: node 0 is busy
    with RouterHarness(decodes, policy="least_loaded") as h:
        h.wait_ready()
        for _ in range(4):
            assert _post(h.router_url + "/v1/completions", BODY)[0] == 200
        assert [len(d.requests) for d in decodes] == [0, 4]


def test_failure_after_the_first_token_is_reported_in_band():
    decode = FakeDecodeNode(script=_script(), info=model_info(), fail_after=2)
    with RouterHarness([decode]) as h:
        h.wait_ready()
        status, raw = _post(h.router_url + "/v1/completions", {**BODY, "stream": True})
        events = sse.parse_events(raw)
        assert status == 200 and events[-1] == b"[DONE]"
        err = json.loads(events[-2])["error"]
        assert "request id" in err["message"] and err["type"] == "server_error"
        status, raw = _post(h.router_url + "/v1/completions", BODY)  # non-stream: a plain 500
        assert status == 500 and "error" in json.loads(raw)


def test_unavailable_from_a_node_is_503_and_triggers_a_health_recheck():
    decode = FakeDecodeNode(script=_script(), info=model_info(),
                            abort_with=(grpc.StatusCode.UNAVAILABLE, "overloaded"))
    with RouterHarness([decode], poll_interval_s=30.0) as h:
        h.wait_ready()
        status, body = _post(h.router_url + "/v1/completions", BODY)
        assert status == 503 and "request id" in json.loads(body)["error"]["message"]
        decode.abort_with = None
        h.wait_ready()  # the failure triggered an immediate re-poll, which found the node answering
        assert _post(h.router_url + "/v1/completions", BODY)[0] == 200


def test_router_ends_at_a_stop_string_even_if_the_node_runs_on():
    ids = fast_tokenizer().encode("Roses are red. STOP" + " and on" * 200, add_special_tokens=False).ids
    decode = FakeDecodeNode(script=lambda r: ([[i] for i in ids], "length"), info=model_info(), chunk_delay_s=0.01)
    with RouterHarness([decode]) as h:
        h.wait_ready()
        status, raw = _post(h.router_url + "/v1/completions", {**BODY, "max_tokens": 500, "stop": ["STOP"]})
        body = json.loads(raw)
        assert status == 200 and body["choices"][0]["text"] == "Roses are red. "
        assert body["choices"][0]["finish_reason"] == "stop"
        assert decode.cancelled.wait(10) and not decode.finished.is_set()
