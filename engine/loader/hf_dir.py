"""Hugging Face model directories: config.json, *.safetensors (sharded or not), tokenizer files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from pdpair.engine.loader.tokenizer import Tokenizer, chat_eos_ids
from pdpair.engine.model_config import FULL_ATTENTION, SLIDING_ATTENTION, ModelConfig, RopeScaling
from pdpair.engine.models.registry import resolve_architecture


def _read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


def _rope(cfg: dict[str, Any], default_theta: float = 10000.0) -> tuple[float, RopeScaling | None]:
    """(theta, scaling) from `rope_parameters` (transformers >= 5) or `rope_theta` + `rope_scaling`."""
    params = dict(cfg.get("rope_parameters") or {})
    if FULL_ATTENTION in params:  # per layer type (Gemma 3): the full-attention layers' rope
        params = dict(params[FULL_ATTENTION] or {})
    scaling = dict(cfg.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", cfg.get("rope_theta", scaling.get("rope_theta", default_theta))))
    merged = {**scaling, **params}
    kind = merged.get("rope_type", merged.get("type", "default"))
    if kind == "default":
        return theta, None
    return theta, RopeScaling(
        rope_type=kind,
        factor=float(merged.get("factor", 1.0)),
        low_freq_factor=float(merged.get("low_freq_factor", 1.0)),
        high_freq_factor=float(merged.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(merged.get("original_max_position_embeddings", 8192)),
    )


def text_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The language model's part of a config.json (a multimodal `gemma3` directory nests it in text_config)."""
    if cfg.get("model_type") == "gemma3" and isinstance(cfg.get("text_config"), dict):
        inner = dict(cfg["text_config"])
        inner.setdefault("architectures", cfg.get("architectures"))
        for key in ("eos_token_id", "bos_token_id"):
            inner.setdefault(key, cfg.get(key))
        return inner
    return cfg


def _qwen3_layer_types(cfg: dict[str, Any], num_layers: int) -> tuple[tuple[str, ...], int | None]:
    """Qwen3: sliding layers only with use_sliding_window; layer_types given, or sliding from max_window_layers."""
    window = cfg.get("sliding_window")
    if not cfg.get("use_sliding_window") or window is None:
        return (), None
    types = cfg.get("layer_types") or [
        SLIDING_ATTENTION if i >= int(cfg.get("max_window_layers", num_layers)) else FULL_ATTENTION
        for i in range(num_layers)]
    return tuple(types), int(window)


def _gemma3(cfg: dict[str, Any], num_layers: int) -> dict[str, Any]:
    """The Gemma 3 text fields of ModelConfig."""
    if cfg.get("use_bidirectional_attention"):
        raise ValueError("Gemma 3 with use_bidirectional_attention=True is not supported")
    pattern = int(cfg.get("sliding_window_pattern", 6))
    types = cfg.get("layer_types") or [
        SLIDING_ATTENTION if (i + 1) % pattern else FULL_ATTENTION for i in range(num_layers)]
    params = cfg.get("rope_parameters") or {}
    local = (params.get(SLIDING_ATTENTION) or {}).get("rope_theta", cfg.get("rope_local_base_freq", 10000.0))
    final_cap = cfg.get("final_logit_softcapping")
    return dict(layer_types=tuple(types), sliding_window=int(cfg.get("sliding_window", 4096)),
                rope_local_theta=float(local), hidden_act=str(cfg.get("hidden_activation", "gelu_pytorch_tanh")),
                norm_plus_one=True, sandwich_norm=True, embed_scale=True,
                query_pre_attn_scalar=float(cfg.get("query_pre_attn_scalar", 256)),
                # attn_logit_softcapping is read but not applied by transformers' Gemma 3 (the oracle): same here
                final_logit_softcapping=float(final_cap) if final_cap is not None else None)


