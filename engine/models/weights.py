"""Copy Hugging Face-named checkpoint tensors into a `CausalLM`, fusing q/k/v and gate/up."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from pdpair.engine.models.llama import CausalLM

# checkpoint sub-name -> (fused sub-name, shard index); shard offsets come from the config
_FUSED = {
    "self_attn.q_proj": ("self_attn.qkv_proj", 0),
    "self_attn.k_proj": ("self_attn.qkv_proj", 1),
    "self_attn.v_proj": ("self_attn.qkv_proj", 2),
    "mlp.gate_proj": ("mlp.gate_up_proj", 0),
    "mlp.up_proj": ("mlp.gate_up_proj", 1),
}
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def _shard_bounds(model: CausalLM, fused: str, shard: int) -> tuple[int, int]:
    cfg = model.config
    if fused == "self_attn.qkv_proj":
        sizes = (cfg.q_size, cfg.kv_size, cfg.kv_size)
    else:
        sizes = (cfg.intermediate_size, cfg.intermediate_size)
    start = sum(sizes[:shard])
    return start, start + sizes[shard]


def load_hf_weights(model: CausalLM, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Fill every parameter of `model` from `weights`; raise ValueError on missing/unknown/misshapen tensors."""
    params = dict(model.named_parameters())
    expected: set[tuple[str, int]] = set()
    for name in params:
        sub = name.split(".", 2)[-1].rsplit(".", 1)[0] if name.startswith("layers.") else ""
        shards = 3 if sub == "self_attn.qkv_proj" else 2 if sub == "mlp.gate_up_proj" else 1
        expected.update((name, s) for s in range(shards))
    loaded: set[tuple[str, int]] = set()
    tied = model.lm_head is None
    for hf_name, tensor in weights:
        if hf_name.endswith(_IGNORED_SUFFIXES) or (tied and hf_name == "lm_head.weight"):
            continue
        name = hf_name.removeprefix("model.")
        if name == "lm_head.weight":
            name = "lm_head"
        target, shard, bounds = name, 0, None
        parts = name.split(".")
        if len(parts) == 5 and parts[0] == "layers":
            key = f"{parts[2]}.{parts[3]}"
            if key in _FUSED:
                fused, shard = _FUSED[key]
                target = f"layers.{parts[1]}.{fused}.{parts[4]}"
                bounds = _shard_bounds(model, fused, shard)
        if target not in params:
            raise ValueError(f"checkpoint tensor {hf_name!r} has no place in the model")
        dest = params[target].data if bounds is None else params[target].data[bounds[0] : bounds[1]]
        if tuple(dest.shape) != tuple(tensor.shape):
            raise ValueError(
                f"checkpoint tensor {hf_name!r} has shape {tuple(tensor.shape)}, the model expects {tuple(dest.shape)}"
            )
        dest.copy_(tensor)
        loaded.add((target, shard))
    missing = sorted({name for name, _ in expected - loaded})
    if missing:
        raise ValueError(f"checkpoint lacks tensors for {len(missing)} parameters, e.g. {missing[:5]}")
