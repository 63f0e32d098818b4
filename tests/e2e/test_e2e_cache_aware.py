"""`--policy cache_aware` through the real router over two real decode nodes (embedded SmolLM2, colocated):
a conversation's later turns go back to the node that served its first turn, even while that node is the busier
one, and an unrelated prompt goes to the other, idle node. Where each request ran is read from the
`pdpair` response extension and confirmed by the nodes' own Stats counters."""

from __future__ import annotations

import json
import time
import urllib.request

import grpc
import pytest
from pdpair.proto import pdpair_pb2 as pb
from pdpair.proto import pdpair_pb2_grpc as pb_grpc
from pdpair.router.local_cluster import LocalCluster

from tests._ports import free_port
from tests.e2e._nodes import DEFAULT_ARGS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def _words(topic: str, n: int) -> str:
    return " ".join(f"{topic} fact {i} is worth remembering." for i in range(n))


def _chat(url: str, messages: list[dict], max_tokens: int = 4, stream: bool = False, **extra):
    body = json.dumps({"model": "smollm2-135m", "messages": messages, "max_tokens": max_tokens,
                       "temperature": 0, "stream": stream, **extra}).encode()
    req = urllib.request.Request(url + "/v1/chat/completions", body, {"Content-Type": "application/json"})
    resp = urllib.request.urlopen(req, timeout=120)
    return resp if stream else json.loads(resp.read())


def _stats(addr: str) -> pb.NodeStats:
    with grpc.insecure_channel(addr) as channel:
        return pb_grpc.DecodeNodeStub(channel).Stats(pb.StatsRequest(), timeout=10)


def _metric(url: str, name: str) -> float:
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def _busy(s: pb.NodeStats) -> int:
    return s.waiting + s.prefilling + s.running


def test_follow_up_turn_returns_to_its_node_and_a_new_prompt_goes_elsewhere(tmp_path):
    cluster = LocalCluster(prefill=0, decode=2, node_args=list(DEFAULT_ARGS), router_args=["--policy", "cache_aware"],
                           log_dir=tmp_path, env={"OMP_NUM_THREADS": "1"}, ports=free_port)
    with cluster as c:
        convo = [{"role": "system", "content": "You answer questions about gardens. " + _words("garden", 12)},
                 {"role": "user", "content": "Which flower should I plant first?"}]
        first = _chat(c.router_url, convo)
        home = first["pdpair"]["decode_node"]
        other = next(a for a in c.decode_addrs if a != home)
        time.sleep(1.0)  # the router's Stats polls (every 0.25 s) see both nodes idle again

        # a long generation in the same conversation (routed by its prefix, so to `home` whatever the tie-breaks
        # between two idle nodes) keeps `home` the busier node
        reply = {"role": "assistant", "content": first["choices"][0]["message"]["content"]}
        busy = _chat(c.router_url, convo + [reply, {"role": "user", "content": "Tell me a long story about it."}],
                     max_tokens=2000, stream=True, ignore_eos=True)
        try:
            assert busy.readline().startswith(b"data:")
            assert _busy(_stats(home)) == 1 and _busy(_stats(other)) == 0, "the long generation is not on home"
            time.sleep(0.6)  # the router has polled the load

            follow_up = convo + [reply, {"role": "user", "content": "And which one second?"}]
            second = _chat(c.router_url, follow_up)
            unrelated = _chat(c.router_url, [
                {"role": "system", "content": "You answer questions about boats. " + _words("boat", 12)},
                {"role": "user", "content": "How do sails work?"}])
            assert _busy(_stats(home)) == 1, "the long generation ended before the checks ran"
        finally:
            busy.close()
        assert second["pdpair"]["decode_node"] == home  # the prefix's node, though it is the busier one
        assert unrelated["pdpair"]["decode_node"] == other  # no match: the least loaded node
        assert [_stats(a).requests_total for a in (home, other)] == [3, 1]
        by_prefix = _metric(c.router_url, 'pdpair_router_route_choices_total{by="prefix",role="decode"}')
        by_load = _metric(c.router_url, 'pdpair_router_route_choices_total{by="load",role="decode"}')
        assert (by_prefix, by_load) == (2, 2)  # the two later turns by prefix; the first and the unrelated by load
        assert _metric(c.router_url, "pdpair_router_prefix_match_tokens_total") >= 40  # the whole first turn
