"""Router hygiene over real HTTP: body limit, parse errors, unsupported fields, penalties on the wire, a
responsive event loop while a huge prompt is tokenized, timeouts, and a supervised startup."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from tests.integration._router_fixtures import (
    MODEL_ID,
    FakeDecodeNode,
    RouterHarness,
    fast_tokenizer,
    free_port,
    model_info,
)

pytestmark = pytest.mark.timeout(180)
CHAT = {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def _script(request):
    return [[504], [905]], "length"


def _post(url: str, body: bytes | dict, timeout: float = 60) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def router():
    decode = FakeDecodeNode(script=_script, info=model_info(context_length=8192))
    with RouterHarness([decode]) as h:
        h.wait_ready()
        yield h, decode


def test_body_limit_is_413_in_openai_shape(router):
    h, _ = router
    status, body = _post(h.router_url + "/v1/completions", b'{"prompt": "' + b"x" * (4 * 2**20 + 10) + b'"}')
    assert status == 413 and "larger than the limit" in body["error"]["message"]


@pytest.mark.parametrize("body", [
    b'{"model": "m", "messages": ' + b"[" * 1000 + b"]" * 1000 + b"}",
    b'{"model": "m", "prompt": "x", "extra": ' + b'{"a":' * 1000 + b"1" + b"}" * 1000 + b"}",
    b'{"model": "m", "prompt": "x", "tools": ' + b"[" * 3000 + b"]" * 3000 + b"}",
    b"\xff\xfe", b"", b"[]", b'{"model": 1e999}',
])
def test_every_parse_error_is_a_400(router, body):
    h, _ = router
    for path in ("/v1/completions", "/v1/chat/completions"):
        status, out = _post(h.router_url + path, body)
        assert status == 400, (path, out)


@pytest.mark.parametrize("field, value", [
    ("tools", [{"type": "function", "function": {"name": "f"}}]), ("tool_choice", "auto"),
    ("functions", [{"name": "f"}]), ("function_call", "auto"), ("response_format", {"type": "json_object"}),
    ("n", 2), ("logprobs", True), ("top_logprobs", 3), ("presence_penalty", 2.5), ("frequency_penalty", -3),
    ("repetition_penalty", 0), ("logit_bias", {"7": 101}), ("logit_bias", {"abc": 1}),
    ("logit_bias", {"49152": 1}), ("seed", 2**64),
])
def test_unsupported_or_out_of_range_fields_are_400_naming_the_field(router, field, value):
    h, _ = router
    status, out = _post(h.router_url + "/v1/chat/completions", {**CHAT, field: value})
    assert status == 400 and out["error"]["param"] == field, out


def test_penalties_bias_and_u64_seed_reach_the_node(router):
    h, decode = router
    body = {**CHAT, "presence_penalty": 0.5, "frequency_penalty": -1.25, "repetition_penalty": 1.1,
            "logit_bias": {"7": -100, "42": 3.5}, "seed": 2**64 - 1, "response_format": {"type": "text"},
            "tools": [], "logprobs": False}
    status, _ = _post(h.router_url + "/v1/chat/completions", body)
    assert status == 200
    sp = decode.requests[-1].sampling
    assert (sp.presence_penalty, sp.frequency_penalty) == (0.5, -1.25) and sp.repetition_penalty == pytest.approx(1.1)
    assert dict(sp.logit_bias) == {7: -100.0, 42: 3.5} and sp.seed == 2**64 - 1


def test_health_answers_while_a_huge_prompt_is_tokenized(router):
    h, _ = router
    prompt = "the quick brown fox, jumps over 12345 lazy dogs! " * 80_000  # 4 MB: seconds of tokenizing
    done = threading.Event()
    result = {}

    def big():
        result["status"] = _post(h.router_url + "/v1/completions", {"model": MODEL_ID, "prompt": prompt})[0]
        done.set()

    threading.Thread(target=big, daemon=True).start()
    time.sleep(0.1)
    gaps = []
    while not done.is_set():
        t0 = time.monotonic()
        with urllib.request.urlopen(h.router_url + "/health", timeout=30) as r:
            assert r.status == 200
        gaps.append(time.monotonic() - t0)
        time.sleep(0.05)
    assert result["status"] == 400  # longer than the context, known only once tokenized
    assert len(gaps) >= 3, f"the prompt was tokenized too fast to tell ({len(gaps)} probes)"
    assert max(gaps) < 1.0, f"/health stalled {max(gaps):.2f} s while a prompt was tokenized"


def test_request_timeout_default_and_504():
    from pdpair.router.config import RouterConfig
    from pdpair.router.main import build_parser

    assert RouterConfig(decode=("h:1",)).request_timeout_s == 300.0
    args = build_parser().parse_args(["--decode", "h:1"])
    assert args.request_timeout == 300.0 and args.max_body_bytes == 4 * 2**20
    decode = FakeDecodeNode(script=_script, info=model_info(), chunk_delay_s=5.0)
    with RouterHarness([decode], request_timeout_s=0.5) as h:
        h.wait_ready()
        t0 = time.monotonic()
        status, out = _post(h.router_url + "/v1/chat/completions", CHAT)
        assert status == 504 and time.monotonic() - t0 < 4 and "127.0.0.1" not in out["error"]["message"]


def test_generation_tag_template_serves_and_broken_template_exits_nonzero():
    info = model_info()
    info.chat_template = ("{% for m in messages %}<{{ m.role }}>{% generation %}{{ m | tojson(separators=(',', ':')) }}"
                          "{% endgeneration %}{% endfor %}")
    decode = FakeDecodeNode(script=_script, info=info)
    with RouterHarness([decode]) as h:
        h.wait_ready()
        assert _post(h.router_url + "/v1/chat/completions", CHAT)[0] == 200
        text = '<user>{"role":"user","content":"hi"}'
        assert list(decode.requests[-1].token_ids) == fast_tokenizer().encode(text, add_special_tokens=False).ids

    info.chat_template = "{% for m in messages %}"  # does not compile
    broken = FakeDecodeNode(script=_script, info=info)
    with RouterHarness([broken]) as h:
        proc = subprocess.run([sys.executable, "-m", "pdpair.router.main", "--decode", h.decode_addrs[0],
                               "--host", "127.0.0.1", "--port", str(free_port())],
                              capture_output=True, text=True, timeout=60)
        from pdpair.router.state import STATE

        deadline = time.monotonic() + 10  # the in-process router's startup task failed too
        while h.app[STATE].fatal is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert h.app[STATE].fatal is not None
    assert proc.returncode == 1 and "router startup failed" in proc.stderr, proc.stderr[-2000:]


class _SlowEndDecodeNode(FakeDecodeNode):
    """Like a real node, it still has work to do after the finish chunk (a cancel there counts as aborted)."""

    async def Generate(self, request, context):
        async for chunk in super().Generate(request, context):
            yield chunk
        try:
            await asyncio.sleep(0.1)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


def test_counters_under_concurrency_and_finished_calls_are_not_cancelled():
    from concurrent.futures import ThreadPoolExecutor

    n = 12
    decode = _SlowEndDecodeNode(script=_script, info=model_info(), chunk_delay_s=0.02)
    with RouterHarness([decode]) as h:
        h.wait_ready()
        with ThreadPoolExecutor(n) as pool:
            statuses = list(pool.map(lambda _: _post(h.router_url + "/v1/chat/completions", CHAT)[0], range(n)))
        assert statuses == [200] * n
        time.sleep(0.2)
        assert not decode.cancelled.is_set()  # a node counts a cancelled call as aborted
        with urllib.request.urlopen(h.router_url + "/metrics", timeout=10) as r:
            text = r.read().decode()
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    assert values['pdpair_router_requests_total{endpoint="/v1/chat/completions",status="200"}'] == n
    assert values["pdpair_router_completion_tokens_total"] == 2 * n
    assert values["pdpair_router_inflight_requests"] == 0
    errors = {k: v for k, v in values.items() if k.startswith("pdpair_router_errors_total")}
    startup = values.get('pdpair_router_requests_total{endpoint="/health",status="503"}', 0)
    assert errors == ({'pdpair_router_errors_total{code="503"}': startup} if startup else {})  # /health before ready
