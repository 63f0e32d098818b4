"""Observability over real daemons (prefill, decode, router on loopback): every metric the Grafana dashboard's
expressions name is exported by a daemon's /metrics, and `--log-format json` writes JSON lines whose request id
follows one request through the router, the decode node and the prefill node.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from pdpair.router.local_cluster import LocalCluster
from prometheus_client.parser import text_string_to_metric_families

from tests._ports import free_port
from tests.e2e._nodes import DEFAULT_ARGS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "pdpair.json"
METRIC = re.compile(r"\bpdpair_[a-z0-9_]+\b")
HEX_ID = re.compile(r"\b[0-9a-f]{32}\b")
LOG_ARGS = ["--log-format", "json", "--log-level", "DEBUG"]


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())


def _exported(url: str) -> set[str]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


@pytest.fixture(scope="module")
def served():
    """A cluster that answered two chat requests and one bad one; yields (cluster, the two request ids)."""
    c = LocalCluster(prefill=1, decode=1, node_args=[*DEFAULT_ARGS, *LOG_ARGS], router_args=LOG_ARGS,
                     env={"OMP_NUM_THREADS": "1"}, ports=free_port)
    with c:
        rids = set()
        for text in ("Name a colour.", "Count to three and then a little further, slowly, please. " * 6):
            out = _post(c.router_url + "/v1/chat/completions", {
                "model": "smollm2-135m", "messages": [{"role": "user", "content": text}], "max_tokens": 4,
                "temperature": 0})
            assert out["choices"][0]["message"]["content"] is not None
            rids.add(out["id"].removeprefix("chatcmpl-"))  # the response id names the request id
        with pytest.raises(urllib.error.HTTPError) as err:  # an error, so that the error counters have series
            _post(c.router_url + "/v1/chat/completions", {"model": "smollm2-135m", "messages": []})
        assert err.value.code == 400
        yield c, rids


def _panels_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] if p["type"] != "row" for t in p["targets"]]
    assert all(p["datasource"]["uid"] == "${DS_PROMETHEUS}" for p in dash["panels"] if p["type"] != "row")
    assert any(v["name"] == "DS_PROMETHEUS" for v in dash["templating"]["list"])
    return exprs


def test_every_dashboard_metric_is_exported_by_a_daemon(served):
    cluster, _ = served
    exported = set().union(*(_exported(url) for url in cluster.metrics_urls.values()))
    exprs = _panels_exprs()
    used = {m for e in exprs for m in METRIC.findall(e)}
    missing = sorted(used - exported)
    assert not missing, f"dashboard names metrics no daemon exports: {missing}"
    # what an operator needs is on the board
    joined = "\n".join(exprs)
    for needle in ("pdpair_router_ttft_seconds_bucket", "pdpair_router_inter_token_latency_seconds_bucket",
                   "pdpair_queue_depth", "by (role, kind) (pdpair_pool_items", "rate(pdpair_transfer_bytes_total",
                   "pdpair_transfer_failures_total", "pdpair_requests_aborted_total"):
        assert needle in joined, needle
    assert sum("histogram_quantile(0.99" in e for e in exprs) >= 2  # TTFT and ITL tails


def _json_lines(path: Path) -> list[dict]:
    """The daemon's JSON log lines; lines from native libraries (Mooncake's glog) are not ours and skipped."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))  # a malformed JSON line fails here
        else:
            assert "pdpair." not in line, f"a pdpair line that is not JSON: {line}"
    return out


def test_json_logs_carry_one_request_id_across_the_three_daemons(served):
    cluster, rids = served
    assert len(rids) == 2 and all(HEX_ID.fullmatch(r) for r in rids)
    logs = {name: _json_lines(d.log_path) for name, d in cluster.daemons.items()}
    assert set(logs) == {"prefill-0", "decode-0", "router"}
    for name, lines in logs.items():
        assert lines and all({"ts", "level", "logger", "msg"} <= set(line) for line in lines), name
        for line in lines:  # a line that names one of the requests is bound to that request
            named = set(HEX_ID.findall(line["msg"])) & rids
            assert not named or named == {line.get("rid")}, f"{name}: {line}"
        tagged = {line["rid"] for line in lines if "rid" in line}
        if name == "router":  # the bad request got an id too, but no job
            assert rids <= tagged and len(tagged - rids) <= 1, tagged
        else:  # each node logs under the router's request ids only, and at least once
            assert tagged and tagged <= rids, f"{name}: {tagged}"
    prefilled = [line for line in logs["prefill-0"] if line["logger"] == "pdpair.prefill_node.servicer"]
    assert {line.get("rid") for line in prefilled} == rids, "each prefill logs under its request's id"
