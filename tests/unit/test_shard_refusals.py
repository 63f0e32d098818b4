"""Ranks split the Llama/Qwen/Gemma family only: a hybrid mamba2 model refuses them with a message naming it
(its layers have no attention to split by KV heads), before any weight is touched."""

from __future__ import annotations

import json

import pytest
from pdpair.engine.distributed.shard import local_config
from pdpair.engine.loader.hf_dir import hf_model_config

from tests.hybrid_models import save_hybrid

pytest.importorskip("transformers", reason="transformers is a test dependency: pip install -e .[test]")


def test_hybrid_model_refuses_ranks(tmp_path):
    save_hybrid("bamba", tmp_path)
    config = hf_model_config(json.loads((tmp_path / "config.json").read_text()), (2,))
    assert config.hybrid is not None
    with pytest.raises(ValueError, match="bamba: tensor / data parallel ranks are not supported for hybrid"):
        local_config(config, 2, 0)
