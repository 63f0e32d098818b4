"""deploy/k8s: every overlay renders with `kubectl kustomize`, every rendered object is valid against the pinned
Kubernetes OpenAPI schemas (kubernetes-validate, offline, strict), and the Deployments match the daemons.

The container args are expanded with the ConfigMap values (as the kubelet does with `$(VAR)`) and parsed by the
daemons' own argparse parsers and config builders, so a renamed flag or an invalid value fails here.
"""

from __future__ import annotations

import functools
import importlib
import tempfile
from collections import Counter
from pathlib import Path

import pytest

from tests.unit._deploy_fixtures import (
    DAEMONS,
    K8S,
    KUBERNETES_VERSION,
    OVERLAYS,
    by_kind,
    container,
    expanded_args,
    flag,
    pod_spec,
    render,
    yaml,
)

TLS_FLAGS = ("--tls-cert", "--tls-key", "--tls-ca")
TLS_MOUNT = "/etc/pdpair/tls"  # where components/tls mounts the Secret
IMAGE_UID = 10001  # deploy/Dockerfile's user (test_deploy_image checks it there)
EXPECTED_KINDS = {"ConfigMap": 1, "Deployment": 3, "Service": 3, "NetworkPolicy": 3, "PodDisruptionBudget": 3}


def _module(command: str):
    return importlib.import_module(DAEMONS[command])


def _parse(command: str, args: list[str]):
    return _module(command).build_parser().parse_args(args)  # SystemExit on an unknown flag or a bad value


@functools.cache
def _secret_dir() -> str:
    """Stands in for the mounted Secret: the config builders check that the three PEM files exist."""
    d = Path(tempfile.mkdtemp(prefix="pdpair-tls-"))
    for name in ("tls.crt", "tls.key", "ca.crt"):
        (d / name).write_text("")
    return str(d)


def _parsed(docs: list[dict]) -> dict:
    """Deployment name -> (the daemon's config object, the container's expanded args)."""
    config = by_kind(docs, "ConfigMap")["pdpair-config"]["data"]
    out = {}
    for name, dep in by_kind(docs, "Deployment").items():
        command = container(dep)["command"][0]
        args = expanded_args(dep, config)
        ns = _parse(command, [a.replace(TLS_MOUNT, _secret_dir()) for a in args])
        if command == "pdpair-router":
            out[name] = (_module(command).config_from_args(ns), args)
        else:
            role = command.split("-")[0]
            out[name] = (importlib.import_module("pdpair.node.config").config_from_args(role, ns), args)
    return out


def test_every_yaml_file_parses():
    files = sorted(K8S.rglob("*.yaml"))
    assert len(files) >= 15
    for path in files:
        assert [d for d in yaml.safe_load_all(path.read_text()) if d], f"{path} is empty"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_objects_are_valid_against_the_kubernetes_schemas(overlay):
    kv = pytest.importorskip("kubernetes_validate")
    docs = render(overlay)
    for doc in docs:
        try:
            kv.validate(doc, KUBERNETES_VERSION, strict=True)
        except kv.ValidationError as exc:
            raise AssertionError(f"{overlay}: {doc['kind']}/{doc['metadata']['name']}: {exc.message} "
                                 f"at {'/'.join(map(str, exc.path))}") from None
    assert Counter(d["kind"] for d in docs) == EXPECTED_KINDS, overlay


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_args_parse_and_probes_ports_and_resources_match_the_daemons(overlay):
    docs = render(overlay)
    deployments = by_kind(docs, "Deployment")
    services = by_kind(docs, "Service")
    assert set(deployments) == set(DAEMONS)
    parsed = _parsed(docs)
    for name, dep in deployments.items():
        pod, c = dep["spec"]["template"], container(dep)
        assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        assert any(src["configMapRef"]["name"] == "pdpair-config" for src in c["envFrom"])
        res = c["resources"]
        assert {"cpu", "memory"} <= set(res["requests"]) and "memory" in res["limits"], f"{name}: {res}"
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        cfg, _ = parsed[name]
        sec = pod_spec(dep)["securityContext"]
        assert sec["runAsNonRoot"] is True and sec["runAsUser"] == IMAGE_UID, f"{name}: {sec}"
        if name == "pdpair-router":
            assert ports["http"] == cfg.port and cfg.host == "0.0.0.0"
            assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
            assert c["livenessProbe"]["tcpSocket"]["port"] in ("http", cfg.port)
            for role, targets in (("prefill-node", cfg.prefill), ("decode-node", cfg.decode)):
                (target,) = targets  # the headless Service of the role, re-resolved (dns:///)
                assert target.startswith("dns:///")
                host, port = target.removeprefix("dns:///").rsplit(":", 1)
                svc = services[host.split(".")[0]]
                assert svc["spec"]["clusterIP"] == "None" and not svc["spec"].get("publishNotReadyAddresses")
                assert svc["spec"]["selector"] == {"app.kubernetes.io/name": role}
                assert int(port) == parsed[role][0].port
        else:
            assert ports["grpc"] == cfg.port and ports["metrics"] == cfg.metrics_port and cfg.host == "0.0.0.0"
            assert cfg.advertise_host == "10.1.2.3"  # the pod IP from the downward API
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if cfg.tls is None:  # the standard gRPC health service
                    assert c[probe]["grpc"]["port"] == cfg.port, probe
                else:  # the kubelet has no client certificate: a TCP connect to the gRPC port
                    assert "grpc" not in c[probe] and c[probe]["tcpSocket"]["port"] in ("grpc", cfg.port), probe
            svc = services[name]
            assert svc["spec"]["clusterIP"] == "None"
            assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
            assert {p["targetPort"] for p in svc["spec"]["ports"]} <= set(ports)
    assert parsed["decode-node"][0].prefill_allow  # the decode node dials only the prefill Service's pods
    protocol = "rdma" if "gpu" in overlay else "tcp"
    for name in ("prefill-node", "decode-node"):
        cfg = parsed[name][0]
        assert cfg.transfer_protocol == protocol
        if "gpu" in overlay:
            limits = container(deployments[name])["resources"]["limits"]
            assert limits["nvidia.com/gpu"] == "1" and any(k.startswith("rdma/") for k in limits)
            assert cfg.device == "cuda" and cfg.rdma_device_list


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_covers_the_drain_and_the_mooncake_range_is_declared(overlay):
    docs = render(overlay)
    config = by_kind(docs, "ConfigMap")["pdpair-config"]["data"]
    lo, hi = int(config["MC_MIN_RPC_PORT"]), int(config["MC_MAX_RPC_PORT"])
    assert 0 < lo < hi < 65536 and hi - lo + 1 >= 2  # each node's engine opens two listeners
    for name, (cfg, _) in _parsed(docs).items():
        dep = by_kind(docs, "Deployment")[name]
        grace = pod_spec(dep)["terminationGracePeriodSeconds"]
        drain = cfg.shutdown_timeout_s if name == "pdpair-router" else cfg.drain_timeout
        assert drain + 10 <= grace <= drain + 60, f"{name}: grace {grace}s vs drain {drain}s"
        if name != "pdpair-router":
            declared = [p["containerPort"] for p in container(dep)["ports"] if p["name"].startswith("mooncake")]
            assert declared and all(lo <= p <= hi for p in declared), f"{name}: {declared} outside {lo}-{hi}"


