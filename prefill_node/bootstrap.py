"""BootstrapManager: decode peers that completed a Handshake, by node id."""

from __future__ import annotations

import logging

from pdpair.transfer import MemoryLayout, check_compatible

logger = logging.getLogger(__name__)


class UnknownPeer(KeyError):
    """A registration names a decode node that never completed a Handshake with this node."""


class BootstrapManager:
    def __init__(self, local: MemoryLayout) -> None:
        self.local = local
        self._peers: dict[str, MemoryLayout] = {}

    def handshake(self, remote: MemoryLayout) -> MemoryLayout:
        """Check the decode node's layout (LayoutMismatch names the field) and remember it; returns ours."""
        check_compatible(self.local, remote)
        if not remote.session_id:
            raise ValueError(f"decode layout of {remote.node_id!r} has no transfer session id")
        known = self._peers.get(remote.node_id)
        if known != remote:
            logger.info("paired with decode node %s (session %s)", remote.node_id, remote.session_id)
        self._peers[remote.node_id] = remote
        return self.local

    def peer(self, node_id: str) -> MemoryLayout:
        try:
            return self._peers[node_id]
        except KeyError:
            raise UnknownPeer(f"decode node {node_id!r} has not completed a Handshake") from None

    def __len__(self) -> int:
        return len(self._peers)
