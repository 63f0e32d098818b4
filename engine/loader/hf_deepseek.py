"""config.json of DeepSeek-V3.2 (`deepseek_v32`) -> `ModelConfig` with its `MLAConfig`."""

from __future__ import annotations

from typing import Any

from pdpair.engine.mla_config import MLAConfig, YarnRope
from pdpair.engine.model_config import ModelConfig


def _yarn(cfg: dict[str, Any]) -> tuple[float, YarnRope | None]:
    """(rope theta, YaRN scaling or None) from `rope_parameters` (transformers >= 5) or `rope_scaling`."""
    params = {**(cfg.get("rope_scaling") or {}), **(cfg.get("rope_parameters") or {})}
    theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind != "yarn":
        raise ValueError(f"deepseek_v32: unsupported rope type {kind!r}; supported: default, yarn")
    if params.get("attention_factor") is not None:
        raise ValueError("deepseek_v32: an explicit yarn attention_factor is not supported")
    original = params.get("original_max_position_embeddings")
    factor = params.get("factor")
    if original is None:
        raise ValueError("deepseek_v32: yarn rope needs original_max_position_embeddings")
    if factor is None:
        factor = int(cfg["max_position_embeddings"]) / int(original)
    return theta, YarnRope(factor=float(factor), original_max_position_embeddings=int(original),
                           beta_fast=float(params.get("beta_fast") or 32), beta_slow=float(params.get("beta_slow") or 1),
                           mscale=float(params.get("mscale") or 0), mscale_all_dim=float(params.get("mscale_all_dim") or 0),
                           truncate=bool(params.get("truncate", True)))


def _moe_layers(cfg: dict[str, Any], num_layers: int) -> tuple[int, ...]:
    types = cfg.get("mlp_layer_types")
    if types is None:
        dense = min(int(cfg.get("first_k_dense_replace", 3)), num_layers)
        types = ["dense"] * dense + ["sparse"] * (num_layers - dense)
    if len(types) != num_layers or not set(types) <= {"dense", "sparse"}:
        raise ValueError(f"deepseek_v32: mlp_layer_types must list 'dense'/'sparse' for {num_layers} layers, "
                         f"got {types!r}")
    return tuple(i for i, t in enumerate(types) if t == "sparse")


def deepseek_model_config(cfg: dict[str, Any], eos_token_ids: tuple[int, ...]) -> ModelConfig:
    if cfg.get("q_lora_rank") is None:
        raise ValueError("deepseek_v32 without q LoRA (q_lora_rank null) is not supported: the indexer reads "
                         "the q LoRA residual")
    if cfg.get("quantization_config"):
        method = (cfg["quantization_config"] or {}).get("quant_method", "?")
        raise ValueError(f"deepseek_v32: quantised checkpoints ({method}) are not supported; convert the weights to "
                         "bf16 first")
    if cfg.get("scoring_func", "sigmoid") != "sigmoid":
        raise ValueError(f"deepseek_v32: router scoring_func {cfg.get('scoring_func')!r} is not supported (sigmoid)")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ValueError(f"deepseek_v32 needs hidden_act 'silu', got {cfg.get('hidden_act')!r}")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise ValueError("deepseek_v32 with attention_bias or mlp_bias is not supported")
    num_layers = int(cfg["num_hidden_layers"])
    theta, yarn = _yarn(cfg)
    moe = _moe_layers(cfg, num_layers)
    mla = MLAConfig(
        q_lora_rank=int(cfg["q_lora_rank"]), kv_lora_rank=int(cfg["kv_lora_rank"]),
        qk_nope_head_dim=int(cfg["qk_nope_head_dim"]), qk_rope_head_dim=int(cfg["qk_rope_head_dim"]),
        v_head_dim=int(cfg["v_head_dim"]), index_n_heads=int(cfg.get("index_n_heads", 64)),
        index_head_dim=int(cfg.get("index_head_dim", 128)), index_topk=int(cfg.get("index_topk", 2048)),
        moe_layers=moe, n_routed_experts=int(cfg.get("n_routed_experts") or 0),
        n_shared_experts=int(cfg.get("n_shared_experts") or 0),
        num_experts_per_tok=int(cfg.get("num_experts_per_tok") or 0),
        moe_intermediate_size=int(cfg.get("moe_intermediate_size") or 0), n_group=int(cfg.get("n_group") or 1),
        topk_group=int(cfg.get("topk_group") or 1), routed_scaling_factor=float(cfg.get("routed_scaling_factor", 1.0)),
        norm_topk_prob=bool(cfg.get("norm_topk_prob", True)), yarn=yarn)
    bos = cfg.get("bos_token_id")
    return ModelConfig(
        arch="deepseek_v32", num_layers=num_layers, hidden_size=int(cfg["hidden_size"]),
        num_heads=int(cfg["num_attention_heads"]), num_kv_heads=1,  # one latent vector per token
        head_dim=mla.qk_rope_head_dim, intermediate_size=int(cfg["intermediate_size"]),
        vocab_size=int(cfg["vocab_size"]), context_length=int(cfg.get("max_position_embeddings", 2048)),
        rope_theta=theta, rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)), eos_token_ids=eos_token_ids,
        bos_token_id=bos if isinstance(bos, int) else None, mla=mla)
