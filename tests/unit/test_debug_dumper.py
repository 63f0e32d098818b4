"""The dumper without a model: step and name filters, the manifest and record format, files loadable with
weights_only, a clear error for an unwritable directory, a failed write that turns dumping off instead of
failing the step; the daemons' --dump-* flags."""

from __future__ import annotations

import errno
import logging

import pytest
import torch
from pdpair.decode_node.main import build_parser as decode_parser
from pdpair.engine.debug import DumpConfig, DumpDirError, Dumper, parse_steps, read_runs
from pdpair.engine.debug import writer as writer_mod
from pdpair.engine.debug.config import ENV_CORRUPT_PAGE, corrupt_page_spec
from pdpair.node.config import config_from_args

from tests.unit._dump_fixtures import record


def test_parse_steps():
    assert parse_steps("") == parse_steps("all") == ()
    assert parse_steps("0-3, 7,10-") == ((0, 3), (7, 7), (10, -1))
    cfg = DumpConfig(dir="/x", run_name="r", steps=parse_steps("1-2,4,9-"))
    assert [s for s in range(12) if cfg.wants_step(s)] == [1, 2, 4, 9, 10, 11]
    for bad in ("a", "3-1", "1,,2", "-4"):
        with pytest.raises(ValueError, match="dump steps"):
            parse_steps(bad)


def test_config_validation():
    with pytest.raises(ValueError, match="not a valid regex"):
        DumpConfig(dir="/x", run_name="r", filter="(")
    with pytest.raises(ValueError, match="plain directory name"):
        DumpConfig(dir="/x", run_name="a/b")
    assert DumpConfig.build(None, "decode") is None
    assert DumpConfig.build("/x", "decode").run_name.startswith("decode-")


def test_steps_and_names_are_filtered_and_files_load_with_weights_only(tmp_path):
    dumper = Dumper.start(DumpConfig(dir=str(tmp_path), run_name="run", filter=r"^(a|c)$", steps=((1, 2),)))
    for step in range(4):
        dumper.begin(record(step, ["r"], [step + 1], [1]))
        for name in ("a", "b", "c"):
            dumper.dump(name, torch.full((1, 3), float(step)), "logits" if name == "c" else "token")
        dumper.end()
    dumper.close()
    dumper.begin(record(2, ["r"], [3], [1]))  # after close: nothing more is written
    dumper.dump("a", torch.zeros(1, 3))
    dumper.end()
    (run,) = read_runs(tmp_path)
    assert run.manifest.run_name == "run" and run.manifest.filter == r"^(a|c)$"
    assert [(r.step, r.tensors) for r in run.records] == [(s, {"a": "token", "c": "logits"}) for s in (1, 2)]
    assert sorted(p.name for p in (tmp_path / "run").glob("*.pt")) == [
        "s000001.r0.a.pt", "s000001.r0.c.pt", "s000002.r0.a.pt", "s000002.r0.c.pt"]
    t = torch.load(tmp_path / "run" / "s000002.r0.a.pt", weights_only=True)
    assert torch.equal(t, torch.full((1, 3), 2.0))


def test_dumped_tensor_is_a_copy(tmp_path):
    """The forward reuses its buffers: what is written is the value at dump time."""
    dumper = Dumper.start(DumpConfig(dir=str(tmp_path), run_name="run"))
    buf = torch.zeros(2, 4)
    dumper.begin(record(0, ["r"], [2], [2]))
    dumper.dump("x", buf[:, ::2])  # a strided view of a bigger buffer
    buf.fill_(7.0)
    dumper.end()
    dumper.close()
    t = torch.load(tmp_path / "run" / "s000000.r0.x.pt", weights_only=True)
    assert torch.equal(t, torch.zeros(2, 2)) and t.untyped_storage().nbytes() == 2 * 2 * 4


def test_unwritable_dir_is_a_clear_startup_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(DumpDirError, match=f"tensor dump directory {blocker}/run is not writable"):
        Dumper.start(DumpConfig(dir=str(blocker), run_name="run"))
    args = decode_parser().parse_args(["--dump-dir", str(blocker)])
    with pytest.raises(ValueError, match="is not writable"):  # run_cli turns it into a usage error, exit 2
        config_from_args("decode", args)


def test_a_full_disk_is_logged_and_turns_dumping_off(tmp_path, monkeypatch, caplog):
    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    dumper = Dumper.start(DumpConfig(dir=str(tmp_path), run_name="run"))
    monkeypatch.setattr(writer_mod.torch, "save", full)
    with caplog.at_level(logging.ERROR):
        for step in range(3):  # steps go on; nothing raises
            dumper.begin(record(step, ["r"], [1], [1]))
            dumper.dump("x", torch.ones(1, 2))
            dumper.end()
        dumper.close()
    assert dumper.writer.failed
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "No space left on device" in errors[0].getMessage()
    assert str(tmp_path / "run") in errors[0].getMessage()


def test_node_dump_flags():
    args = decode_parser().parse_args([])
    assert config_from_args("decode", args).dump is None
    args = decode_parser().parse_args(["--dump-dir", "/tmp/pdpair-dump-flags", "--dump-filter", "^layers\\.0\\.",
                                       "--dump-steps", "0-4", "--dump-name", "colocated"])
    cfg = config_from_args("decode", args).dump
    assert (cfg.dir, cfg.filter, cfg.steps, cfg.run_name, cfg.role) == (
        "/tmp/pdpair-dump-flags", "^layers\\.0\\.", ((0, 4),), "colocated", "decode")


def test_corrupt_page_spec(monkeypatch):
    monkeypatch.delenv(ENV_CORRUPT_PAGE, raising=False)
    assert corrupt_page_spec() is None
    monkeypatch.setenv(ENV_CORRUPT_PAGE, "kv:3")
    assert corrupt_page_spec() == ("kv", 3)
    monkeypatch.setenv(ENV_CORRUPT_PAGE, "kv")
    with pytest.raises(ValueError, match="expected kind:index"):
        corrupt_page_spec()