@pytest.mark.parametrize("overlay", ["overlays/cpu-tcp-tls", "overlays/gpu-rdma-tls"])
def test_tls_overlay_mounts_the_secret_and_passes_its_files(overlay):
    docs = render(overlay)
    for name, (cfg, args) in _parsed(docs).items():
        dep = by_kind(docs, "Deployment")[name]
        (volume,) = [v for v in pod_spec(dep)["volumes"] if "secret" in v]
        assert volume["secret"]["secretName"] == "pdpair-tls" and not volume["secret"].get("items")
        # the files belong to root and group fsGroup: the non-root daemon reads them through the group bit
        assert pod_spec(dep)["securityContext"]["fsGroup"] == IMAGE_UID and volume["secret"]["defaultMode"] & 0o040
        (mount,) = [m for m in container(dep)["volumeMounts"] if m["name"] == volume["name"]]
        assert mount["readOnly"] is True
        files = {f: flag(args, f) for f in TLS_FLAGS}
        assert files == {"--tls-cert": f"{mount['mountPath']}/tls.crt", "--tls-key": f"{mount['mountPath']}/tls.key",
                         "--tls-ca": f"{mount['mountPath']}/ca.crt"}, name
        assert mount["mountPath"] == TLS_MOUNT
        assert cfg.tls is not None and cfg.tls.cert == f"{_secret_dir()}/tls.crt" and cfg.tls.server_name, name
    router = container(by_kind(docs, "Deployment")["pdpair-router"])
    (key,) = [e for e in router["env"] if e["name"] == "PDPAIR_API_KEY"]
    assert key["valueFrom"]["secretKeyRef"]["name"] == "pdpair-api-keys"
    plain = render(overlay.removesuffix("-tls"))
    assert not any(a.startswith("--tls") for d in by_kind(plain, "Deployment").values() for a in container(d)["args"])


def test_missing_kubectl_skips_for_a_developer_and_fails_as_root(monkeypatch, tmp_path):
    from tests.unit import _deploy_fixtures as fx

    monkeypatch.setattr(fx.sys, "executable", str(tmp_path / "python"))
    monkeypatch.setattr(fx.shutil, "which", lambda name: None)
    monkeypatch.setattr(fx.os, "geteuid", lambda: 1000)
    with pytest.raises(pytest.skip.Exception, match="kubectl not found"):
        fx.kubectl()
    monkeypatch.setattr(fx.os, "geteuid", lambda: 0)
    with pytest.raises(pytest.fail.Exception, match="kubectl not found"):
        fx.kubectl()
