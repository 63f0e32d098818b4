"""Prometheus metrics of the router (one registry per app, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "pdpair_router_requests", "HTTP requests answered", ["endpoint", "status"], registry=r
        )
        self.errors = Counter("pdpair_router_errors", "Requests answered with an error, by HTTP status", ["code"], registry=r)
        self.inflight = Gauge("pdpair_router_inflight_requests", "Generation requests in flight", registry=r)
        self.ttft = Histogram(
            "pdpair_router_ttft_seconds", "Router-side time to first token", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.itl = Histogram(
            "pdpair_router_inter_token_latency_seconds", "Gap between tokens", buckets=_ITL_BUCKETS, registry=r
        )
        self.e2e = Histogram(
            "pdpair_router_request_seconds", "Request latency to the last token", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.prompt_tokens = Counter("pdpair_router_prompt_tokens", "Prompt tokens processed", registry=r)
        self.completion_tokens = Counter("pdpair_router_completion_tokens", "Tokens generated", registry=r)
        self.remote_prefills = Counter(
            "pdpair_router_remote_prefills", "Requests whose prompt was prefilled on a prefill node", registry=r
        )
        self.transfer_bytes = Counter("pdpair_router_transfer_bytes", "Bytes moved prefill → decode", registry=r)
        self.failovers = Counter(
            "pdpair_router_failovers", "Requests retried on another pair before their first token, by the side "
            "blamed", ["side"], registry=r
        )
        self.route_choices = Counter(
            "pdpair_router_route_choices", "Nodes chosen by the cache_aware policy, by role and by what decided "
            "(prefix: the longest remembered prefix; load: least loaded)", ["role", "by"], registry=r
        )
        self.prefix_match_tokens = Counter(
            "pdpair_router_prefix_match_tokens", "Prompt tokens the cache_aware policy expected the chosen node to "
            "hold", ["role"], registry=r
        )
        self.node_healthy = Gauge(
            "pdpair_router_node_healthy", "1 when the node answers Stats and is not draining", ["role", "node"], registry=r
        )

    def observe_choice(self, role: str, by: str, matched: int) -> None:
        """The cache_aware policy chose a `role` node `by` prefix or load, expecting `matched` tokens cached."""
        self.route_choices.labels(role=role, by=by).inc()
        self.prefix_match_tokens.labels(role=role).inc(matched)

    def observe_tokens(self, gap_s: float, count: int) -> None:
        """A chunk of `count` tokens arrived `gap_s` after the previous one: `count` gaps of gap_s/count."""
        if count <= 0:
            return
        per = gap_s / count
        for _ in range(count):
            self.itl.observe(per)

    def render(self, nodes=()) -> bytes:
        self.node_healthy.clear()  # nodes that left DNS must not linger as stale series
        for node in nodes:
            self.node_healthy.labels(role=node.role, node=node.addr).set(1 if node.healthy else 0)
        return generate_latest(self.registry)
