"""DeepSeek-V3.2 (MLA latent KV, DSA indexer, MoE) against transformers: teacher-forced logits of chunked
prefill with contexts below and well above index_topk, the sparsity really selecting, greedy generation token
for token through the engine (all-dense, MoE, and MoE with YaRN rope checkpoints)."""

from __future__ import annotations

import pytest
import torch

from tests._oracle import chunked_prefill_logits, hf_greedy
from tests.deepseek_models import CASES, INDEX_TOPK, VOCAB, save_deepseek

pytestmark = pytest.mark.timeout(300)
transformers = pytest.importorskip("transformers", reason="transformers is a test dependency: pip install -e .[test]")

PAGE = 4


def _prompt(n: int, salt: int = 0) -> list[int]:
    return [(97 + 131 * i + 7 * n + salt) % (VOCAB - 3) + 3 for i in range(n)]


# (prompt length, our prefill chunk): shorter than index_topk; one chunk well above it; chunks crossing it
# and page boundaries
SHAPES = [(INDEX_TOPK - 3, 16), (37, 37), (29, 5)]


@pytest.fixture(scope="module", params=sorted(CASES))
def checkpoint(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(f"deepseek-{request.param}")
    return request.param, save_deepseek(request.param, path), path


@pytest.fixture(scope="module")
def engine(checkpoint):
    from pdpair.engine import Engine

    return Engine.from_model(str(checkpoint[2]), device="cpu", dtype="float32", page_size=PAGE, max_pages=128,
                             attention_backend="torch", max_running_requests=8)


def test_loader_reads_the_deepseek_shape(checkpoint, engine):
    name, _, _ = checkpoint
    cfg, mla = engine.model_config, engine.model_config.mla
    assert cfg.arch == "deepseek_v32" and mla.latent_dim == 32 + 16 and mla.index_topk == INDEX_TOPK
    assert mla.moe_layers == {"dense": (), "moe": (1, 2), "yarn": (1,)}[name]
    assert (mla.yarn is not None) == (name == "yarn")
    assert engine.pools.kv.buffer.shape[1:] == (cfg.num_layers, PAGE, mla.latent_dim)  # one latent per token
    dsa = engine.pools.pool("dsa")
    assert dsa.buffer.shape[1:] == (cfg.num_layers, PAGE, mla.index_head_dim)
    assert engine.pools.companions == {"dsa": "kv"} and engine.pools.kinds == ("kv",)  # no allocator of its own


@pytest.mark.parametrize("length,chunk", SHAPES)
def test_chunked_prefill_logits_match_transformers(checkpoint, engine, length, chunk):
    _, hf, _ = checkpoint
    ids = _prompt(length)
    with torch.inference_mode():
        ref = hf(torch.tensor([ids])).logits[0].float()
    logits, row = chunked_prefill_logits(engine, ids, chunk)
    try:
        scale = ref.abs().max().item()
        err = (logits - ref).abs().max().item()
        assert err < 1e-4 * scale, f"max |logit diff| {err:.3g} vs scale {scale:.3g}"
        assert torch.equal(logits.argmax(-1), ref.argmax(-1))
    finally:
        engine.req_to_token.free(row)
        engine.pools.allocator("kv").free(engine.req_to_token.table[row, ::PAGE][: -(-length // PAGE)].numpy() // PAGE)


def test_the_indexer_really_selects(checkpoint):
    """Past index_topk tokens the top-k mask changes the logits: a dense reference would not pass the test above."""
    _, hf, _ = checkpoint
    ids = _prompt(37)
    dense = transformers.DeepseekV32ForCausalLM(hf.config.__class__(**{**hf.config.to_dict(), "index_topk": 1024}))
    dense.load_state_dict(hf.state_dict())
    dense.eval().config._attn_implementation = "eager"
    with torch.inference_mode():
        sparse_logits, dense_logits = hf(torch.tensor([ids])).logits[0], dense(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(sparse_logits[:INDEX_TOPK], dense_logits[:INDEX_TOPK], rtol=0, atol=1e-4)
    assert (sparse_logits[INDEX_TOPK + 4 :] - dense_logits[INDEX_TOPK + 4 :]).abs().amax(-1).min() > 1e-3


def test_greedy_generation_matches_transformers(checkpoint, engine):
    """Mixed batch, chunked at 5 tokens (continuous batching of prefill and decode), decode crossing index_topk."""
    from pdpair.engine import SamplingParams

    _, hf, _ = checkpoint
    prompts = [_prompt(n, salt=3) for n in (3, 6, 21)]
    outs = engine.generate(prompts, SamplingParams(max_new_tokens=8, temperature=0.0, ignore_eos=True))
    for ids, out in zip(prompts, outs, strict=True):
        ref = hf_greedy(hf, ids, 8)
        assert list(out.token_ids) == ref, f"prompt of {len(ids)} tokens: {list(out.token_ids)} != {ref}"
    engine.pools.check_integrity()
    assert engine.pools.all_free()
