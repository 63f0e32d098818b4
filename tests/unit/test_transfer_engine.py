"""Engine-side pieces that need no peer: results, errors across processes, lazy import, env."""

from __future__ import annotations

import os
import pickle
import sys

import pytest
from pdpair.transfer import (
    InvalidPages,
    LayoutMismatch,
    MooncakeEngine,
    TransferError,
    TransferResult,
    mooncake_engine,
    transfer_timeout_s,
)


def test_result_raise_for_error():
    TransferResult(True, 10, 1, 1, 0.1).raise_for_error()
    with pytest.raises(TransferError, match="rc=-1") as info:
        TransferResult(False, 4096, 2, 3, 0.1, "write to p:1 failed (rc=-1)").raise_for_error("p:1")
    assert (info.value.peer, info.value.nbytes) == ("p:1", 4096)


@pytest.mark.parametrize(
    "err",
    [InvalidPages("kv", 70, 64, "dst"), LayoutMismatch("page_size", 16, 32), TransferError("boom", "p:1", 5)],
)
def test_errors_survive_pickling(err):
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err) and str(back) == str(err) and vars(back) == vars(err)


def test_timeout_from_env(monkeypatch):
    monkeypatch.delenv("MC_TRANSFER_TIMEOUT", raising=False)
    assert transfer_timeout_s() == 30.0
    monkeypatch.setenv("MC_TRANSFER_TIMEOUT", "3")
    assert transfer_timeout_s() == 3.0
    monkeypatch.setenv("MC_TRANSFER_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="MC_TRANSFER_TIMEOUT"):
        transfer_timeout_s()


def test_missing_mooncake_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "mooncake", None)
    monkeypatch.setitem(sys.modules, "mooncake.engine", None)
    with pytest.raises(ImportError, match="libibverbs1"):
        MooncakeEngine()


def test_bad_arguments_fail_before_the_engine_starts():
    with pytest.raises(ValueError, match="protocol"):
        MooncakeEngine(protocol="udp")
    with pytest.raises(ValueError, match="max_batch_entries"):
        MooncakeEngine(max_batch_entries=0)


def test_env_prepared_for_mooncake(monkeypatch):
    monkeypatch.setenv("MC_LOG_DIR", "/tmp/x")
    monkeypatch.delenv("MC_TCP_MAX_QUEUED_TRANSFERS_PER_PEER", raising=False)
    monkeypatch.delenv("MC_TRANSFER_TIMEOUT", raising=False)
    mooncake_engine._prepare_env(timeout_s=2.4, protocol="tcp")
    assert "MC_LOG_DIR" not in os.environ
    assert int(os.environ["MC_TCP_MAX_QUEUED_TRANSFERS_PER_PEER"]) >= 4096
    assert os.environ["MC_TRANSFER_TIMEOUT"] == "2"


def test_protocol_picks_the_intra_host_nvlink_transport(monkeypatch):
    """Mooncake chooses its transport from MC_INTRANODE_NVLINK: the protocol flag sets it, and every other
    protocol clears a leftover (a tcp node must not silently open CUDA IPC handles)."""
    monkeypatch.delenv("MC_INTRANODE_NVLINK", raising=False)
    mooncake_engine._prepare_env(timeout_s=None, protocol="nvlink_intra")
    assert os.environ["MC_INTRANODE_NVLINK"] == "1"
    mooncake_engine._prepare_env(timeout_s=None, protocol="tcp")
    assert "MC_INTRANODE_NVLINK" not in os.environ
    with pytest.raises(ValueError, match="nvlink_intra"):
        mooncake_engine.MooncakeEngine(protocol="nvlink")
