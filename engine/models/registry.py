"""Supported architectures and the model builder."""

from __future__ import annotations

import torch
from pdpair.engine.model_config import ModelConfig
from pdpair.engine.models.llama import CausalLM

# Hugging Face `architectures[0]` -> our arch name; all share the one decoder family.
SUPPORTED_ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Gemma3ForCausalLM": "gemma3",
    "Gemma3ForConditionalGeneration": "gemma3",  # the text part of a `gemma3` directory
}
# hybrid mamba2/attention families (ModelConfig.hybrid set), built as HybridCausalLM
HYBRID_ARCHITECTURES: dict[str, str] = {
    "BambaForCausalLM": "bamba",
    "GraniteMoeHybridForCausalLM": "granitemoehybrid",
}
# latent-attention families (ModelConfig.mla set), built as DeepseekCausalLM
MLA_ARCHITECTURES: dict[str, str] = {"DeepseekV32ForCausalLM": "deepseek_v32"}


def resolve_architecture(name: str) -> str:
    """Our arch name for a Hugging Face architecture name; ValueError listing the supported ones."""
    arch = SUPPORTED_ARCHITECTURES.get(name) or HYBRID_ARCHITECTURES.get(name) or MLA_ARCHITECTURES.get(name)
    if arch is None:
        names = sorted({*SUPPORTED_ARCHITECTURES, *HYBRID_ARCHITECTURES, *MLA_ARCHITECTURES})
        raise ValueError(f"unsupported model architecture {name!r}; supported: {', '.join(names)}")
    return arch


def build_model(config: ModelConfig, dtype: torch.dtype, device: torch.device | str) -> CausalLM:
    """An eval-mode `CausalLM` (`HybridCausalLM` for a hybrid config) with uninitialised weights on `device`."""
    if config.mla is not None:
        from pdpair.engine.models.deepseek import DeepseekCausalLM

        with torch.device(device):
            return DeepseekCausalLM(config, dtype).eval()
    if config.hybrid is not None:
        from pdpair.engine.models.hybrid import HybridCausalLM

        with torch.device(device):
            return HybridCausalLM(config, dtype).eval()
    if config.arch not in SUPPORTED_ARCHITECTURES.values():
        raise ValueError(
            f"unsupported arch {config.arch!r}; supported: {', '.join(sorted(SUPPORTED_ARCHITECTURES.values()))}"
        )
    with torch.device(device):
        model = CausalLM(config, dtype)
    return model.eval()
