"""Hugging Face names of Bamba and GraniteMoeHybrid checkpoints -> the Llama-style names `load_hf_weights` takes."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

# substring renames (Bamba's feed-forward naming, Granite's shared MLP output)
_RENAMES = (
    (".feed_forward.", ".mlp."),
    (".pre_ff_layernorm.", ".post_attention_layernorm."),
    (".shared_mlp.output_linear.", ".mlp.down_proj."),
    ("model.final_layernorm.", "model.norm."),
)
_GRANITE_GATE_UP = ".shared_mlp.input_linear."


def hybrid_hf_names(weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """Rename on the fly; Granite's fused `input_linear` [2I, H] becomes `gate_proj` (first half) and `up_proj`."""
    for name, tensor in weights:
        if _GRANITE_GATE_UP in name:
            gate, up = tensor.chunk(2, dim=0)
            yield name.replace(_GRANITE_GATE_UP, ".mlp.gate_proj."), gate
            yield name.replace(_GRANITE_GATE_UP, ".mlp.up_proj."), up
            continue
        for old, new in _RENAMES:
            name = name.replace(old, new)
        yield name, tensor
