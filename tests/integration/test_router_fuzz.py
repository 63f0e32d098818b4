"""Hypothesis fuzz of HTTP bodies against the real router (both endpoints): zero 5xx, /health still answers.

The decode node behind it converts the sampling knobs with the nodes' own `sampling_from_proto`: every
request the router lets through must be one the engine accepts (the edge validates the whole range).
"""

from __future__ import annotations

import collections
import json
import urllib.error
import urllib.request

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pdpair.node.convert import sampling_from_proto

from tests.integration._router_fixtures import MODEL_ID, FakeDecodeNode, RouterHarness, model_info

pytestmark = pytest.mark.timeout(300)
EXAMPLES = 150
VOCAB = 49152

FIELDS = ["model", "messages", "prompt", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k",
          "min_p", "seed", "stop", "stop_token_ids", "ignore_eos", "n", "stream", "stream_options", "logprobs",
          "top_logprobs", "presence_penalty", "frequency_penalty", "repetition_penalty", "logit_bias", "tools",
          "tool_choice", "functions", "function_call", "response_format", "echo", "user"]

scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=20) | st.sampled_from([0, 1, -1, 2**63, 2**64 - 1, 2**64, 1e-40, 100.5, 2.0, "text"]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
message = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", ""]) | json_values},
                                optional={"content": st.text(max_size=40) | json_values
                                          | st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image"]),
                                                                            "text": st.text(max_size=10)}), max_size=3)})
plausible = {
    "model": st.just(MODEL_ID) | json_values,
    "messages": st.lists(message, max_size=3) | json_values,
    "prompt": st.text(max_size=40) | st.lists(st.integers(-5, VOCAB + 5), max_size=8) | json_values,
    "max_tokens": st.integers(-2, 5000) | json_values,
    "logit_bias": st.dictionaries(st.integers(-3, VOCAB + 3).map(str) | st.text(max_size=4),
                                  st.floats(-150, 150) | json_values, max_size=3) | json_values,
    "seed": st.integers(-1, 2**64 + 1) | json_values,
    "stop": st.text(max_size=5) | st.lists(st.text(max_size=5), max_size=20) | json_values,
}
body_dicts = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8).flatmap(
    lambda d: st.fixed_dictionaries({k: plausible.get(k, json_values | scalars) for k in d}))
knobs = {  # ranges straddling the valid ones
    "temperature": st.floats(0, 2.5) | st.just(1e-38), "top_p": st.floats(0, 1.2), "top_k": st.integers(-2, 100),
    "min_p": st.floats(-0.1, 1.1), "presence_penalty": st.floats(-2.5, 2.5), "frequency_penalty": st.floats(-2.5, 2.5),
    "repetition_penalty": st.floats(-0.5, 3), "seed": st.integers(0, 2**64),
    "logit_bias": st.dictionaries(st.integers(0, VOCAB + 2).map(str), st.floats(-120, 120), max_size=4),
    "stop": st.lists(st.text(min_size=0, max_size=4), max_size=3), "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}), "n": st.sampled_from([1, 1, 1, 2, 0]),
    "response_format": st.sampled_from([{"type": "text"}, {"type": "json_object"}]), "ignore_eos": st.booleans(),
    "stop_token_ids": st.lists(st.integers(0, VOCAB), max_size=3), "max_tokens": st.integers(1, 8) | st.just(0),
}
near_valid = st.tuples(
    st.sampled_from([{"messages": [{"role": "user", "content": "hi"}]}, {"prompt": "Once upon"}, {"prompt": [1, 2, 3]}]),
    st.dictionaries(st.sampled_from(sorted(knobs)), st.none(), max_size=4).flatmap(
        lambda d: st.fixed_dictionaries({k: knobs[k] for k in d})),
).map(lambda t: {"model": MODEL_ID, "max_tokens": 4, **t[0], **t[1]})
PATHS = ["/v1/chat/completions", "/v1/completions"]
anything = st.one_of(
    body_dicts.map(lambda d: json.dumps({"model": MODEL_ID, **d}).encode()),
    body_dicts.map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=64),
)
requests = st.one_of(  # (path, body): near-valid bodies go to their endpoint, anything goes anywhere
    near_valid.map(lambda v: (PATHS[0] if "messages" in v else PATHS[1], json.dumps(v).encode())),
    st.tuples(st.sampled_from(PATHS), anything),
)


class CheckingDecodeNode(FakeDecodeNode):
    """Streams two tokens; a request the engine would refuse is recorded (and refused) instead."""

    rejected: list = []

    async def Generate(self, request, context):
        try:
            sampling_from_proto(request.sampling, vocab_size=VOCAB)
        except ValueError as exc:
            self.rejected.append(str(exc))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        async for chunk in super().Generate(request, context):
            yield chunk


def _post(url: str, path: str, data: bytes) -> int:
    req = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code


def test_fuzz_http_bodies():
    decode = CheckingDecodeNode(script=lambda r: ([[504], [905]], "length"), info=model_info())
    counts: collections.Counter = collections.Counter()
    with RouterHarness([decode]) as h:
        h.wait_ready()

        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(requests)
        def one(request):
            path, body = request
            status = _post(h.router_url, path, body)
            counts[(path, status)] += 1
            assert status < 500, (path, body[:300], status)

        one()
        with urllib.request.urlopen(h.router_url + "/health", timeout=10) as r:
            assert r.status == 200
    by_status = collections.Counter()
    for (_, status), n in counts.items():
        by_status[status] += n
    print(f"\nfuzz: {sum(counts.values())} bodies, by status {dict(sorted(by_status.items()))}; by endpoint "
          f"{dict(sorted(counts.items()))}; node-refused {len(decode.rejected)}")
    assert not decode.rejected, decode.rejected[:5]
    assert by_status[200] > 0 and by_status[400] > 0
