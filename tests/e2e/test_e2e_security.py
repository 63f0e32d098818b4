"""Security over real daemons on loopback: mutual TLS end to end (router -> decode -> prefill, the Mooncake
session exchange), refused clients and servers, API keys on the router, the hijack sequence, node ids bound
to their peer, the bounded peer table, and what listens where."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent import futures
from pathlib import Path

import grpc
import psutil
import pytest
from pdpair.node.layout import layout_to_proto
from pdpair.proto import pdpair_pb2 as pb
from pdpair.proto import pdpair_pb2_grpc as pb_grpc
from pdpair.transfer import MemoryLayout, MemoryRegion

from pdpair.tls import is_loopback, sync_channel
from tests.e2e._certs import Ca
from tests.e2e._client import generate, new_rid, prompt, rpc_error, sampling
from tests.e2e._nodes import free_port, start_node, tls_args, wait_healthy

Code = grpc.StatusCode


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    ca, rogue = Ca.create(d / "ca", "pdpair"), Ca.create(d / "rogue", "rogue")
    return {"prefill": ca.issue("pdpair-prefill"), "decode": ca.issue("pdpair-decode"),
            "router": ca.issue("pdpair-router"), "intruder": ca.issue("intruder"), "rogue": rogue.issue("pdpair-prefill"),
            "ca": ca}


@pytest.fixture(scope="module")
def tls_nodes(certs, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("tls-logs")
    prefill = start_node("prefill", log_dir=log_dir, tls=certs["prefill"])
    decode = start_node("decode", log_dir=log_dir, tls=certs["decode"])
    # the test talks to them as the router does
    prefill.channel, decode.channel = (sync_channel(n.addr, certs["router"]) for n in (prefill, decode))
    try:
        wait_healthy([prefill, decode])
        yield prefill, decode
    finally:
        prefill.stop(), decode.stop()


@pytest.fixture(scope="module")
def plain_nodes(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("plain-logs")
    port, metrics = free_port(), [free_port(), free_port()]
    prefill = start_node("prefill", "--metrics-port", str(metrics[0]), log_dir=log_dir, port=port)
    decode = start_node("decode", "--metrics-port", str(metrics[1]), "--prefill-allow", f"127.0.0.1:{port}",
                        log_dir=log_dir)
    prefill.metrics_port, decode.metrics_port = metrics
    try:
        wait_healthy([prefill, decode])
        yield prefill, decode
    finally:
        prefill.stop(), decode.stop()


class RecordingPrefill(pb_grpc.PrefillNodeServicer):
    """The attacker's fake prefill node: records whatever a decode node sends it."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def Handshake(self, request, context):
        self.calls.append(request.decode_layout.node_id)
        context.abort(Code.UNAVAILABLE, "recorded")


def _fake_prefill(tls=None) -> tuple[grpc.Server, RecordingPrefill, str]:
    servicer = RecordingPrefill()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    pb_grpc.add_PrefillNodeServicer_to_server(servicer, server)
    if tls is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:  # a server-side TLS endpoint that accepts any client
        creds = grpc.ssl_server_credentials([(Path(tls.key).read_bytes(), Path(tls.cert).read_bytes())])
        port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    return server, servicer, f"127.0.0.1:{port}"


def _node_id(decode) -> str:
    m = re.search(r"decode node (\S+): model", decode.log.read_text(errors="replace"))
    assert m, decode.log_tail()
    return m.group(1)


def _compatible_layout(stub, node_id: str, session: str) -> MemoryLayout:
    """What an attacker does: probe the prefill node's Handshake until its mismatch messages give a layout it
    accepts (under a fresh id); returns that layout renamed to node_id with the given session."""
    fields = {"page_size": 16, "model_fingerprint": "?", "protocol": "tcp"}
    regions: dict[str, dict] = {}
    for _ in range(20):
        probe = MemoryLayout(node_id=new_rid("probe"), session_id="127.0.0.1:1", **fields,
                             regions=tuple(MemoryRegion(kind=k, base_ptr=4096, num_items=1, **v)
                                           for k, v in regions.items()))
        err = rpc_error(stub.Handshake, pb.HandshakeRequest(decode_layout=layout_to_proto(probe)), timeout=10)
        if err is None:
            return MemoryLayout(**{**{f: getattr(probe, f) for f in probe.__struct_fields__},
                                   "node_id": node_id, "session_id": session})
        m = re.match(r"layout mismatch on (\S+): local (.*), remote", err.details())
        assert err.code() == Code.FAILED_PRECONDITION and m, err.details()
        field, value = m.group(1), ast.literal_eval(m.group(2))  # a str, an int or a list of str
        if field == "regions":
            regions = {k: {"item_bytes": 1, "dtype": "?"} for k in value}
        elif field.startswith("regions["):
            kind, attr = re.match(r"regions\[(\w+)\]\.(\w+)", field).groups()
            regions[kind][attr] = value
        else:
            fields[field] = value
    raise AssertionError("no compatible layout found")


