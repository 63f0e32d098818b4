"""Latent-attention pools in the handshake and the registration: a mismatched latent width, indexer head dim,
index_topk or dtype is refused naming the field; dsa ids must be the kv ids; dsa rides with each chunk's kv."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pdpair.engine.memory.latent_pool import DSA_KIND, LatentPool
from pdpair.prefill_node.validate import expected_items, validate_registration
from pdpair.transfer import LayoutMismatch, MemoryLayout, MemoryRegion, check_compatible


def _layout(latent=576, rope=64, index_dim=128, topk=2048, dtype=torch.bfloat16) -> MemoryLayout:
    kv = LatentPool(4, 3, 16, latent, dtype, "cpu", facts={"latent_dim": latent, "rope_dim": rope})
    dsa = LatentPool(4, 3, 16, index_dim, dtype, "cpu", kind=DSA_KIND, shares="kv",
                     facts={"index_head_dim": index_dim, "index_topk": topk})
    regions = tuple(MemoryRegion(kind=r.kind, base_ptr=r.base_ptr, item_bytes=r.item_bytes, num_items=r.num_items,
                                 dtype=r.dtype, layers=r.layers) for r in (kv.region(), dsa.region()))
    return MemoryLayout("n", "s", "tcp", 16, "fp", regions)


def test_equal_latent_layouts_pair():
    check_compatible(_layout(), _layout())


@pytest.mark.parametrize("change,field", [
    (dict(latent=512 + 32), "regions[kv].latent_dim"),
    (dict(rope=32), "regions[kv].rope_dim"),
    (dict(index_dim=64), "regions[dsa].index_head_dim"),
    (dict(topk=1024), "regions[dsa].index_topk"),
    (dict(dtype=torch.float16), "regions[kv].dtype"),
])
def test_a_mismatch_names_the_field(change, field):
    with pytest.raises(LayoutMismatch) as exc:
        check_compatible(_layout(), _layout(**change))
    assert exc.value.field == field
    with pytest.raises(LayoutMismatch) as back:  # either side refuses, naming the same field
        check_compatible(_layout(**change), _layout())
    assert back.value.field == field


def test_dsa_ids_must_equal_the_kv_ids():
    expected = expected_items({"kv": None, "dsa": None}, 9, 4)
    assert expected == {"kv": 3, "dsa": 3}
    num = {"kv": 10, "dsa": 10}
    out = validate_registration([("kv", [5, 2, 7]), ("dsa", [5, 2, 7])], num, expected, companions={"dsa": "kv"})
    assert np.array_equal(out["dsa"], out["kv"])
    with pytest.raises(ValueError, match="dsa: ids must equal the kv ids.*page 1"):
        validate_registration([("kv", [5, 2, 7]), ("dsa", [5, 3, 7])], num, expected, companions={"dsa": "kv"})
