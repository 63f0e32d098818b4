"""Helpers for the engine runtime tests: one loaded SmolLM2 shared by every engine built in a test process."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from pdpair.engine import Engine, Request, SamplingParams
from pdpair.engine.events import ChunkEvent, StepEvent


@pytest.fixture(scope="module", autouse=False)
def one_thread():
    """Run a module's tests on one intra-op thread: on a shared 2-core box, two-thread parallel regions
    stall on descheduled workers and make small ops orders of magnitude slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.lru_cache(maxsize=1)
def loaded_smollm2():
    from pdpair.engine.loader import load_model

    return load_model("smollm2-135m", device="cpu", dtype=torch.float32)


def make_engine(**kwargs) -> Engine:
    kwargs.setdefault("max_pages", 256)
    kwargs.setdefault("attention_backend", "torch")
    return Engine.from_loaded(loaded_smollm2(), **kwargs)


def prompts(eng: Engine) -> list[list[int]]:
    """Short prompts of varied lengths (one chat-templated)."""
    tok = eng.tokenizer
    return [
        tok.apply_chat_template([{"role": "user", "content": "Name three primary colors."}]),
        tok.encode("def fibonacci(n):"),
        tok.encode("The quick brown fox jumps over the lazy dog. Then the dog"),
        tok.encode("Paris is"),
    ]


class _DenseBackend:
    """Causal SDPA over one sequence's own K/V: no cache, no pages."""

    def forward(self, q, k, v, layer, batch):
        o = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                           is_causal=True, enable_gqa=True)
        return o.transpose(0, 1)


def dense_greedy(model, ids: list[int], n: int, device: str = "cpu") -> list[int]:
    """Greedy continuation recomputing the whole sequence for every token: the cache-free reference."""
    out = list(ids)
    with torch.inference_mode():
        for _ in range(n):
            t = len(out)
            ctx = SimpleNamespace(backend=_DenseBackend(), batch=None,
                                  logits_indices=torch.tensor([t - 1], device=device))
            logits = model(torch.tensor(out, device=device), torch.arange(t, device=device), ctx)
            out.append(int(logits[0].argmax()))
    return out[len(ids):]


def run_until_done(eng: Engine, rids: set[str]) -> tuple[dict[str, list[int]], dict[str, str], list]:
    """Step until every rid finished; returns tokens, finish reasons and every event seen."""
    toks: dict[str, list[int]] = {r: [] for r in rids}
    reasons: dict[str, str] = {}
    seen = []
    while set(reasons) != rids:
        assert eng.scheduler.has_work(), f"scheduler idle with {rids - set(reasons)} unfinished"
        for ev in eng.scheduler.step():
            seen.append(ev)
            if isinstance(ev, StepEvent) and ev.rid in toks:
                toks[ev.rid].extend(ev.new_token_ids)
                if ev.finish_reason is not None:
                    reasons[ev.rid] = ev.finish_reason
    return toks, reasons, seen


def prefill_only(eng: Engine, rid: str, ids: list[int], sp: SamplingParams) -> tuple[list[ChunkEvent], Request]:
    req = Request(rid, ids, sp)
    eng.scheduler.submit(req, prefill_only=True)
    chunks: list[ChunkEvent] = []
    while not chunks or not chunks[-1].is_last:
        chunks.extend(ev for ev in eng.scheduler.step() if isinstance(ev, ChunkEvent) and ev.rid == rid)
    return chunks, req


def finish_like_colocated(prefill: Engine, decode: Engine, colocated: Engine, rid: str, ids: list[int],
                          sp: SamplingParams, first_token: int, new: int, hf=None) -> None:  # noqa: ANN001
    """The end of a hand-over twin: activate `rid` on `decode` with the prefill's first token, decode it, and
    assert it generates what `colocated` (and, when given, the transformers model `hf`) generates; then every
    engine's pools are intact and empty."""
    from tests._oracle import hf_greedy

    decode.scheduler.activate(rid, first_token)
    toks, reasons, _ = run_until_done(decode, {rid})
    colocated.scheduler.submit(Request(rid, ids, sp))
    ref, _, _ = run_until_done(colocated, {rid})
    assert toks[rid] == ref[rid] and len(toks[rid]) == new and reasons[rid] == "length"
    if hf is not None:
        assert toks[rid] == hf_greedy(hf, ids, new)
    for eng in (prefill, decode, colocated):
        eng.pools.check_integrity()
        assert eng.pools.all_free()


def tiny_loaded(device: str, dtype: torch.dtype = torch.float32, seed: int = 0):
    """A tiny random Llama-shaped model (no tokenizer) in the `LoadedModel` shape `Engine.from_loaded` takes."""
    from pdpair.engine.model_config import ModelConfig
    from pdpair.engine.models.registry import build_model

    cfg = ModelConfig(arch="llama", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16,
                      intermediate_size=96, vocab_size=512, context_length=256, eos_token_ids=(2,))
    model = build_model(cfg, dtype, device)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            init = 1 + 0.2 * torch.randn(p.shape, generator=g) if name.endswith("norm.weight") else \
                0.3 * torch.randn(p.shape, generator=g)
            p.copy_(init.to(dtype))
    return SimpleNamespace(config=cfg, model=model, tokenizer=None, model_id="tiny-llama",
                           weights_digest=f"tiny{seed}")
