"""The shape of a hybrid mamba2/attention model (Bamba, Granite 4.0-H dense) beyond `ModelConfig`."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class HybridConfig:
    """Mamba2 mixer shape, which layers are mamba layers, and the attention/residual details of the family.

    The recurrent state of one request, per mamba layer: conv state [conv_dim, d_conv - 1] (the last
    d_conv - 1 inputs of the causal conv, as the next step reads them) and SSM state [n_heads, head_dim, d_state].
    """

    mamba_layers: tuple[int, ...]
    n_heads: int
    head_dim: int
    n_groups: int
    d_state: int
    d_conv: int
    intermediate_size: int  # mamba_expand * hidden_size = n_heads * head_dim
    chunk_size: int  # SSD chunk length of the prefill scan
    conv_bias: bool = True
    proj_bias: bool = False
    dt_min: float = 0.0  # time_step_limit
    dt_max: float = math.inf
    # attention layers: rope on the first `rotary_dim` dims of a head (None: all of them, 0: no rope)
    rotary_dim: int | None = None
    attention_multiplier: float | None = None  # attention scale (None: head_dim ** -0.5)
    embedding_multiplier: float = 1.0
    residual_multiplier: float = 1.0
    logits_scaling: float = 1.0  # logits are divided by it

    def __post_init__(self) -> None:
        for name in ("n_heads", "head_dim", "n_groups", "d_state", "d_conv", "intermediate_size", "chunk_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"HybridConfig.{name} must be a positive int, got {value!r}")
        if not isinstance(self.mamba_layers, tuple) or not self.mamba_layers:
            raise ValueError(f"HybridConfig.mamba_layers must be a non-empty tuple, got {self.mamba_layers!r}")
        if self.n_heads * self.head_dim != self.intermediate_size:
            raise ValueError(f"mamba n_heads ({self.n_heads}) x head_dim ({self.head_dim}) != "
                             f"intermediate_size ({self.intermediate_size})")
        if self.n_heads % self.n_groups or self.intermediate_size % self.n_groups:
            raise ValueError(f"mamba n_groups ({self.n_groups}) must divide n_heads ({self.n_heads})")
        if self.d_conv < 2:
            raise ValueError(f"mamba d_conv must be >= 2, got {self.d_conv}")
        if not 0 <= self.dt_min <= self.dt_max:
            raise ValueError(f"time_step_limit must satisfy 0 <= min <= max, got ({self.dt_min}, {self.dt_max})")
        if self.rotary_dim is not None and (self.rotary_dim < 0 or self.rotary_dim % 2):
            raise ValueError(f"rotary_dim must be even and >= 0, got {self.rotary_dim}")
        for name in ("embedding_multiplier", "residual_multiplier", "logits_scaling"):
            if not getattr(self, name) > 0:
                raise ValueError(f"HybridConfig.{name} must be > 0, got {getattr(self, name)!r}")

    @property
    def conv_dim(self) -> int:
        """Channels of the causal conv: x, B and C."""
        return self.intermediate_size + 2 * self.n_groups * self.d_state

    @property
    def num_mamba_layers(self) -> int:
        return len(self.mamba_layers)

    def is_mamba(self, layer: int) -> bool:
        return layer in self.mamba_layers

    def attention_layers(self, num_layers: int) -> tuple[int, ...]:
        return tuple(i for i in range(num_layers) if i not in self.mamba_layers)

    @property
    def conv_state_shape(self) -> tuple[int, int, int]:
        """One request's conv state for every mamba layer."""
        return (self.num_mamba_layers, self.conv_dim, self.d_conv - 1)

    @property
    def ssm_state_shape(self) -> tuple[int, int, int, int]:
        """One request's SSM state for every mamba layer."""
        return (self.num_mamba_layers, self.n_heads, self.head_dim, self.d_state)
