"""Launch real prefill-node / decode-node daemons as subprocesses on loopback for the e2e and fault tests.

Each node gets a free port, a log file, and is waited on through the standard gRPC health service.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pdpair.proto import pdpair_pb2 as pb
from pdpair.proto import pdpair_pb2_grpc as pb_grpc

from pdpair.tls import TlsFiles, sync_channel
from tests._ports import free_port

MODULES = {"prefill": "pdpair.prefill_node.main", "decode": "pdpair.decode_node.main"}
# small pools and chunks: many pages and several chunks per prompt, quick to allocate
DEFAULT_ARGS = ("--page-size", "16", "--chunk-size", "64", "--max-pages", "320")


@dataclass(eq=False)
class Node:
    role: str
    port: int
    proc: subprocess.Popen
    log: Path
    tls: TlsFiles | None = None  # the node serves mutual TLS; the test's channel presents these files
    channel: grpc.Channel = field(init=False)

    def __post_init__(self) -> None:
        self.channel = sync_channel(self.addr, self.tls)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def stub(self):
        cls = pb_grpc.PrefillNodeStub if self.role == "prefill" else pb_grpc.DecodeNodeStub
        return cls(self.channel)

    def stats(self) -> pb.NodeStats:
        return self.stub.Stats(pb.StatsRequest(), timeout=30)

    def health(self) -> int:
        stub = health_pb2_grpc.HealthStub(self.channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (drain), then SIGKILL after timeout; returns the exit code."""
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def tls_args(tls: TlsFiles | None) -> list[str]:
    return [] if tls is None else ["--tls-cert", tls.cert, "--tls-key", tls.key, "--tls-ca", tls.ca]


def start_node(role: str, *extra: str, log_dir: Path | None = None, port: int | None = None,
               tls: TlsFiles | None = None, env: dict[str, str] | None = None) -> Node:
    port = port or free_port()
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="pdpair-e2e-"))
    log = log_dir / f"{role}-{port}.log"
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), **(env or {}))
    cmd = [sys.executable, "-m", MODULES[role], "--host", "127.0.0.1", "--port", str(port), *DEFAULT_ARGS,
           *tls_args(tls), *extra]
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    return Node(role, port, proc, log, tls)


def wait_healthy(nodes: list[Node], timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    pending = list(nodes)
    while pending:
        node = pending[0]
        if node.proc.poll() is not None:
            raise RuntimeError(f"{node.role} node exited with {node.proc.returncode}:\n{node.log_tail()}")
        try:
            if node.health() == health_pb2.HealthCheckResponse.SERVING:
                pending.pop(0)
                continue
        except grpc.RpcError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{node.role} node not healthy after {timeout:.0f}s:\n{node.log_tail()}")
        time.sleep(0.25)


@dataclass(eq=False)
class Cluster:
    prefill: Node | None
    decode: Node | None

    @property
    def nodes(self) -> list[Node]:
        return [n for n in (self.prefill, self.decode) if n is not None]

    def stop(self) -> dict[str, int]:
        return {n.role: n.stop() for n in self.nodes}


def start_cluster(prefill: bool = True, decode: bool = True, prefill_args: tuple[str, ...] = (),
                  decode_args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> Cluster:
    log_dir = Path(tempfile.mkdtemp(prefix="pdpair-e2e-"))
    c = Cluster(start_node("prefill", *prefill_args, log_dir=log_dir, env=env) if prefill else None,
                start_node("decode", *decode_args, log_dir=log_dir, env=env) if decode else None)
    try:
        wait_healthy(c.nodes)
    except BaseException:
        c.stop()
        raise
    return c
