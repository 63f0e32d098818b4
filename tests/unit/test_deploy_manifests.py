"""deploy/: every manifest parses, and the Deployments' flags, probes and ports match the daemons' real CLIs.

The container args are expanded with the ConfigMap values (as Kubernetes does with `$(VAR)`) and parsed by the
daemons' own argparse parsers and config builders, so a renamed flag or an invalid value fails here.
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pdpair.tls import is_loopback

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DAEMONS = {"prefill-node": "pdpair.prefill_node.main", "decode-node": "pdpair.decode_node.main",
           "pdpair-router": "pdpair.router.main"}
VAR = re.compile(r"\$\(([A-Z0-9_]+)\)")


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _render(overlay: str) -> list[dict]:
    """`kubectl kustomize` when available; the base can also be assembled from its resource list."""
    kubectl = shutil.which("kubectl")
    if kubectl:
        out = subprocess.run([kubectl, "kustomize", str(K8S / overlay)], check=True, capture_output=True, text=True)
        return [d for d in yaml.safe_load_all(out.stdout) if d is not None]
    if overlay != "base":
        pytest.skip("kubectl not installed: cannot render overlays")
    kust = _docs(K8S / "base" / "kustomization.yaml")[0]
    return [d for res in kust["resources"] for d in _docs(K8S / "base" / res)]


def _parser_module(command: str):
    try:
        return importlib.import_module(DAEMONS[command])
    except ImportError as exc:
        pytest.skip(f"{command} is not importable here: {exc}")


def test_every_yaml_file_parses():
    files = sorted(K8S.rglob("*.yaml"))
    assert len(files) >= 8
    for path in files:
        assert _docs(path), f"{path} is empty"


@pytest.mark.parametrize("overlay", ["base", "overlays/cpu-tcp", "overlays/gpu-rdma"])
def test_deployments_use_real_flags_and_consistent_ports(overlay):
    docs = _render(overlay)
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    assert set(deployments) == {"prefill-node", "decode-node", "pdpair-router"}
    parsed = {}
    for name, dep in deployments.items():
        pod = dep["spec"]["template"]
        assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        (container,) = pod["spec"]["containers"]
        command = container["command"][0]
        env = {**config, **{e["name"]: "10.1.2.3" for e in container.get("env", [])}}
        assert any(src["configMapRef"]["name"] == "pdpair-config" for src in container["envFrom"])
        args = [VAR.sub(lambda m, env=env: env[m.group(1)], a) for a in container["args"]]  # KeyError: undefined $(VAR)
        module = _parser_module(command)
        ns = module.build_parser().parse_args(args)  # SystemExit on an unknown flag or a bad value
        parsed[name] = ns
        if command == "pdpair-router":
            cfg = module.config_from_args(ns)
            assert cfg.dns_refresh_s > 0  # node targets are headless Services
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert ports["http"] == cfg.port and not is_loopback(cfg.host)
            assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
            for target in cfg.prefill + cfg.decode:
                host, port = target.rsplit(":", 1)
                svc = services[host]
                assert svc["spec"]["clusterIP"] == "None" and int(port) in [p["port"] for p in svc["spec"]["ports"]]
        else:
            role = command.split("-")[0]
            cfg = importlib.import_module("pdpair.node.config").config_from_args(role, ns)
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert ports["grpc"] == cfg.port and ports["metrics"] == cfg.metrics_port
            assert cfg.advertise_host == "10.1.2.3"  # the pod IP from the downward API
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert container[probe]["grpc"]["port"] == cfg.port, probe  # the standard gRPC health service
            svc = services[name]
            assert svc["spec"]["clusterIP"] == "None"
            assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
            assert {p["targetPort"] for p in svc["spec"]["ports"]} <= set(ports)
            assert not is_loopback(cfg.host)  # daemons bind loopback unless --host says otherwise
            parsed[name] = cfg
    assert parsed["decode-node"].prefill_allow  # the decode node dials only the prefill Service's pods
    protocol = "rdma" if "gpu" in overlay else "tcp"
    for name in ("prefill-node", "decode-node"):
        assert parsed[name].transfer_protocol == protocol
    if "gpu" in overlay:
        for name in ("prefill-node", "decode-node"):
            res = deployments[name]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
            assert res["nvidia.com/gpu"] == "1" and any(k.startswith("rdma/") for k in res)
            assert parsed[name].device == "cuda" and parsed[name].rdma_device_list


def test_dockerfile_installs_every_package_and_the_entrypoints():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    text = (DEPLOY / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\S+) \./\S+$", text, flags=re.M))
    top_dirs = {d.split("/")[0] for d in project["tool"]["setuptools"]["package-dir"].values()}
    assert top_dirs <= copied, f"packages missing from the image: {sorted(top_dirs - copied)}"
    assert set(DAEMONS) <= set(project["project"]["scripts"])
    assert "libibverbs1" in text and re.search(r'pip install "torch==\$\{TORCH_VERSION\}" --index-url', text)
