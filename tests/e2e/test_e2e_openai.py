"""The official openai client against pdpair-router over real prefill and decode daemons: chat and
completions, streaming and not; the disaggregated router answers exactly like a colocated one."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

import pytest
from pdpair.router.local_cluster import LocalCluster, _http_ok

from tests._ports import free_port
from tests.e2e._nodes import DEFAULT_ARGS

openai = pytest.importorskip("openai")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

MODEL = "smollm2-135m"
MESSAGES = [{"role": "user", "content": "Name three colours of the rainbow."}]
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster(prefill=1, decode=1, node_args=list(DEFAULT_ARGS), env={"OMP_NUM_THREADS": "1"},
                     ports=free_port)
    with c:
        colocated = _start_router(c.decode_addrs[0], c.log_dir)
        try:
            yield c, colocated[1]
        finally:
            colocated[0].terminate()
            colocated[0].wait(30)
    assert all(code == 0 for code in c.exit_codes.values()), c.exit_codes


def _start_router(decode_addr: str, log_dir) -> tuple[subprocess.Popen, str]:
    """A second router over the same decode node without a prefill node: colocated serving."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log_dir / "router-colocated.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "pdpair.router.main", "--host", "127.0.0.1", "--port",
                                 str(port), "--decode", decode_addr], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not _http_ok(url + "/health"):
        assert proc.poll() is None and time.monotonic() < deadline, "colocated router did not start"
        time.sleep(0.2)
    return proc, url


def _client(url: str):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)


def test_chat_stream_and_non_stream(cluster):
    c, _ = cluster
    client = _client(c.router_url)
    full = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16, temperature=0)
    text = full.choices[0].message.content
    assert text and full.choices[0].finish_reason in ("stop", "length")
    assert full.usage.prompt_tokens > 0 and 0 < full.usage.completion_tokens <= 16
    assert full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16, temperature=0,
                                            stream=True)
    parts, finish = [], None
    for event in stream:
        if event.choices:
            parts.append(event.choices[0].delta.content or "")
            finish = event.choices[0].finish_reason or finish
    assert "".join(parts) == text
    assert finish == full.choices[0].finish_reason


def test_completions_stream_and_non_stream(cluster):
    c, _ = cluster
    client = _client(c.router_url)
    full = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0)
    text = full.choices[0].text
    assert text and full.usage.completion_tokens <= 12
    parts = [e.choices[0].text for e in client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0, stream=True) if e.choices]
    assert "".join(parts) == text


@pytest.mark.parametrize("kind", ["chat", "completions"])
def test_disaggregated_router_equals_colocated_router(cluster, kind):
    c, colocated_url = cluster
    answers = []
    for url in (c.router_url, colocated_url):
        client = _client(url)
        if kind == "chat":
            r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=20, temperature=0.8,
                                               seed=7)
            answers.append(r.choices[0].message.content)
        else:
            r = client.completions.create(model=MODEL, prompt=PROMPT * 20, max_tokens=20, temperature=0)
            answers.append(r.choices[0].text)
    assert answers[0] == answers[1]


def test_node_metrics_count_the_requests(cluster):
    c, _ = cluster
    _client(c.router_url).completions.create(model=MODEL, prompt=PROMPT * 10, max_tokens=4, temperature=0)
    urls = c.metrics_urls
    decode = urllib.request.urlopen(urls["decode-0"], timeout=10).read().decode()
    prefill = urllib.request.urlopen(urls["prefill-0"], timeout=10).read().decode()
    assert _value(decode, "pdpair_ttft_seconds_count") >= 1
    assert _value(decode, "pdpair_inter_token_latency_seconds_count") >= 1
    assert _value(prefill, "pdpair_transfer_bytes_total") > 0
    assert _value(prefill, "pdpair_transfer_batches_total") >= 1
    assert 'pdpair_pool_items{kind="kv",role="decode",state="free"}' in decode
    # every request of this module finished: none may count as aborted (the router reads calls to their end)
    assert "pdpair_requests_aborted_total{" not in decode or _value(decode, "pdpair_requests_aborted_total") == 0


def _value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the metrics:\n{text[:2000]}")


def test_penalties_logit_bias_and_u64_seed_over_real_nodes(cluster):
    """The knobs reach both nodes (the prefill node samples the first token): disaggregated == colocated."""
    c, colocated_url = cluster
    knobs = {"presence_penalty": 0.5, "frequency_penalty": 1.0, "repetition_penalty": 1.5,
             "logit_bias": {"30": -100}, "seed": 2**64 - 1}
    prompt = "one one one one one one one one"
    answers = [
        _client(url).completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0.9,
                                        extra_body=knobs).choices[0].text
        for url in (c.router_url, colocated_url, c.router_url)
    ]
    assert answers[0] == answers[1] == answers[2] and answers[0]
    plain = _client(c.router_url).completions.create(model=MODEL, prompt=prompt, max_tokens=12,
                                                     temperature=0).choices[0].text
    penalised = _client(c.router_url).completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0,
                                                         frequency_penalty=2.0).choices[0].text
    assert penalised != plain  # greedy output changes only through the penalty
