"""Copy a DeepSeek-V3.2 checkpoint (Hugging Face names) into `DeepseekCausalLM`: per-expert tensors (or the
stacked `gate_up_proj` / `down_proj` of a transformers-5 save) go into the stacked expert weights."""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn

_EXPERT = re.compile(r"^layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_STACKED = re.compile(r"^layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)$")
_IGNORED = re.compile(r"^layers\.\d+\.self_attn\.rotary_emb\.|\.inv_freq$")


def _target(name: str, params: dict[str, torch.Tensor], num_layers: int) -> tuple[str, torch.Tensor] | None:
    """(parameter name, destination view) of a checkpoint tensor; None: ignore it."""
    m = _EXPERT.match(name)
    if m:
        layer, expert, part = m.groups()
        if f"layers.{layer}.mlp.w13" not in params:
            raise ValueError(f"checkpoint tensor {name!r}: layer {layer} has no routed experts")
        if part == "down_proj":
            return f"layers.{layer}.mlp.w2", params[f"layers.{layer}.mlp.w2"][int(expert)]
        w13 = params[f"layers.{layer}.mlp.w13"][int(expert)]
        half = w13.shape[0] // 2
        return f"layers.{layer}.mlp.w13", w13[:half] if part == "gate_proj" else w13[half:]
    m = _STACKED.match(name)
    if m:
        key = f"layers.{m.group(1)}.mlp.{'w13' if m.group(2) == 'gate_up_proj' else 'w2'}"
        return (key, params[key]) if key in params else None
    if name.startswith("layers.") and int(name.split(".")[1]) >= num_layers:
        return None  # the multi-token-prediction layer of the released checkpoints
    if _IGNORED.search(name):
        return None
    return (name, params[name]) if name in params else (name, None)  # type: ignore[return-value]


def load_deepseek_weights(model: nn.Module, weights: Iterable[tuple[str, torch.Tensor]], num_layers: int) -> None:
    """Fill every parameter; ValueError on an unknown, misshapen or missing tensor."""
    params = {n: p.data for n, p in model.named_parameters()}
    params.update({n: b for n, b in model.named_buffers() if n in params})
    filled: dict[str, int] = {}
    tied = getattr(model, "lm_head", None) is None
    for hf_name, tensor in weights:
        if tied and hf_name == "lm_head.weight":
            continue
        name = hf_name.removeprefix("model.")
        if name == "lm_head.weight":
            name = "lm_head"
        hit = _target(name, params, num_layers)
        if hit is None:
            continue
        target, dest = hit
        if dest is None:
            raise ValueError(f"checkpoint tensor {hf_name!r} has no place in the model")
        if tuple(dest.shape) != tuple(tensor.shape):
            raise ValueError(f"checkpoint tensor {hf_name!r} has shape {tuple(tensor.shape)}, "
                             f"the model expects {tuple(dest.shape)}")
        dest.copy_(tensor)
        filled[target] = filled.get(target, 0) + tensor.numel()
    missing = sorted(n for n, p in params.items() if filled.get(n, 0) < p.numel())
    if missing:
        raise ValueError(f"checkpoint lacks tensors for {len(missing)} parameters, e.g. {missing[:5]}")
