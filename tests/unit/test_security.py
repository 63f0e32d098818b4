"""Security logic without daemons: node ids bound to their peer (TTL, LRU bound), the prefill allow-list,
API-key collection and comparison, loopback detection and the TLS flag rules."""

from __future__ import annotations

import argparse
import asyncio

import pytest
from pdpair.decode_node.trust import PrefillTrust, UntrustedPrefill, parse_allow
from pdpair.prefill_node.bootstrap import BootstrapManager, PeerClaim, PeerRefused, UnknownPeer
from pdpair.router.auth import collect_keys, key_matches
from pdpair.transfer import MemoryLayout, MemoryRegion

from pdpair.tls import add_tls_args, is_loopback, tls_from_args

HOST_A = PeerClaim(None, "10.0.0.5")
HOST_B = PeerClaim(None, "10.0.0.6")


def _layout(node_id="d", session="10.0.0.5:1", base=4096) -> MemoryLayout:
    return MemoryLayout(node_id=node_id, session_id=session, protocol="tcp", page_size=16, model_fingerprint="fp",
                        regions=(MemoryRegion("kv", base, 1024, 10, "float32"),))


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_bound_node_id_cannot_be_claimed_by_another_peer_or_session():
    b = BootstrapManager(_layout("p", "10.0.0.1:2"))
    b.handshake(_layout(), HOST_A)
    b.handshake(_layout(), HOST_A)  # the same peer again, same layout: fine (idempotent)
    with pytest.raises(PeerRefused, match="bound to host 10.0.0.5"):
        b.handshake(_layout(session="10.0.0.6:1"), HOST_B)  # the hijack: same id, the attacker's session
    with pytest.raises(PeerRefused, match="may not change"):
        b.handshake(_layout(session="10.0.0.5:7"), HOST_A)  # same host, another Mooncake session
    with pytest.raises(PeerRefused, match="may not change"):
        b.handshake(_layout(base=8192), HOST_A)  # other regions to write into
    with pytest.raises(PeerRefused, match="may not use it"):
        b.peer("d", HOST_B)  # a Prefill naming the id from another host
    assert b.peer("d", HOST_A).session_id == "10.0.0.5:1" and len(b) == 1


def test_mtls_binds_the_certificate_identity():
    b = BootstrapManager(_layout("p", "10.0.0.1:2"))
    node, intruder = PeerClaim("decode-a", "10.0.0.5"), PeerClaim("intruder", "10.0.0.5")
    b.handshake(_layout(), node)
    with pytest.raises(PeerRefused, match="certificate 'decode-a'"):
        b.handshake(_layout(), intruder)
    with pytest.raises(PeerRefused):
        b.peer("d", intruder)
    # with TLS the certificate vouches for the node: its session may be on another address (NAT, multi-homed)
    b.handshake(_layout("d2", session="10.9.9.9:1"), node)


def test_plaintext_handshake_may_only_pair_the_callers_own_session():
    b = BootstrapManager(_layout("p", "127.0.0.1:2"))
    with pytest.raises(PeerRefused, match="calls from 10.0.0.5"):
        b.handshake(_layout("x", session="10.0.0.99:1"), HOST_A)  # push KV to somebody else's session
    with pytest.raises(PeerRefused):
        b.handshake(_layout("x", session="victim.example:1"), HOST_A)
    b.handshake(_layout("l", session="127.0.0.1:5"), PeerClaim(None, "127.0.0.1"))
    b.handshake(_layout("m", session="10.0.0.5:5"), PeerClaim(None, "::ffff:10.0.0.5"))  # IPv4-mapped caller
    assert len(b) == 2


def test_entries_expire_unless_used_and_the_table_is_bounded():
    clock = Clock()
    b = BootstrapManager(_layout("p", "10.0.0.1:2"), ttl_s=100.0, max_peers=1024, clock=clock)
    b.handshake(_layout("old"), HOST_A)
    b.handshake(_layout("used"), HOST_A)
    clock.t = 90.0
    b.peer("used", HOST_A)  # use refreshes
    clock.t = 150.0
    with pytest.raises(UnknownPeer, match="expired"):
        b.peer("old")
    assert b.peer("used").node_id == "used"
    b.handshake(_layout("old", session="10.0.0.6:1"), HOST_B)  # an expired id is free again
    for i in range(2000):  # a flood of made-up ids
        b.handshake(_layout(f"flood-{i}"), HOST_A)
        assert len(b) <= 1024
    assert len(b) == 1024
    with pytest.raises(UnknownPeer):
        b.peer("used")  # least recently used: evicted, its node handshakes again
    assert b.peer("flood-1999").node_id == "flood-1999"