def _start_router(tmp_path, decode, prefill, *extra, env=None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(tmp_path / "router.log", "wb")  # noqa: SIM115 - the child owns it
    cmd = [sys.executable, "-m", "pdpair.router.main", "--port", str(port), "--decode", decode.addr,
           "--prefill", prefill.addr, "--health-interval", "0.25", "--rpc-timeout", "5", *extra]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while _http(url + "/health")[0] != 200:
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "router.log").read_text()
        time.sleep(0.25)
    return proc, url


def _http(url: str, body: dict | None = None, key: str | None = None) -> tuple[int, dict | str]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body else None, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            status, text = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return 0, ""
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def test_mtls_end_to_end_and_api_keys(tls_nodes, certs, tmp_path):
    prefill, decode = tls_nodes
    ids, sp = prompt(150, salt=3), sampling(max_new_tokens=8)
    remote = generate(decode.stub, ids, sp, prefill_addr=prefill.addr)
    local = generate(decode.stub, ids, sp)
    assert remote.first.prefilled_remotely and remote.first.transfer.bytes > 0  # Mooncake pages moved
    assert remote.tokens == local.tokens and len(remote.tokens) == 8
    proc, url = _start_router(tmp_path, decode, prefill, "--api-key", "key-one", "--api-key", "key-two,key-three",
                              *tls_args(certs["router"]), env={"PDPAIR_API_KEY": "key-env"})
    try:
        body = {"model": "smollm2-135m", "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0}
        for key in (None, "wrong", "key-one-x"):
            status, err = _http(url + "/v1/completions", body, key)
            assert status == 401 and err["error"]["type"] == "invalid_request_error", err
            assert err["error"]["code"] == "invalid_api_key" and err["error"]["message"]
            assert _http(url + "/v1/models", key=key)[0] == 401
        for key in ("key-one", "key-two", "key-three", "key-env"):
            assert _http(url + "/v1/models", key=key)[0] == 200
        status, out = _http(url + "/v1/completions", body, "key-two")
        assert status == 200 and out["pdpair"]["prefilled_remotely"] and out["pdpair"]["transfer"]["bytes"] > 0
        assert out["choices"][0]["text"]
        assert _http(url + "/health")[0] == 200
        status, metrics = _http(url + "/metrics")
        assert status == 200 and 'status="401"' in metrics
    finally:
        proc.terminate()
        proc.wait(30)


def test_mtls_refuses_plaintext_certless_and_foreign_clients_and_servers(tls_nodes, certs):
    prefill, decode = tls_nodes
    ca = Path(certs["ca"].path).read_bytes()
    rogue = certs["rogue"]
    channels = {
        "plaintext": grpc.insecure_channel(prefill.addr),
        "no client certificate": grpc.secure_channel(prefill.addr, grpc.ssl_channel_credentials(ca)),
        "another CA's certificate": grpc.secure_channel(prefill.addr, grpc.ssl_channel_credentials(
            ca, Path(rogue.key).read_bytes(), Path(rogue.cert).read_bytes())),
    }
    for what, channel in channels.items():
        with channel:
            err = rpc_error(pb_grpc.PrefillNodeStub(channel).Stats, pb.StatsRequest(), timeout=10)
        assert err is not None and err.code() == Code.UNAVAILABLE, what
    assert prefill.stats().role == "prefill"  # the router's certificate is accepted
    # the decode node, as a client, refuses a prefill server whose certificate another CA signed
    server, fake, addr = _fake_prefill(tls=rogue)
    try:
        err = rpc_error(decode.stub.Generate, pb.GenerateRequest(rid=new_rid(), token_ids=prompt(100),
                                                                 sampling=sampling(4), prefill_addr=addr), timeout=60)
        assert err is not None and err.code() == Code.UNAVAILABLE and fake.calls == []
    finally:
        server.stop(None)


def test_mtls_node_id_is_bound_to_the_certificate(tls_nodes, certs):
    prefill, decode = tls_nodes
    generate(decode.stub, prompt(80, salt=5), sampling(2), prefill_addr=prefill.addr)  # decode is paired
    victim = _node_id(decode)
    with sync_channel(prefill.addr, certs["intruder"]) as channel:  # a CA-signed certificate, another identity
        stub = pb_grpc.PrefillNodeStub(channel)
        layout = _compatible_layout(stub, victim, "127.0.0.1:1")
        err = rpc_error(stub.Handshake, pb.HandshakeRequest(decode_layout=layout_to_proto(layout)), timeout=10)
        assert err.code() == Code.PERMISSION_DENIED and "certificate 'pdpair-decode'" in err.details()
        reg = pb.PageRegistration(decode_node_id=victim, pools=[pb.ItemIds(kind="kv", ids=[1, 2])])
        err = rpc_error(stub.Prefill, pb.PrefillRequest(rid=new_rid(), token_ids=prompt(20), sampling=sampling(1),
                                                        registration=reg), timeout=10)
        assert err.code() == Code.PERMISSION_DENIED, err.details()  # nobody else writes into its pools
    assert generate(decode.stub, prompt(80, salt=6), sampling(2), prefill_addr=prefill.addr).first.prefilled_remotely


class Users:
    """Threads sending the same greedy request over and over while an attack runs: (start, end, tokens or error)."""

    def __init__(self, decode, prefill_addr: str, ids: list[int], n: int = 2) -> None:
        self.results: list[tuple[float, float, object]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(decode, prefill_addr, ids)) for _ in range(n)]
        for t in self._threads:
            t.start()

    def _run(self, decode, prefill_addr, ids) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                out: object = generate(decode.stub, ids, sampling(6), prefill_addr=prefill_addr).tokens
            except grpc.RpcError as err:
                out = err
            self.results.append((t0, time.monotonic(), out))

    def stop(self) -> list[tuple[float, float, object]]:
        self._stop.set()
        for t in self._threads:
            t.join(120)
        return self.results


