"""EngineConfig validation and the resolution of "auto" values."""

import dataclasses

import pytest
import torch
from pdpair.engine import EngineConfig
from pdpair.engine.config import dtype_name, resolve_backend, resolve_max_pages


def test_config_is_frozen_and_validated():
    cfg = EngineConfig(page_size=4, max_pages=10)
    assert cfg.torch_dtype == torch.float32
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.page_size = 8
    for bad in (dict(page_size=0), dict(max_pages=-1), dict(chunk_size=0), dict(dtype="int8"),
                dict(attention_backend="auto")):
        with pytest.raises(ValueError):
            EngineConfig(**bad)


def test_resolution():
    assert dtype_name(torch.bfloat16) == "bfloat16"
    with pytest.raises(ValueError):
        dtype_name(torch.int8)
    assert resolve_backend("auto", "cpu") == "torch"
    assert resolve_backend("torch", "cuda") == "torch"
    pages = resolve_max_pages("cpu", page_bytes=1 << 20, mem_fraction=0.01)
    assert pages >= 1
    with pytest.raises(ValueError):
        resolve_max_pages("cpu", 1 << 20, mem_fraction=0)