def _check(trust: PrefillTrust, addr: str) -> str | None:
    try:
        asyncio.run(trust.check(addr))
    except UntrustedPrefill as exc:
        return str(exc)
    return None


def test_prefill_allow_list():
    default = PrefillTrust("", tls=False)
    assert _check(default, "127.0.0.1:5000") is None and _check(default, "[::1]:5000") is None
    assert _check(default, "localhost:5000") is None  # a name that resolves to loopback
    assert "not an allowed prefill node" in _check(default, "10.0.0.1:5000")
    assert "HOST:PORT" in _check(default, "127.0.0.1")
    assert "cannot resolve" in _check(default, "no-such-host.invalid:1")
    cluster = PrefillTrust("10.8.0.0/16, 127.0.0.1:7000, localhost:7001", tls=False)
    assert _check(cluster, "10.8.3.4:50051") is None
    assert _check(cluster, "10.9.3.4:50051") is not None
    assert _check(cluster, "127.0.0.1:7000") is None and _check(cluster, "127.0.0.1:7002") is not None
    assert _check(cluster, "127.0.0.1:7001") is None  # the name entry's addresses, on its port
    assert _check(PrefillTrust("", tls=True), "10.0.0.1:5000") is None  # mTLS: the CA decides
    assert _check(PrefillTrust("10.8.0.0/16", tls=True), "10.0.0.1:5000") is not None
    for bad in ("10.0.0.0/33", "host:0", "a b", "[::1"):
        with pytest.raises(ValueError):
            parse_allow(bad)


def test_api_keys_from_flags_and_environment():
    assert collect_keys(["k1", "k2,k3"], {"PDPAIR_API_KEY": "k3, k4"}) == ("k1", "k2", "k3", "k4")
    assert collect_keys([], {}) == ()
    keys = [b"alpha", b"beta"]
    assert key_matches(b"beta", keys) and not key_matches(b"bet", keys) and not key_matches(b"", keys)


def test_loopback_and_tls_flags(tmp_path):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("[::1]")
    assert is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("") and not is_loopback("10.0.0.1")
    p = argparse.ArgumentParser()
    add_tls_args(p)
    assert tls_from_args(p.parse_args([])) is None
    with pytest.raises(ValueError, match="go together"):
        tls_from_args(p.parse_args(["--tls-cert", "x.pem"]))
    with pytest.raises(ValueError, match="no such file"):
        tls_from_args(p.parse_args(["--tls-cert", "x", "--tls-key", "y", "--tls-ca", "z"]))
    for name in ("c", "k", "a"):
        (tmp_path / name).write_text("pem")
    files = [str(tmp_path / n) for n in ("c", "k", "a")]
    tls = tls_from_args(p.parse_args(["--tls-cert", files[0], "--tls-key", files[1], "--tls-ca", files[2],
                                      "--tls-server-name", "pdpair-node"]))
    assert tls.cert == files[0] and tls.channel_options == [("grpc.ssl_target_name_override", "pdpair-node")]


def test_plaintext_non_loopback_bind_warns(caplog, tmp_path):
    from pdpair.tls import TlsFiles, warn_if_exposed

    for name in ("c", "k", "a"):
        (tmp_path / name).write_text("pem")
    tls = TlsFiles(str(tmp_path / "c"), str(tmp_path / "k"), str(tmp_path / "a"))
    with caplog.at_level("WARNING", logger="pdpair.tls"):
        warn_if_exposed("127.0.0.1", None, "prefill node gRPC server")
        warn_if_exposed("0.0.0.0", tls, "prefill node gRPC server")
        assert not caplog.records
        warn_if_exposed("0.0.0.0", None, "prefill node gRPC server")
    (record,) = caplog.records
    assert record.levelname == "WARNING" and "without TLS" in record.getMessage()


def test_plaintext_handshake_refuses_a_dp_rank_session_on_another_host():
    """Every DP rank's pools receive writes through their own session: each must be the caller's."""
    b = BootstrapManager(_layout("p", "127.0.0.1:2"))

    def ranked(session: str) -> MemoryLayout:
        return MemoryLayout(node_id="dp", session_id="10.0.0.5:1", protocol="tcp", page_size=16,
                            model_fingerprint="fp", regions=(MemoryRegion("kv", 4096, 1024, 10, "float32"),
                                                             MemoryRegion("kv", 8192, 1024, 10, "float32",
                                                                          dp_rank=1, session_id=session)))

    with pytest.raises(PeerRefused, match="declares transfer session 10.0.0.99:3"):
        b.handshake(ranked("10.0.0.99:3"), HOST_A)
    b.handshake(ranked("10.0.0.5:3"), HOST_A)
