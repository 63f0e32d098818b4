"""The offline engine's dumper on SmolLM2: off by default (no hooks), on through PDPAIR_DUMP_DIR; the aligned
rows are the model's (embedding rows of the request's tokens, logits whose argmax is the greedy output), and a
one-shot run compares equal to a chunked one."""

from __future__ import annotations

import pytest
import torch
from _engine_runtime_fixtures import make_engine, one_thread
from pdpair.engine import SamplingParams
from pdpair.engine.debug import align, compare, read_runs
from pdpair.engine.debug.config import ENV_DIR, ENV_FILTER, ENV_NAME

pytestmark = pytest.mark.usefixtures("one_thread")
_ = one_thread

PROMPTS = [[1000 + 7 * i for i in range(11)], [2000 + 3 * i for i in range(6)]]
FILTER = r"^(embed|layers\.(0|29)\.(attn_out|kv\.k)|final_hidden|logits)$"


def _run(monkeypatch, root, name: str, chunk_size: int):
    monkeypatch.setenv(ENV_DIR, str(root))
    monkeypatch.setenv(ENV_NAME, name)
    monkeypatch.setenv(ENV_FILTER, FILTER)
    eng = make_engine(chunk_size=chunk_size)
    try:
        out = eng.generate(PROMPTS, SamplingParams(max_new_tokens=3, temperature=0.0))
    finally:
        eng.runner.dumper.close()  # writes what is queued and unhooks the shared model
    return eng, [o.token_ids for o in out]


def test_off_by_default_no_hooks(monkeypatch):
    monkeypatch.delenv(ENV_DIR, raising=False)
    eng = make_engine()
    assert eng.runner.dumper is None and eng.config.dump is None
    assert not any(m._forward_hooks for m in eng.model.modules())


def test_one_shot_equals_chunked_and_rows_are_the_models(monkeypatch, tmp_path):
    eng, tokens = _run(monkeypatch, tmp_path, "oneshot", 512)
    _, chunked_tokens = _run(monkeypatch, tmp_path, "chunked", 4)
    assert tokens == chunked_tokens
    assert not any(m._forward_hooks for m in eng.model.modules())

    base = align(read_runs(tmp_path / "oneshot"), "concat_steps")
    target = align(read_runs(tmp_path / "chunked"), "concat_steps")
    for i, (ids, out) in enumerate(zip(PROMPTS, tokens, strict=True)):
        rid = f"gen-{i}"
        seq = ids + out[:-1]  # the last sampled token is never fed back
        embed = base["embed"][rid]
        assert embed.positions == list(range(len(seq)))
        assert torch.equal(embed.tensor, eng.model.embed_tokens.weight[torch.tensor(seq)])
        logits = target["logits"][rid]  # one row per sampled token, at the position that produced it
        assert logits.positions == list(range(len(ids) - 1, len(seq)))
        assert logits.tensor.argmax(-1).tolist() == out
        assert base["layers.0.kv.k"][rid].tensor.shape == (len(seq), 3, 64)
    rep = compare(base, target)
    assert rep.ok, rep.text()
    assert [r.name for r in rep.results] == ["embed", "layers.0.kv.k", "layers.0.attn_out", "layers.29.kv.k",
                                             "layers.29.attn_out", "final_hidden", "logits"]
    chunked_steps = read_runs(tmp_path / "chunked")[0].records
    assert max(sum(r.extend_lens) for r in chunked_steps) <= 4 < len(PROMPTS[0])