def test_hijack_sequence_fails_at_both_steps_and_tables_stay_bounded(plain_nodes):
    prefill, decode = plain_nodes
    # step 1: a Generate pointing the decode node at a fake prefill server; nothing is dialled
    server, fake, addr = _fake_prefill()
    try:
        for target in (addr, "10.1.2.3:50051", "localhost:1"):
            err = rpc_error(decode.stub.Generate, pb.GenerateRequest(
                rid=new_rid(), token_ids=prompt(100), sampling=sampling(4), prefill_addr=target), timeout=30)
            assert err is not None and err.code() == Code.INVALID_ARGUMENT, target
            assert "not an allowed prefill node" in err.details()
        assert fake.calls == []  # the decode node's id, session and pools stayed private
    finally:
        server.stop(None)
    ids = prompt(120, salt=1)
    reference = generate(decode.stub, ids, sampling(6)).tokens  # prefilled locally: no transfer involved
    users = Users(decode, prefill.addr, ids)
    while not users.results:
        time.sleep(0.05)
    attack_start = time.monotonic()
    # step 2: re-handshake the real prefill node under the decode node's id, with another Mooncake session
    victim = _node_id(decode)
    stub = prefill.stub
    for session in ("127.0.0.1:1", "10.1.2.3:15000"):
        layout = _compatible_layout(stub, victim, session)
        err = rpc_error(stub.Handshake, pb.HandshakeRequest(decode_layout=layout_to_proto(layout)), timeout=10)
        assert err.code() == Code.PERMISSION_DENIED, err.details()
    # a made-up id may not aim the prefill node at somebody else's Mooncake session either
    stray = _compatible_layout(stub, new_rid("made-up"), "10.1.2.3:15000")
    err = rpc_error(stub.Handshake, pb.HandshakeRequest(decode_layout=layout_to_proto(stray)), timeout=10)
    assert err.code() == Code.PERMISSION_DENIED and "calls from 127.0.0.1" in err.details()
    # a flood of handshakes with distinct ids: the table stays bounded, the real decode node re-pairs
    base = layout_to_proto(_compatible_layout(stub, "x", "127.0.0.1:1"))
    t0 = time.monotonic()
    for i in range(2000):
        base.node_id = f"flood-{i}"
        stub.Handshake(pb.HandshakeRequest(decode_layout=base), timeout=10)
    flood_s = time.monotonic() - t0
    attack_end = time.monotonic()
    results = users.stop()
    log = prefill.log.read_text(errors="replace")
    evicted = len(re.findall(r"peer table full \(1024\)", log))
    paired = len(re.findall(r"paired with decode node", log))
    assert paired - evicted <= 1024 and evicted >= 2000 - 1024, (paired, evicted)
    during = [r for r in results if r[0] < attack_end and r[1] > attack_start]
    print(f"2000 handshakes in {flood_s:.1f}s; {evicted} evictions, table <= 1024; {len(results)} user "
          f"requests, {len(during)} overlapping the attack")
    assert during and all(out == reference for _, _, out in results), [out for _, _, out in results]
    assert generate(decode.stub, ids, sampling(6), prefill_addr=prefill.addr).tokens == reference


def test_only_mooncake_listens_beyond_loopback(plain_nodes):
    """--host 127.0.0.1: gRPC and metrics listen on loopback only. Mooncake 0.3.x listens on every interface
    whatever it is told (its handshake port and its TCP transport port; MC_TCP_BIND_ADDRESS changes only the
    advertised address): deploy/README.md documents it and the NetworkPolicy must close those ports."""
    for node in plain_nodes:
        ours = {node.port, node.metrics_port}
        listening = [c.laddr for c in psutil.Process(node.proc.pid).net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN]
        mine = [a for a in listening if a.port in ours]
        assert {a.port for a in mine} == ours and all(is_loopback(a.ip) for a in mine), mine
        mooncake = [a for a in listening if a.port not in ours]
        assert mooncake and all(a.ip in ("0.0.0.0", "::") for a in mooncake), mooncake
        assert all(15000 <= a.port <= 17000 for a in mooncake), mooncake  # MC_MIN/MAX_RPC_PORT range
