"""config.json of hybrid mamba2/attention models (Bamba, GraniteMoeHybrid without experts) -> `HybridConfig`."""

from __future__ import annotations

import math
from typing import Any

from pdpair.engine.hybrid_config import HybridConfig

_MAMBA_TYPES = ("mamba", "linear_attention")
_ATTENTION_TYPES = ("attention", "full_attention")


def _mamba_layers(cfg: dict[str, Any], arch: str, num_layers: int) -> tuple[int, ...]:
    if arch == "bamba":
        attn = {int(i) for i in cfg.get("attn_layer_indices") or []}
        bad = sorted(i for i in attn if not 0 <= i < num_layers)
        if bad:
            raise ValueError(f"attn_layer_indices {bad} outside [0, {num_layers})")
        return tuple(i for i in range(num_layers) if i not in attn)
    types = cfg.get("layer_types") or cfg.get("layers_block_type") or ["mamba"] * num_layers
    if len(types) != num_layers:
        raise ValueError(f"layer_types lists {len(types)} layers, num_hidden_layers is {num_layers}")
    bad = sorted({t for t in types if t not in _MAMBA_TYPES + _ATTENTION_TYPES})
    if bad:
        raise ValueError(f"unsupported layer types {bad}; supported: mamba, attention")
    return tuple(i for i, t in enumerate(types) if t in _MAMBA_TYPES)


def _rotary_dim(cfg: dict[str, Any], arch: str, head_dim: int) -> int:
    if arch == "granitemoehybrid" and cfg.get("position_embedding_type") != "rope":
        return 0  # NoPE
    params = cfg.get("rope_parameters") or {}
    factor = float(params.get("partial_rotary_factor", cfg.get("partial_rotary_factor",
                                                               0.5 if arch == "bamba" else 1.0)))
    return int(head_dim * factor)


def _float(value: Any) -> float:
    """A number of config.json; transformers writes infinity as {"__float__": "Infinity"}."""
    if isinstance(value, dict) and "__float__" in value:
        return float(value["__float__"])
    return float(value)


def hybrid_fields(cfg: dict[str, Any], arch: str, num_layers: int, head_dim: int) -> dict[str, Any]:
    """The ModelConfig fields of a hybrid model: `hybrid` and the MLP width (Granite: the shared MLP's)."""
    if arch == "granitemoehybrid" and int(cfg.get("num_local_experts") or 0) > 0:
        raise ValueError("GraniteMoeHybrid with experts (num_local_experts > 0) is not supported; "
                         "only the dense Granite 4.0-H models are")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hybrid models need hidden_act 'silu', got {cfg.get('hidden_act')!r}")
    hidden = int(cfg["hidden_size"])
    n_heads = int(cfg.get("mamba_n_heads", 128))
    inner = int(cfg.get("mamba_expand", 2)) * hidden
    d_head = cfg.get("mamba_d_head", "auto")
    limit = cfg.get("time_step_limit") or (0.0, math.inf)
    granite = arch == "granitemoehybrid"
    hybrid = HybridConfig(
        mamba_layers=_mamba_layers(cfg, arch, num_layers),
        n_heads=n_heads,
        head_dim=inner // n_heads if d_head in (None, "auto") else int(d_head),
        n_groups=int(cfg.get("mamba_n_groups", 1)),
        d_state=int(cfg.get("mamba_d_state", 256)),
        d_conv=int(cfg.get("mamba_d_conv", 4)),
        intermediate_size=inner,
        chunk_size=int(cfg.get("mamba_chunk_size", 256)),
        conv_bias=bool(cfg.get("mamba_conv_bias", True)),
        proj_bias=bool(cfg.get("mamba_proj_bias", False)),
        dt_min=_float(limit[0]),
        dt_max=_float(limit[1]),
        rotary_dim=_rotary_dim(cfg, arch, head_dim),
        attention_multiplier=float(cfg.get("attention_multiplier", 1.0)) if granite else None,
        embedding_multiplier=float(cfg.get("embedding_multiplier", 1.0)) if granite else 1.0,
        residual_multiplier=float(cfg.get("residual_multiplier", 1.0)) if granite else 1.0,
        logits_scaling=float(cfg.get("logits_scaling", 1.0)) if granite else 1.0,
    )
    mlp = int(cfg.get("shared_intermediate_size", 1024)) if granite else int(cfg["intermediate_size"])
    return dict(hybrid=hybrid, intermediate_size=mlp)
