"""The shape of a DeepSeek-V3.2 model (MLA, the DSA lightning indexer, the MoE) beyond `ModelConfig`."""

from __future__ import annotations

import math
from dataclasses import dataclass


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's magnitude correction for a context stretched `factor` times (1 when not stretched)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


@dataclass(frozen=True)
class YarnRope:
    """YaRN rotary scaling of the rope part (DeepSeek's `rope_parameters` with rope_type "yarn")."""

    factor: float
    original_max_position_embeddings: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 1.0
    mscale_all_dim: float = 0.0
    truncate: bool = True

    @property
    def attention_factor(self) -> float:
        """What cos/sin are multiplied by."""
        if self.mscale and self.mscale_all_dim:
            return yarn_mscale(self.factor, self.mscale) / yarn_mscale(self.factor, self.mscale_all_dim)
        return yarn_mscale(self.factor)


@dataclass(frozen=True)
class MLAConfig:
    """Multi-head latent attention, the indexer and the MoE of DeepSeek-V3.2.

    The KV cache holds one latent vector per token and layer: the normalised compressed KV (`kv_lora_rank`)
    followed by the roped shared key part (`qk_rope_head_dim`). The indexer cache holds one key of
    `index_head_dim` per token and layer.
    """

    q_lora_rank: int
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    index_n_heads: int
    index_head_dim: int
    index_topk: int
    moe_layers: tuple[int, ...]  # layers with the routed MoE (the others: a dense MLP)
    n_routed_experts: int = 0
    n_shared_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    norm_topk_prob: bool = True
    yarn: YarnRope | None = None

    def __post_init__(self) -> None:
        for name in ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
                     "index_n_heads", "index_head_dim", "index_topk"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"MLAConfig.{name} must be a positive int, got {value!r}")
        if self.qk_rope_head_dim % 2 or self.qk_rope_head_dim > self.index_head_dim:
            raise ValueError(f"qk_rope_head_dim ({self.qk_rope_head_dim}) must be even and at most "
                             f"index_head_dim ({self.index_head_dim})")
        if self.moe_layers:
            for name in ("n_routed_experts", "num_experts_per_tok", "moe_intermediate_size", "n_group", "topk_group"):
                if getattr(self, name) <= 0:
                    raise ValueError(f"MoE layers need a positive {name}, got {getattr(self, name)!r}")
            if self.n_routed_experts % self.n_group or self.topk_group > self.n_group:
                raise ValueError(f"n_group ({self.n_group}) must divide n_routed_experts ({self.n_routed_experts}) "
                                 f"and be >= topk_group ({self.topk_group})")
            if self.num_experts_per_tok > self.n_routed_experts // self.n_group * self.topk_group:
                raise ValueError(f"num_experts_per_tok ({self.num_experts_per_tok}) exceeds the experts of "
                                 f"{self.topk_group} groups")

    @property
    def latent_dim(self) -> int:
        """Width of one cached latent vector: compressed KV then the rope part."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def softmax_scale(self) -> float:
        """qk_head_dim ** -0.5, times mscale(factor, mscale_all_dim) squared under YaRN."""
        scale = self.qk_head_dim**-0.5
        if self.yarn is not None and self.yarn.mscale_all_dim:
            scale *= yarn_mscale(self.yarn.factor, self.yarn.mscale_all_dim) ** 2
        return scale

    def is_moe(self, layer: int) -> bool:
        return layer in self.moe_layers
