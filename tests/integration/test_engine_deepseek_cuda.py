"""(GPU) A tiny DeepSeek-V3.2 (MoE) on CUDA through the torch MLA ops and through the Triton kernels generates what the CPU engine generates
(fp32, prompts below and above index_topk, chunked prefill and decode in one batch)."""

from __future__ import annotations

import pytest

from tests.deepseek_models import INDEX_TOPK, VOCAB, save_deepseek

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(300)]
torch = pytest.importorskip("torch")
pytest.importorskip("transformers", reason="transformers is a test dependency: pip install -e .[test]")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["torch", "triton"])  # torch: the reference ops; triton: pdpair.kernels.mla
def test_deepseek_on_cuda_matches_cpu(tmp_path, backend):
    from pdpair.engine import Engine, SamplingParams

    save_deepseek("moe", tmp_path)
    prompts = [[(13 * i + n) % (VOCAB - 3) + 3 for i in range(n)] for n in (3, INDEX_TOPK + 1, 4 * INDEX_TOPK)]
    sp = SamplingParams(max_new_tokens=8, temperature=0.0, ignore_eos=True)
    outs = {}
    for device in ("cpu", "cuda"):
        eng = Engine.from_model(str(tmp_path), device=device, dtype="float32", page_size=4, max_pages=128,
                                chunk_size=7, max_running_requests=4,
                                attention_backend=backend if device == "cuda" else "torch")
        if device == "cuda":
            assert type(eng.runner.backend.ops).__name__ == {"torch": "TorchMLAOps", "triton": "TritonMLAOps"}[backend]
        outs[device] = [list(o.token_ids) for o in eng.generate(prompts, sp)]
        eng.pools.check_integrity()
        assert eng.pools.all_free()
    assert outs["cuda"] == outs["cpu"]
