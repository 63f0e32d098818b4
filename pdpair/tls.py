"""Mutual TLS for every gRPC link, and the loopback checks daemons make before they bind.

Shared by the nodes and the router (torch-free: grpc and the standard library only).

    tls = tls_from_args(args)                      # None: plaintext
    port = add_port(server, "0.0.0.0:50051", tls)  # servers require a CA-signed client certificate
    channel = aio_channel("10.0.0.7:50051", tls)   # clients present theirs and verify the server's
    identity = peer_identity(context)              # the client certificate's name, None without TLS
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

__all__ = [
    "TlsFiles", "add_tls_args", "tls_from_args", "server_credentials", "channel_credentials", "aio_channel",
    "sync_channel", "add_port", "is_loopback", "warn_if_exposed", "peer_identity", "peer_host",
]

logger = logging.getLogger(__name__)

LOOPBACK_NAMES = ("localhost",)


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of one daemon: its certificate chain and key, and the CA that signs every peer.

    `server_name`: the name clients expect in a server's certificate instead of the dialled host (one
    certificate shared by pods whose addresses are not known in advance).
    """

    cert: str
    key: str
    ca: str
    server_name: str | None = None

    def __post_init__(self) -> None:
        for flag, path in (("--tls-cert", self.cert), ("--tls-key", self.key), ("--tls-ca", self.ca)):
            if not Path(path).is_file():
                raise ValueError(f"{flag} {path!r}: no such file")

    def _read(self) -> tuple[bytes, bytes, bytes]:
        return Path(self.cert).read_bytes(), Path(self.key).read_bytes(), Path(self.ca).read_bytes()

    @property
    def channel_options(self) -> list[tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def add_tls_args(parser: argparse.ArgumentParser) -> None:
    """--tls-cert/--tls-key/--tls-ca/--tls-server-name, the same on the three daemons."""
    g = parser.add_argument_group("mutual TLS (all three files, or none for plaintext)")
    g.add_argument("--tls-cert", default=None, metavar="PEM",
                   help="this daemon's certificate (chain), presented to every gRPC peer; as a server it "
                        "requires clients to present one signed by --tls-ca")
    g.add_argument("--tls-key", default=None, metavar="PEM", help="the private key of --tls-cert")
    g.add_argument("--tls-ca", default=None, metavar="PEM",
                   help="CA certificate that must have signed every peer's certificate (servers and clients)")
    g.add_argument("--tls-server-name", default=None, metavar="NAME",
                   help="name expected in the servers' certificates instead of the dialled host (e.g. one "
                        "certificate for every pod; default: the host of the address dialled)")


def tls_from_args(args: argparse.Namespace) -> TlsFiles | None:
    """TlsFiles from the flags, None when none of them is given; ValueError when only some are."""
    files = (args.tls_cert, args.tls_key, args.tls_ca)
    if not any(files):
        if args.tls_server_name:
            raise ValueError("--tls-server-name needs --tls-cert, --tls-key and --tls-ca")
        return None
    if not all(files):
        raise ValueError("--tls-cert, --tls-key and --tls-ca go together: give all three or none")
    return TlsFiles(*files, server_name=args.tls_server_name or None)


def server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    cert, key, ca = tls._read()
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)


def channel_credentials(tls: TlsFiles) -> grpc.ChannelCredentials:
    cert, key, ca = tls._read()
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def aio_channel(addr: str, tls: TlsFiles | None, options: list | tuple = ()) -> grpc.aio.Channel:
    """A grpc.aio channel to addr: mutual TLS with tls, plaintext without."""
    if tls is None:
        return grpc.aio.insecure_channel(addr, options=list(options))
    return grpc.aio.secure_channel(addr, channel_credentials(tls), options=[*options, *tls.channel_options])


def sync_channel(addr: str, tls: TlsFiles | None, options: list | tuple = ()) -> grpc.Channel:
    """The blocking twin of aio_channel (health checks, tools, tests)."""
    if tls is None:
        return grpc.insecure_channel(addr, options=list(options))
    return grpc.secure_channel(addr, channel_credentials(tls), options=[*options, *tls.channel_options])


def add_port(server: Any, address: str, tls: TlsFiles | None) -> int:
    """Bind address on a grpc(.aio) server, with client-certificate TLS when tls is set; the bound port."""
    if tls is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, server_credentials(tls))


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8 (also IPv4-mapped), ::1 and localhost; False for wildcards and everything else."""
    host = host.strip("[]")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)  # "::ffff:127.0.0.1" on a dual-stack socket
    return (mapped or ip).is_loopback


def warn_if_exposed(host: str, tls: TlsFiles | None, what: str) -> None:
    """WARNING when a daemon binds a non-loopback address in plaintext."""
    if tls is None and not is_loopback(host):
        logger.warning("%s binds %s without TLS: anyone who can reach it is trusted (pass --tls-cert, "
                       "--tls-key and --tls-ca, or bind 127.0.0.1)", what, host or "all interfaces")


def peer_identity(context: Any) -> str | None:
    """The authenticated client's certificate name (common name, else its first SAN); None without TLS."""
    try:
        auth = context.auth_context() or {}
    except (AttributeError, ValueError):
        return None
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        values = auth.get(key)
        if values:
            v = values[0]
            return v.decode() if isinstance(v, bytes) else str(v)
    return None


def peer_host(context: Any) -> str:
    """The client's network address without its port, from grpc's "ipv4:1.2.3.4:5" / "ipv6:[::1]:5"."""
    peer = context.peer() or ""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host = rest.rsplit(":", 1)[0]
        return host.strip("[]")
    return peer
