"""Engine fixtures for the attention tests: seeded-weights Llama directories and hand-built decode batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

# SmolLM2-135M's shape (the embedded GGUF is too large to ship to a GPU box; the weights are seeded instead)
SMOLLM2_SHAPE = dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                     head_dim=64, intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True,
                     max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
                     bos_token_id=1, eos_token_id=2)


TINY_SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  intermediate_size=128, vocab_size=256, tie_word_embeddings=False, max_position_embeddings=512,
                  rope_theta=10000.0, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)


def make_seeded_model_dir(root: Path, seed: int = 0, shape: dict | None = None,
                          dtype: torch.dtype = torch.bfloat16) -> Path:
    """A Hugging Face Llama directory (config.json, safetensors, tokenizer.json) with seeded random weights."""
    import tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = shape or SMOLLM2_SHAPE
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**shape)).to(dtype)
    model.save_pretrained(root)
    vocab = {f"<t{i}>": i for i in range(shape["vocab_size"])}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<t0>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(root / "tokenizer.json"))
    return root


def seeded_tiny_model(arch: str, seed: int):
    """`loaded` (what `Engine.from_loaded` takes) for a 2-layer fp32 CPU model of `arch` (hidden 64, 4 heads on 2
    kv heads of 16; Qwen3 with q/k norm, Qwen2 with qkv bias), its norm weights 1 + 0.3 N(0, 1) and every other
    weight 0.2 N(0, 1), drawn from `seed`."""
    from types import SimpleNamespace

    from pdpair.engine.model_config import ModelConfig
    from pdpair.engine.models import build_model

    cfg = ModelConfig(arch=arch, num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16,
                      intermediate_size=128, vocab_size=256, context_length=512, qk_norm=arch == "qwen3",
                      attention_bias=arch == "qwen2")
    model = build_model(cfg, torch.float32, "cpu")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1 + 0.3 * noise if name.endswith("norm.weight") else 0.2 * noise)
    return SimpleNamespace(config=cfg, model=model, tokenizer=None, model_id=f"tiny-{arch}", weights_digest="t")


def tiny_triton_engine(tmpdir: str, seed: int):
    """An engine on CPU with the (interpreted) triton backend over a seeded fp32 model of `TINY_SHAPE`: page
    size 4, 64 pages, 8 running requests."""
    from pdpair.engine import Engine
    from pdpair.engine.loader import load_model

    root = make_seeded_model_dir(Path(tmpdir), seed=seed, shape=TINY_SHAPE, dtype=torch.float32)
    lm = load_model(str(root), device="cpu", dtype="float32")
    return Engine.from_loaded(lm, device="cpu", page_size=4, max_pages=64, attention_backend="triton",
                              max_running_requests=8)


def fill_kv_random(engine, gen_seed: int = 0) -> None:
    """Random K/V everywhere in the pool (never zeros: they hide indexing mistakes)."""
    torch.manual_seed(gen_seed)
    for kind in engine.pools.kinds:
        engine.pools.pool(kind).buffer.normal_()


def hold_rows(engine, lengths: list[int]):
    """Request-table rows holding `lengths[i]` tokens' pages each, from the engine's own allocators.

    Returns (rows, release); `release()` gives rows and pages back.
    """
    page = engine.config.page_size
    r2t = engine.req_to_token
    rows, held = [], []
    for n in lengths:  # every pool kind gets every page (a sliding-window view reads only its window)
        row = r2t.alloc()
        assert row is not None, "request table too small for the requested batch"
        rows.append(row)
        for kind in engine.pools.kinds:
            pages = engine.pools.allocator(kind).alloc(-(-n // page))
            assert pages is not None, "pool too small for the requested batch"
            r2t.assign_pages(row, 0, pages, kind)
            held.append((kind, pages))

    def release() -> None:
        for kind, pages in held:
            engine.pools.allocator(kind).free(pages)
        for row in rows:
            r2t.free(row)

    return np.asarray(rows), release


def decode_batch(engine, lengths: list[int], seed: int = 0):
    """A decode ForwardBatch of requests holding `lengths[i]` tokens each (the new one included).

    Pages and request-table rows come from the engine's own allocators; `release` gives them back.
    """
    from pdpair.engine.batch import ForwardBatch, ForwardMode

    rows, release = hold_rows(engine, lengths)
    gen = np.random.default_rng(seed)
    lens = np.asarray(lengths, dtype=np.int64)
    ids = gen.integers(3, engine.model_config.vocab_size, len(lengths)).tolist()
    r2t, page = engine.req_to_token, engine.config.page_size
    windowed = {k: (r2t.tables[k], w, page) for k, w in engine.runner.windows.items()}
    batch = ForwardBatch.build(ForwardMode.DECODE, rows, lens - 1, np.ones_like(lens), ids, r2t.table, windowed)
    return batch, release


def eager_logits(engine, batch) -> torch.Tensor:
    """One eager forward of `batch` through the engine's model and backend; logits of every row."""
    from pdpair.engine.batch import ForwardContext

    rows = torch.arange(batch.batch_size, device=batch.input_ids.device)
    engine.runner.backend.prepare(batch)
    with torch.inference_mode():
        return engine.runner.model(batch.input_ids, batch.positions, ForwardContext(engine.runner.backend, batch, rows))


def decode_graphs(engine, max_batch_size: int, buckets: tuple[int, ...] | None = None):
    from pdpair.engine.cuda_graph import DEFAULT_BUCKETS, DecodeCudaGraphs

    r2t = engine.req_to_token
    windows = {k: (r2t.tables[k], w, r2t.page_size) for k, w in engine.runner.windows.items()}
    graphs = DecodeCudaGraphs(engine.runner.model, engine.runner.backend, r2t.table, max_batch_size,
                              r2t.max_context, buckets or DEFAULT_BUCKETS, windows=windows)
    graphs.capture()
    return graphs


def record_sampling(monkeypatch, forced: dict | None, record: dict) -> None:
    """Make the engine's sampler record each row's logits under (seed, position) into `record` and, when
    `forced` is given, return the tokens it names instead of the argmax (teacher forcing). The sampling cache
    reuses a greedy batch's tensors, positions included (greedy rows never read them), so the true positions
    are put back into every batch here."""
    from dataclasses import replace

    import pdpair.engine.runner as runner_mod
    from pdpair.engine.sampling_cache import SamplingCache

    real_batch = SamplingCache.batch

    def batch(self, reqs, positions):
        sb = real_batch(self, reqs, positions)
        return replace(sb, positions=torch.as_tensor(np.asarray(positions), device=sb.seeds.device))

    def sample(logits, sb):
        keys = list(zip(sb.seeds.tolist(), sb.positions.tolist(), strict=True))
        for key, row in zip(keys, logits.float().cpu(), strict=True):
            assert key not in record, f"sampled twice at {key}"
            record[key] = row
        if forced is None:
            return logits.argmax(-1)
        return torch.tensor([forced[k] for k in keys], device=logits.device)

    monkeypatch.setattr(SamplingCache, "batch", batch)
    monkeypatch.setattr(runner_mod, "sample", sample)
