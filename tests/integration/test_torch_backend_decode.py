"""The torch attention backend's two decode forms: padded to the batch's longest row with a length mask, and row
by row (each row's own pages only) when padding would be most of the keys read."""

from __future__ import annotations

import pytest
import torch

from tests.kernels._attention_engine_fixtures import (
    decode_batch,
    eager_logits,
    fill_kv_random,
    seeded_tiny_model,
)

pytestmark = pytest.mark.timeout(120)


def _engine():
    from pdpair.engine import Engine

    eng = Engine.from_loaded(seeded_tiny_model("llama", 3), device="cpu", page_size=4, max_pages=256,
                             attention_backend="torch", max_running_requests=8)
    fill_kv_random(eng, 2)
    return eng


@pytest.mark.parametrize("lengths,row_by_row", [([1, 2, 3, 300], True), ([290, 300, 7], False), ([299], False)])
def test_row_by_row_decode_equals_the_padded_form(lengths, row_by_row, monkeypatch):
    """A decode batch's logits through the form the fill picks (row by row for one long row among short ones,
    padded otherwise) equal the padded form's on the same batch, rows of partial last pages included."""
    import pdpair.engine.attention.torch_backend as tb

    eng = _engine()
    forms = []
    real = tb.TorchBackend._prepare_decode

    def spy(self, *a):
        view = real(self, *a)
        forms.append(view.row_pages is not None)
        return view

    monkeypatch.setattr(tb.TorchBackend, "_prepare_decode", spy)
    batch, release = decode_batch(eng, lengths, seed=len(lengths))
    try:
        picked = eager_logits(eng, batch)
        monkeypatch.setattr(tb, "ROW_BY_ROW_MAX_FILL", 0)  # never row by row
        padded = eager_logits(eng, batch)
    finally:
        release()
    assert forms == [row_by_row, False], forms
    assert torch.allclose(picked, padded, rtol=1e-5, atol=1e-5), float((picked - padded).abs().max())
    eng.pools.check_integrity()
