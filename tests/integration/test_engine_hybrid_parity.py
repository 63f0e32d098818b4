"""Hybrid mamba2/attention models (Bamba, Granite 4.0-H dense with NoPE and with rope) against transformers:
teacher-forced logits of chunked prefill (chunk boundaries inside SSD chunks), the pool slot against
transformers' cache after the prompt, greedy generation token for token through the engine."""

from __future__ import annotations

import pytest
import torch

from tests._oracle import chunked_prefill_logits, hf_greedy
from tests.hybrid_models import CASES, D_CONV, SSD_CHUNK, VOCAB, hf_state, save_hybrid

pytestmark = pytest.mark.timeout(300)
transformers = pytest.importorskip("transformers", reason="transformers is a test dependency: pip install -e .[test]")

PAGE = 4


def _prompt(n: int, salt: int = 0) -> list[int]:
    return [(97 + 131 * i + 7 * n + salt) % (VOCAB - 3) + 3 for i in range(n)]


# (prompt length, our prefill chunk): below one conv width; exactly one chunk; several chunks whose
# boundaries fall inside SSD chunks; a page multiple split mid-SSD-chunk; several SSD chunks in one go
SHAPES = [(D_CONV - 2, 16), (7, 7), (23, 5), (4 * PAGE, 3), (3 * SSD_CHUNK + 1, 64)]


@pytest.fixture(scope="module", params=CASES)
def checkpoint(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(f"hybrid-{request.param}")
    return request.param, save_hybrid(request.param, path), path


@pytest.fixture(scope="module")
def engine(checkpoint):
    from pdpair.engine import Engine

    _, _, path = checkpoint
    return Engine.from_model(str(path), device="cpu", dtype="float32", page_size=PAGE, max_pages=128,
                             attention_backend="torch", max_running_requests=8)


def test_loader_reads_the_hybrid_shape(checkpoint, engine):
    name, hf, _ = checkpoint
    cfg = engine.model_config
    hc = cfg.hybrid
    assert cfg.arch == ("bamba" if name == "bamba" else "granitemoehybrid")
    assert hc.mamba_layers == (0, 2, 3) and hc.n_groups == 2 and hc.head_dim == 16 and hc.chunk_size == SSD_CHUNK
    assert hc.rotary_dim == {"bamba": 8, "granite": 0, "granite-rope": 16}[name]
    assert engine.pools.kv.num_layers == 1  # only the attention layer keeps K/V pages
    assert engine.mamba_pool.conv.shape[1:] == (3, hc.conv_dim, D_CONV - 1)
    if name != "bamba":
        assert (hc.embedding_multiplier, hc.attention_multiplier, hc.residual_multiplier, hc.logits_scaling) == (
            1.5, 0.2, 0.7, 2.5)


@pytest.mark.parametrize("length,chunk", SHAPES)
def test_chunked_prefill_logits_and_state_match_transformers(checkpoint, engine, length, chunk):
    _, hf, _ = checkpoint
    ids = _prompt(length)
    ref, convs, ssms = hf_state(hf, ids)
    logits, row = chunked_prefill_logits(engine, ids, chunk)
    try:
        scale = ref.abs().max().item()
        err = (logits - ref).abs().max().item()
        assert err < 1e-4 * scale, f"max |logit diff| {err:.3g} vs scale {scale:.3g}"
        slot = int(engine.mamba_pool.row_slots[row])
        for i, (conv, ssm) in enumerate(zip(convs, ssms, strict=True)):
            _close(engine.mamba_pool.conv[slot, i], conv)  # the last d_conv - 1 conv inputs
            _close(engine.mamba_pool.ssm[slot, i], ssm)
    finally:
        engine.pools.allocator("mamba").free([int(engine.mamba_pool.row_slots[row])])
        engine.mamba_pool.unbind(row)
        engine.req_to_token.free(row)
        engine.pools.allocator("kv").free(engine.req_to_token.table[row, ::PAGE][: -(-length // PAGE)].numpy() // PAGE)


def test_greedy_generation_matches_transformers(checkpoint, engine):
    """Mixed batch: every prompt shape at once, chunked at 5 tokens (continuous batching of prefill and decode)."""
    from pdpair.engine import Engine, SamplingParams

    _, hf, path = checkpoint
    eng = Engine.from_loaded(engine_loaded(engine), device="cpu", page_size=PAGE, max_pages=128, chunk_size=5,
                             attention_backend="torch", max_running_requests=8)
    prompts = [_prompt(n, salt=3) for n, _ in SHAPES]
    outs = eng.generate(prompts, SamplingParams(max_new_tokens=8, temperature=0.0, ignore_eos=True))
    for ids, out in zip(prompts, outs, strict=True):
        ref = hf_greedy(hf, ids, 8)
        assert list(out.token_ids) == ref, f"prompt of {len(ids)} tokens"
    eng.pools.check_integrity()
    assert eng.pools.all_free() and eng.pools.kinds == ("kv", "mamba")  # every page and state slot is back


def _close(got: torch.Tensor, ref: torch.Tensor) -> None:
    """Equal up to fp32 summation order, relative to the tensor's scale."""
    torch.testing.assert_close(got, ref, rtol=0, atol=2e-5 * max(1.0, ref.abs().max().item()))


def engine_loaded(engine):
    from types import SimpleNamespace

    return SimpleNamespace(config=engine.model_config, model=engine.model, tokenizer=engine.tokenizer,
                           model_id=engine.model_id, weights_digest="test")

