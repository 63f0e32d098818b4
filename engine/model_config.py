"""The model's shape, as the runtime needs it: one frozen dataclass built by the loaders."""

from __future__ import annotations

from dataclasses import dataclass

from pdpair.engine.hybrid_config import HybridConfig
from pdpair.engine.mla_config import MLAConfig

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
FULL_ATTENTION = "full_attention"
SLIDING_ATTENTION = "sliding_attention"
SUPPORTED_ACTIVATIONS = ("silu", "gelu_pytorch_tanh")


@dataclass(frozen=True)
class RopeScaling:
    """Rotary frequency scaling (Hugging Face `rope_scaling` / `rope_parameters`)."""

    rope_type: str = "default"
    factor: float = 1.0
    # llama3 only
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self) -> None:
        if self.rope_type not in SUPPORTED_ROPE_TYPES:
            raise ValueError(
                f"unsupported rope scaling type {self.rope_type!r}; supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
            )
        if self.factor <= 0:
            raise ValueError(f"rope scaling factor must be > 0, got {self.factor}")
        if self.rope_type == "llama3" and not self.high_freq_factor > self.low_freq_factor:
            raise ValueError(
                f"llama3 rope scaling needs high_freq_factor > low_freq_factor, "
                f"got {self.high_freq_factor} <= {self.low_freq_factor}"
            )


@dataclass(frozen=True)
class ModelConfig:
    """Decoder-only transformer shape (Llama / Qwen2 / Qwen3 / Gemma 3 text)."""

    arch: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    context_length: int
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # bias on q/k/v projections (Qwen2; Llama with attention_bias)
    o_proj_bias: bool = False  # bias on the output projection (Llama with attention_bias)
    hybrid: HybridConfig | None = None  # mamba2 layers and family details of a hybrid model (Bamba, Granite 4.0-H)
    mla: MLAConfig | None = None  # latent attention, indexer and MoE of DeepSeek-V3.2 (head_dim: the rope part)
    qk_norm: bool = False  # per-head RMSNorm on q and k before rope (Qwen3)
    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None
    # sliding-window attention: per-layer "full_attention" / "sliding_attention" (empty: all full);
    # a sliding layer's query at position q sees keys k with q - sliding_window < k <= q
    layer_types: tuple[str, ...] = ()
    sliding_window: int | None = None
    rope_local_theta: float | None = None  # rope base of sliding layers (Gemma 3); None: rope_theta
    # Gemma 3 text
    hidden_act: str = "silu"
    norm_plus_one: bool = False  # RMSNorm scales by (1 + w)
    sandwich_norm: bool = False  # post-attention, pre- and post-feed-forward norms
    embed_scale: bool = False  # embeddings times sqrt(hidden_size)
    query_pre_attn_scalar: float | None = None  # attention scale = this ** -0.5 (None: head_dim)
    final_logit_softcapping: float | None = None
    attn_logit_softcapping: float | None = None

    def __post_init__(self) -> None:
        for name in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim",
                     "intermediate_size", "vocab_size", "context_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")
        if self.num_heads % self.num_kv_heads != 0:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        if self.head_dim % 2 != 0:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if self.rope_theta <= 0:
            raise ValueError(f"rope_theta must be > 0, got {self.rope_theta}")
        if self.rms_norm_eps <= 0:
            raise ValueError(f"rms_norm_eps must be > 0, got {self.rms_norm_eps}")
        if not isinstance(self.eos_token_ids, tuple):
            raise ValueError(f"eos_token_ids must be a tuple, got {type(self.eos_token_ids).__name__}")
        for tid in self.eos_token_ids:
            if not 0 <= tid < self.vocab_size:
                raise ValueError(f"eos token id {tid} outside the vocabulary [0, {self.vocab_size})")
        if self.bos_token_id is not None and not 0 <= self.bos_token_id < self.vocab_size:
            raise ValueError(f"bos token id {self.bos_token_id} outside the vocabulary [0, {self.vocab_size})")
        self._check_attention_mix()

    def _check_attention_mix(self) -> None:
        if not isinstance(self.layer_types, tuple):
            raise ValueError(f"layer_types must be a tuple, got {type(self.layer_types).__name__}")
        if self.layer_types and len(self.layer_types) != self.num_layers:
            raise ValueError(f"layer_types lists {len(self.layer_types)} layers, the model has {self.num_layers}")
        bad = sorted({t for t in self.layer_types if t not in (FULL_ATTENTION, SLIDING_ATTENTION)})
        if bad:
            raise ValueError(f"unsupported layer types {bad}; supported: {FULL_ATTENTION}, {SLIDING_ATTENTION}")
        if self.swa_layers and (not isinstance(self.sliding_window, int) or self.sliding_window <= 0):
            raise ValueError(f"sliding layers need a positive sliding_window, got {self.sliding_window!r}")
        if self.swa_layers and not self.full_layers:
            raise ValueError("a model whose every layer is sliding-window is not supported (no full-attention layer)")
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise ValueError(f"unsupported activation {self.hidden_act!r}; supported: {', '.join(SUPPORTED_ACTIVATIONS)}")
        for name in ("query_pre_attn_scalar", "final_logit_softcapping", "attn_logit_softcapping"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"ModelConfig.{name} must be > 0 when set, got {value!r}")

    def is_sliding(self, layer: int) -> bool:
        return bool(self.layer_types) and self.layer_types[layer] == SLIDING_ATTENTION

    @property
    def swa_layers(self) -> tuple[int, ...]:
        """Layers with sliding-window attention, in order."""
        return tuple(i for i in range(self.num_layers) if self.is_sliding(i))

    @property
    def full_layers(self) -> tuple[int, ...]:
        """Layers attending over the whole context, in order (a hybrid model's mamba layers are not)."""
        mamba = self.hybrid.mamba_layers if self.hybrid is not None else ()
        return tuple(i for i in range(self.num_layers) if not self.is_sliding(i) and i not in mamba)

    @property
    def attn_scale(self) -> float:
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim
