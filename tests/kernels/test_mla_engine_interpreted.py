"""The DeepSeek-V3.2 engine through the MLA Triton kernels (`TritonMLAOps`, what CUDA runs) under the Triton
interpreter on CPU: the same greedy tokens as through the torch reference ops, with prompts below and well
above index_topk so the dense decode, the sparse attention and the indexer top-k kernels all run inside the
real engine (its pools, batches and dtypes)."""

from __future__ import annotations

import pytest
from _attention_fixtures import interpreted

pytest.importorskip("transformers", reason="transformers is a test dependency: pip install -e .[test]")


def _generate(path: str, ops_name: str) -> list[list[int]]:
    from pdpair.engine import Engine, SamplingParams
    from pdpair.engine.attention.mla_ops import TorchMLAOps, TritonMLAOps

    from tests.deepseek_models import INDEX_TOPK, VOCAB

    prompts = [[(13 * i + n) % (VOCAB - 3) + 3 for i in range(n)] for n in (3, INDEX_TOPK + 1, 4 * INDEX_TOPK)]
    eng = Engine.from_model(path, device="cpu", dtype="float32", page_size=4, max_pages=128, chunk_size=7,
                            max_running_requests=4, attention_backend="torch")
    eng.runner.backend.ops = {"torch": TorchMLAOps, "triton": TritonMLAOps}[ops_name]()
    outs = eng.generate(prompts, SamplingParams(max_new_tokens=8, temperature=0.0, ignore_eos=True))
    eng.pools.check_integrity()
    return [list(o.token_ids) for o in outs]


def test_engine_through_the_mla_kernels_matches_the_torch_ops(tmp_path):
    from tests.deepseek_models import save_deepseek

    save_deepseek("moe", tmp_path)
    want = _generate(str(tmp_path), "torch")
    assert interpreted(_generate, str(tmp_path), "triton") == want
