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


def resolve_architecture(name: str) -> str:
    """Our arch name for a Hugging Face architecture name; ValueError listing the supported ones."""
    arch = SUPPORTED_ARCHITECTURES.get(name)
    if arch is None:
        raise ValueError(
            f"unsupported model architecture {name!r}; supported: {', '.join(sorted(SUPPORTED_ARCHITECTURES))}"
        )
    return arch


def build_model(config: ModelConfig, dtype: torch.dtype, device: torch.device | str) -> CausalLM:
    """An eval-mode `CausalLM` with uninitialised weights on `device` (the loader fills them)."""
    if config.arch not in SUPPORTED_ARCHITECTURES.values():
        raise ValueError(
            f"unsupported arch {config.arch!r}; supported: {', '.join(sorted(SUPPORTED_ARCHITECTURES.values()))}"
        )
    with torch.device(device):
        model = CausalLM(config, dtype)
    return model.eval()
