"""A dead prefill node behind a real router: concurrent requests fail over before their first token, the
dead node is ejected, nothing reaches the client as a 5xx (real daemons, router at its default health poll)."""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from pdpair.router.local_cluster import LocalCluster

from tests._ports import free_port
from tests.e2e._nodes import DEFAULT_ARGS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
N = 16
MODEL = "smollm2-135m"


def _post(url: str, i: int) -> int:
    body = {"model": MODEL, "prompt": f"Request {i}: the quick brown fox jumps over the lazy dog. " * 6,
            "max_tokens": 4, "temperature": 0}
    req = urllib.request.Request(url + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _health(url: str) -> dict:
    try:
        with urllib.request.urlopen(url + "/health", timeout=10) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


def _metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_dead_prefill_node_behind_the_router():
    never_started = f"127.0.0.1:{free_port()}"
    # --health-interval 1.0 restores the router's default poll (LocalCluster polls faster)
    with LocalCluster(prefill=2, decode=1, node_args=list(DEFAULT_ARGS), env={"OMP_NUM_THREADS": "1"},
                      ports=free_port, router_args=["--health-interval", "1.0", "--prefill", never_started]) as c:
        url = c.router_url
        with ThreadPoolExecutor(N) as pool:
            assert set(pool.map(lambda i: _post(url, i), range(4))) == {200}  # warm: both live pairs used
            c.daemons["prefill-1"].proc.send_signal(signal.SIGKILL)
            c.daemons["prefill-1"].proc.wait(30)
            statuses = list(pool.map(lambda i: _post(url, i), range(N)))
        counts = {s: statuses.count(s) for s in set(statuses)}
        print(f"\nstatuses after killing prefill-1: {counts}; failovers "
              f"{_metric(url, 'pdpair_router_failovers_total')}")
        assert counts == {200: N}, counts
        nodes = _health(url)["nodes"]
        assert nodes[f"prefill {c.prefill_addrs[1]}"] != "ok" and nodes[f"prefill {never_started}"] != "ok"
        assert nodes[f"prefill {c.prefill_addrs[0]}"] == "ok" and nodes[f"decode {c.decode_addrs[0]}"] == "ok"
