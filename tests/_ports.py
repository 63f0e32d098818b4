"""Ports for the daemons a test starts.

A port the OS picked (bind to port 0) and then released can be taken again before the daemon binds it: by an
outgoing connection, or by another pytest-xdist worker's pick. These ports come from below the OS's ephemeral
range (32768 and up on Linux; Mooncake's own ports are 15000-17000), in a block of its own for each xdist
worker (more than 8 workers share blocks), handed out in turn and each checked free when handed out."""

from __future__ import annotations

import itertools
import os
import socket

BASE, BLOCK, BLOCKS = 20000, 1500, 8  # worker k: from BASE + (k % BLOCKS) * BLOCK
WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
FIRST = BASE + WORKER % BLOCKS * BLOCK
# a run started beside another one (no worker id in common) begins elsewhere in the block
_next = itertools.count(os.getpid() % BLOCK)


def free_port() -> int:
    """A port on 127.0.0.1 no socket holds now, from this worker's block."""
    for _ in range(BLOCK):
        port = FIRST + next(_next) % BLOCK
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {FIRST}-{FIRST + BLOCK - 1}")
