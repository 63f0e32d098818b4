"""LocalCluster surfaces a daemon that cannot start: its exit code and the tail of its log."""

from __future__ import annotations

import pytest
from pdpair.router.local_cluster import LocalCluster

pytestmark = pytest.mark.timeout(120)


def test_a_daemon_that_exits_raises_with_its_log_tail(tmp_path):
    pytest.importorskip("pdpair.decode_node.main")
    cluster = LocalCluster(prefill=0, decode=1, node_args=["--no-such-flag"], log_dir=tmp_path, start_timeout_s=60)
    with pytest.raises(RuntimeError) as info, cluster:
        pass
    msg = str(info.value)
    assert "decode-0 exited with code 2" in msg and "--no-such-flag" in msg
    assert (tmp_path / "decode-0.log").exists()
    assert all(d.proc.poll() is not None for d in cluster.daemons.values())  # nothing left running


def test_rejects_a_router_without_decode_nodes():
    with pytest.raises(ValueError, match="decode node"):
        LocalCluster(prefill=1, decode=0)
