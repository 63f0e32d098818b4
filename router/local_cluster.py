"""Start prefill-node, decode-node and pdpair-router as subprocesses on loopback (demo, e2e tests).

    with LocalCluster(prefill=1, decode=1, decode_args=["--local-prefill-below", "0"]) as c:
        requests.post(c.router_url + "/v1/chat/completions", ...)

Every process logs to a file under `c.log_dir`; a daemon that exits or never
turns healthy raises with the tail of its log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass(eq=False)
class Daemon:
    name: str  # "prefill-0", "decode-0", "router"
    proc: subprocess.Popen
    log_path: Path
    addr: str  # gRPC "host:port" (nodes) or the HTTP base URL (router)
    metrics_url: str

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class LocalCluster:
    """`prefill` prefill nodes, `decode` decode nodes and (if `router`) a router over all of them.

    With `prefill=0` the router serves colocated on the decode nodes. `node_args` go to every node,
    `prefill_args` / `decode_args` / `router_args` to one kind. Exposes `router_url`, `decode_addrs`,
    `prefill_addrs`, `metrics_urls` ({"prefill-0": url, "decode-0": url, "router": url}) and `daemons`.
    Each daemon's ports come from `ports()` (default: one the OS picks, released for the daemon to bind; a
    test suite running in parallel passes ports no other worker hands out).
    """

    def __init__(
        self,
        prefill: int = 1,
        decode: int = 1,
        router: bool = True,
        node_args: Sequence[str] = (),
        decode_args: Sequence[str] = (),
        prefill_args: Sequence[str] = (),
        router_args: Sequence[str] = (),
        start_timeout_s: float = 300.0,
        stop_timeout_s: float = 30.0,
        log_dir: str | os.PathLike | None = None,
        env: dict[str, str] | None = None,
        ports: Callable[[], int] = free_port,
    ):
        if decode < 1 and router:
            raise ValueError("a router needs at least one decode node")
        self.n_prefill, self.n_decode, self.with_router = prefill, decode, router
        self.node_args, self.decode_args = list(node_args), list(decode_args)
        self.prefill_args, self.router_args = list(prefill_args), list(router_args)
        self.start_timeout_s, self.stop_timeout_s = start_timeout_s, stop_timeout_s
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="pdpair-cluster-"))
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.daemons: dict[str, Daemon] = {}
        self.prefill_addrs: list[str] = []
        self.decode_addrs: list[str] = []
        self.router_url = ""
        self.ports = ports

    @property
    def metrics_urls(self) -> dict[str, str]:
        return {name: d.metrics_url for name, d in self.daemons.items()}

    def _spawn(self, name: str, module: str, args: list[str], addr: str, metrics_url: str) -> Daemon:
        log_path = self.log_dir / f"{name}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - the child owns it; closed in stop()
        cmd = [sys.executable, "-m", module, *args]
        logger.info("starting %s: %s", name, " ".join(cmd))
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        log.close()
        daemon = Daemon(name, proc, log_path, addr, metrics_url)
        self.daemons[name] = daemon
        return daemon

    def _spawn_node(self, role: str, index: int, extra: list[str]) -> Daemon:
        port, mport = self.ports(), self.ports()
        args = ["--host", HOST, "--advertise-host", HOST, "--port", str(port), "--metrics-port", str(mport),
                *self.node_args, *extra]
        module = "pdpair.prefill_node.main" if role == "prefill" else "pdpair.decode_node.main"
        return self._spawn(f"{role}-{index}", module, args, f"{HOST}:{port}", f"http://{HOST}:{mport}/metrics")

    def start(self) -> LocalCluster:
        try:
            nodes = [self._spawn_node("prefill", i, self.prefill_args) for i in range(self.n_prefill)]
            nodes += [self._spawn_node("decode", i, self.decode_args) for i in range(self.n_decode)]
            self.prefill_addrs = [d.addr for d in nodes if d.name.startswith("prefill")]
            self.decode_addrs = [d.addr for d in nodes if d.name.startswith("decode")]
            deadline = time.monotonic() + self.start_timeout_s
            for d in nodes:
                self._wait(d, deadline, lambda d=d: _grpc_serving(d.addr))
            if self.with_router:
                port = self.ports()
                args = ["--host", HOST, "--port", str(port), "--decode", *self.decode_addrs,
                        "--health-interval", "0.25", "--rpc-timeout", "5", *self.router_args]
                if self.prefill_addrs:
                    args += ["--prefill", *self.prefill_addrs]
                url = f"http://{HOST}:{port}"
                router = self._spawn("router", "pdpair.router.main", args, url, url + "/metrics")
                self._wait(router, deadline, lambda: _http_ok(url + "/health"))
                self.router_url = url
        except BaseException:
            self.stop()
            raise
        return self

    def _wait(self, daemon: Daemon, deadline: float, ready) -> None:
        while not ready():
            code = daemon.proc.poll()
            if code is not None:
                raise RuntimeError(f"{daemon.name} exited with code {code}; log {daemon.log_path}:\n"
                                   f"{daemon.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{daemon.name} not ready after {self.start_timeout_s:.0f} s; log "
                                   f"{daemon.log_path}:\n{daemon.log_tail()}")
            time.sleep(0.2)
        logger.info("%s ready at %s", daemon.name, daemon.addr)

    def stop(self) -> dict[str, int | None]:
        """SIGTERM (router first, then decode, then prefill nodes), SIGKILL after the bound; the exit codes."""
        order = sorted(self.daemons.values(), key=lambda d: {"router": 0, "decode": 1}.get(d.name.split("-")[0], 2))
        for d in order:
            if d.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    d.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        codes: dict[str, int | None] = {}
        for d in order:
            try:
                codes[d.name] = d.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("%s ignored SIGTERM for %.0f s: killing it", d.name, self.stop_timeout_s)
                d.proc.kill()
                d.proc.wait()
                codes[d.name] = None
        return codes

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.exit_codes = self.stop()


def _grpc_serving(addr: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(addr) as channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
        except grpc.RpcError:
            return False
    return resp.status == health_pb2.HealthCheckResponse.SERVING


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False