def hf_model_config(cfg: dict[str, Any], eos_token_ids: tuple[int, ...]) -> ModelConfig:
    cfg = text_config(cfg)
    archs = cfg.get("architectures") or [str(cfg.get("model_type", "?"))]
    arch = resolve_architecture(archs[0])
    if arch == "deepseek_v32":  # latent attention: a shape of its own
        from pdpair.engine.loader.hf_deepseek import deepseek_model_config

        return deepseek_model_config(cfg, eos_token_ids)
    if cfg.get("mlp_bias"):
        raise ValueError("mlp_bias=True is not supported")
    heads = int(cfg["num_attention_heads"])
    head_dim = int(cfg.get("head_dim") or cfg["hidden_size"] // heads)
    hybrid = {}
    if arch in ("bamba", "granitemoehybrid"):  # mamba2 layers; partial rope handled there
        from pdpair.engine.loader.hf_hybrid import hybrid_fields

        hybrid = hybrid_fields(cfg, arch, int(cfg["num_hidden_layers"]), head_dim)
    elif float(cfg.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ValueError("partial rotary embeddings (partial_rotary_factor != 1) are not supported")
    num_layers = int(cfg["num_hidden_layers"])
    if arch == "gemma3":
        extra = _gemma3(cfg, num_layers)
        theta, scaling = _rope(cfg, default_theta=1_000_000.0)
    else:
        if cfg.get("use_sliding_window") and arch != "qwen3":
            raise ValueError(f"sliding-window attention (use_sliding_window=True) is not supported for {arch}")
        types, window = _qwen3_layer_types(cfg, num_layers) if arch == "qwen3" else ((), None)
        extra = dict(layer_types=types, sliding_window=window)
        theta, scaling = _rope(cfg)
    bias = bool(cfg.get("attention_bias", False))
    return ModelConfig(
        arch=arch,
        num_layers=num_layers,
        hidden_size=int(cfg["hidden_size"]),
        num_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=head_dim,
        intermediate_size=hybrid.pop("intermediate_size", int(cfg["intermediate_size"])),
        vocab_size=int(cfg["vocab_size"]),
        context_length=int(cfg.get("max_position_embeddings", 2048)),
        rope_theta=theta,
        rope_scaling=scaling,
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        attention_bias=True if arch == "qwen2" else bias,
        o_proj_bias=False if arch == "qwen2" else bias,
        qk_norm=arch in ("qwen3", "gemma3"),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", arch == "gemma3")),
        eos_token_ids=eos_token_ids,
        bos_token_id=cfg.get("bos_token_id") if isinstance(cfg.get("bos_token_id"), int) else None,
        **extra,
        **hybrid,
    )


def _token_str(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def hf_tokenizer(root: Path, model_eos_ids: list[int]) -> Tokenizer:
    path = root / "tokenizer.json"
    if not path.is_file():
        raise ValueError(f"{root}: tokenizer.json is missing (only fast tokenizers are supported)")
    import tokenizers

    backend = tokenizers.Tokenizer.from_file(str(path))
    tcfg = _read_json(root / "tokenizer_config.json") if (root / "tokenizer_config.json").is_file() else {}
    template = tcfg.get("chat_template")
    if isinstance(template, list):  # named templates: take the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    if (root / "chat_template.jinja").is_file():
        template = (root / "chat_template.jinja").read_text(encoding="utf-8")
    bos, eos = _token_str(tcfg.get("bos_token")), _token_str(tcfg.get("eos_token"))
    eos_ids = list(model_eos_ids)
    eos_id = backend.token_to_id(eos) if eos else None
    if eos_id is not None and eos_id not in eos_ids:
        eos_ids.append(eos_id)
    return Tokenizer(backend, template, bos, eos, chat_eos_ids(backend, eos_ids, template))


def load_hf_dir(root: Path) -> tuple[ModelConfig, dict[str, Any], Tokenizer]:
    """(config, raw config.json, tokenizer) for a model directory."""
    cfg = _read_json(root / "config.json")
    resolve_architecture((cfg.get("architectures") or [str(cfg.get("model_type", "?"))])[0])  # fail fast
    eos_ids = _ids(text_config(cfg).get("eos_token_id"))
    if (root / "generation_config.json").is_file():
        eos_ids += [i for i in _ids(_read_json(root / "generation_config.json").get("eos_token_id")) if i not in eos_ids]
    tokenizer = hf_tokenizer(root, eos_ids)
    vocab = int(text_config(cfg)["vocab_size"])
    eos = tuple(i for i in tokenizer.eos_token_ids if i < vocab)
    return hf_model_config(cfg, eos), cfg, tokenizer


# a multimodal directory's language-model prefixes (transformers 5 and 4 spellings) -> the text model's
_TEXT_PREFIXES = (("model.language_model.", "model."), ("language_model.model.", "model."),
                  ("language_model.lm_head.", "lm_head."))
_NON_TEXT_PREFIXES = ("model.vision_tower.", "vision_tower.", "model.multi_modal_projector.", "multi_modal_projector.")


def _text_name(name: str) -> str | None:
    """The text model's name of a checkpoint tensor, None for a vision tower / projector tensor."""
    if name.startswith(_NON_TEXT_PREFIXES):
        return None
    for old, new in _TEXT_PREFIXES:
        if name.startswith(old):
            return new + name[len(old):]
    return name


def safetensors_weights(root: Path) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{root}: no *.safetensors files")
    for file in files:
        with safe_open(str(file), framework="pt") as fh:
            for name in fh.keys():
                text = _text_name(name)
                if text is not None:
                    yield text, fh.get_tensor(name)

