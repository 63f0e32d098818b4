"""deploy/k8s policies, read the way the cluster reads them: who may connect to which pod port
(NetworkPolicy ingress semantics), disruption budgets, and topology spread, for every overlay.
"""

from __future__ import annotations

import pytest

from tests.unit._deploy_fixtures import OVERLAYS, by_kind, container, pod_spec, render

ROUTER, PREFILL, DECODE = "pdpair-router", "prefill-node", "decode-node"
STRANGER = {"app.kubernetes.io/name": "something-else"}
SCRAPER_NS = {"pdpair.io/scrape-metrics": "true"}


def _matches(selector: dict | None, labels: dict) -> bool:
    """A LabelSelector; only matchLabels and matchExpressions with In are used in deploy/."""
    if selector is None:
        return False
    ok = selector.get("matchLabels", {}).items() <= labels.items()
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In", expr
        ok = ok and labels.get(expr["key"]) in expr["values"]
    return ok


def _port_matches(rule_ports: list[dict] | None, port: int, named: dict[str, int]) -> bool:
    if not rule_ports:
        return True
    for p in rule_ports:
        lo = named.get(p["port"], p["port"]) if isinstance(p["port"], str) else p["port"]
        if p.get("protocol", "TCP") == "TCP" and lo <= port <= p.get("endPort", lo):
            return True
    return False


def _peer_matches(peer: dict, src: dict, src_ns: dict) -> bool:
    """A peer with only podSelector means this namespace (ours is unlabelled); with namespaceSelector, those."""
    if "ipBlock" in peer:
        return False
    ns_ok = _matches(peer["namespaceSelector"], src_ns) if "namespaceSelector" in peer else src_ns == {}
    pod_ok = _matches(peer["podSelector"], src) if "podSelector" in peer else True
    return ns_ok and pod_ok


def allowed(docs: list[dict], src: dict, dst: str, port: int, src_ns: dict | None = None) -> bool:
    """May a pod labelled `src` (in a namespace labelled `src_ns`; None: ours) open `port` on `dst`'s pods?"""
    dep = by_kind(docs, "Deployment")[dst]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    named = {p["name"]: p["containerPort"] for p in container(dep)["ports"]}
    policies = [p for p in by_kind(docs, "NetworkPolicy").values()
                if _matches(p["spec"]["podSelector"], labels) and "Ingress" in p["spec"]["policyTypes"]]
    if not policies:
        return True  # a pod no policy selects is not isolated
    return any(_port_matches(rule.get("ports"), port, named)
               and (not rule.get("from") or any(_peer_matches(peer, src, src_ns or {}) for peer in rule["from"]))
               for pol in policies for rule in pol["spec"].get("ingress", []))


def _labels(docs: list[dict], name: str) -> dict:
    return by_kind(docs, "Deployment")[name]["spec"]["template"]["metadata"]["labels"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy_lets_each_link_through_and_nothing_else(overlay):
    docs = render(overlay)
    config = by_kind(docs, "ConfigMap")["pdpair-config"]["data"]
    lo, hi = int(config["MC_MIN_RPC_PORT"]), int(config["MC_MAX_RPC_PORT"])
    router, prefill, decode = (_labels(docs, n) for n in (ROUTER, PREFILL, DECODE))
    pods = {"router": router, "prefill": prefill, "decode": decode, "stranger": STRANGER}

    def who(dst: str, port: int) -> set[str]:
        return {name for name, src in pods.items() if allowed(docs, src, dst, port)}

    assert who(ROUTER, 8000) == set(pods), "the router is the exposed service"
    assert who(ROUTER, 9100) == set()
    # decode pods pull prefills; the router health-polls prefill nodes (Stats, ModelInfo) on the same port
    assert who(PREFILL, 50051) == {"decode", "router"}
    assert who(DECODE, 50051) == {"router"}
    for port in (lo, hi):
        assert who(DECODE, port) == {"prefill"}, "only prefill pods write KV into decode pools"
        assert who(PREFILL, port) == set()
    assert who(DECODE, hi + 1) == set() and who(DECODE, lo - 1) == set()
    for node in (PREFILL, DECODE):
        assert who(node, 9100) == set()
        assert allowed(docs, SCRAPER_NS, node, 9100, src_ns=SCRAPER_NS), "Prometheus in a labelled namespace"
        assert not allowed(docs, SCRAPER_NS, node, 50051, src_ns=SCRAPER_NS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_role_has_a_disruption_budget_and_spreads_over_hosts(overlay):
    docs = render(overlay)
    pdbs = by_kind(docs, "PodDisruptionBudget")
    for name, dep in by_kind(docs, "Deployment").items():
        labels = dep["spec"]["template"]["metadata"]["labels"]
        (pdb,) = [p for p in pdbs.values() if _matches(p["spec"]["selector"], labels)]
        replicas = dep["spec"].get("replicas", 1)
        spec = pdb["spec"]
        assert spec.get("maxUnavailable") == 1 or 0 < spec.get("minAvailable", 0) < replicas, f"{name}: {spec}"
        spread = pod_spec(dep)["topologySpreadConstraints"]
        hosts = [t for t in spread if t["topologyKey"] == "kubernetes.io/hostname"]
        assert hosts and all(_matches(t["labelSelector"], labels) and t["maxSkew"] == 1 for t in hosts), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pdpair_pod_is_isolated_by_a_policy(overlay):
    docs = render(overlay)
    policies = by_kind(docs, "NetworkPolicy").values()
    for name in (ROUTER, PREFILL, DECODE):
        labels = _labels(docs, name)
        assert any(_matches(p["spec"]["podSelector"], labels) for p in policies), f"{name} is not isolated"
