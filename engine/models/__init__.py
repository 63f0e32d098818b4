from pdpair.engine.models.layers import GatedMLP, RMSNorm, RotaryEmbedding, rope_inv_freq
from pdpair.engine.models.llama import CausalLM, DecoderLayer
from pdpair.engine.models.registry import SUPPORTED_ARCHITECTURES, build_model, resolve_architecture

__all__ = [
    "CausalLM",
    "DecoderLayer",
    "RMSNorm",
    "RotaryEmbedding",
    "SUPPORTED_ARCHITECTURES",
    "GatedMLP",
    "build_model",
    "resolve_architecture",
    "rope_inv_freq",
]
