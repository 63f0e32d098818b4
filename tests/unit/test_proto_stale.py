"""The checked-in generated modules must match pdpair.proto (`make proto` regenerates them)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_generator():
    spec = importlib.util.spec_from_file_location("pdpair_proto_generate", ROOT / "proto" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_generated_modules_are_fresh(tmp_path):
    pytest.importorskip("grpc_tools")
    gen = _load_generator()
    for fresh in gen.generate(tmp_path):
        checked_in = ROOT / "proto" / fresh.name
        assert checked_in.exists(), f"{checked_in} missing: run `make proto`"
        assert fresh.read_text() == checked_in.read_text(), f"{checked_in.name} is stale: run `make proto`"


def test_generated_grpc_module_imports_the_package_path():
    from pdpair.proto import pdpair_pb2, pdpair_pb2_grpc

    assert hasattr(pdpair_pb2_grpc, "PrefillNodeStub") and hasattr(pdpair_pb2_grpc, "DecodeNodeStub")
    msg = pdpair_pb2.PrefillRequest(rid="r", token_ids=[1, 2, 3])
    assert pdpair_pb2.PrefillRequest.FromString(msg.SerializeToString()).token_ids == [1, 2, 3]
