"""Prometheus metrics of one node, on its own registry, served on --metrics-port."""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

logger = logging.getLogger(__name__)

_LATENCY = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class NodeMetrics:
    def __init__(self, role: str) -> None:
        self.registry = CollectorRegistry()
        r, lab = self.registry, {"role": role}
        self.ttft = Histogram("pdpair_ttft_seconds", "time to first token", ["role"], registry=r,
                              buckets=_LATENCY).labels(**lab)
        self.itl = Histogram("pdpair_inter_token_latency_seconds", "time between output tokens", ["role"],
                             registry=r, buckets=_LATENCY).labels(**lab)
        self.queue_depth = Gauge("pdpair_queue_depth", "requests per stage", ["role", "stage"], registry=r)
        self.pool_items = Gauge("pdpair_pool_items", "pool items by state", ["role", "kind", "state"], registry=r)
        self.transfer_bytes = Counter("pdpair_transfer_bytes", "bytes moved by the transfer engine", ["role"],
                                      registry=r).labels(**lab)
        self.transfer_batches = Counter("pdpair_transfer_batches", "transfer batches completed", ["role"],
                                        registry=r).labels(**lab)
        self.transfer_seconds = Histogram("pdpair_transfer_batch_seconds", "latency of one transfer batch",
                                          ["role"], registry=r, buckets=_LATENCY).labels(**lab)
        self.transfer_gbps = Gauge("pdpair_transfer_gbps", "throughput of the last transfer batch", ["role"],
                                   registry=r).labels(**lab)
        self.transfer_failures = Counter("pdpair_transfer_failures", "failed transfer batches", ["role"],
                                         registry=r).labels(**lab)
        self.requests = Counter("pdpair_requests", "requests admitted", ["role"], registry=r).labels(**lab)
        self.aborted = Counter("pdpair_requests_aborted", "requests aborted (cancel, failure, drain)", ["role"],
                               registry=r).labels(**lab)
        self.cache_hit_tokens = Counter("pdpair_prefix_cache_hit_tokens", "prompt tokens whose pages came from "
                                        "the prefix cache", ["role"], registry=r).labels(**lab)
        self.cache_evicted = Counter("pdpair_prefix_cache_evicted_pages", "pages evicted from the prefix cache",
                                     ["role"], registry=r).labels(**lab)
        self.cache_pages = Gauge("pdpair_prefix_cache_pages", "pages the prefix cache holds", ["role"],
                                 registry=r).labels(**lab)
        self._cache_seen = (0, 0)  # the engine's totals at the last observation (counters advance by the delta)
        self._role = role

    def serve(self, port: int | None, host: str = "0.0.0.0") -> None:
        if port is None:
            return
        start_http_server(port, addr=host, registry=self.registry)
        logger.info("metrics on %s:%d/metrics", host, port)

    def observe_batch(self, ok: bool, nbytes: int, seconds: float) -> None:
        if not ok:
            self.transfer_failures.inc()
            return
        self.transfer_bytes.inc(nbytes)
        self.transfer_batches.inc()
        self.transfer_seconds.observe(seconds)
        if seconds > 0:
            self.transfer_gbps.set(nbytes / seconds / 1e9)

    def observe_engine(self, engine: Any, quarantined: dict[str, int], stages: dict[str, int]) -> None:
        """Pool usage and stage depths; call on the engine thread."""
        cache = engine.prefix_cache
        for kind in engine.pools.kinds:
            alloc = engine.pools.allocator(kind)
            held = quarantined.get(kind, 0)
            cached = cache.num_pages if cache is not None and kind in cache.kinds else 0
            self.pool_items.labels(self._role, kind, "free").set(alloc.num_free)
            self.pool_items.labels(self._role, kind, "quarantined").set(held)
            self.pool_items.labels(self._role, kind, "cached").set(cached)
            self.pool_items.labels(self._role, kind, "used").set(alloc.num_total - alloc.num_free - held - cached)
        for stage, n in stages.items():
            self.queue_depth.labels(self._role, stage).set(n)

    def observe_cache(self, hit_tokens: int, evicted_pages: int, cached_pages: int) -> None:
        """The prefix cache's totals since start (SchedulerStats); call on the engine thread."""
        hits, evicted = self._cache_seen
        self.cache_hit_tokens.inc(max(hit_tokens - hits, 0))
        self.cache_evicted.inc(max(evicted_pages - evicted, 0))
        self.cache_pages.set(cached_pages)
        self._cache_seen = (hit_tokens, evicted_pages)
