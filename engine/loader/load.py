"""`load_model`: the embedded SmolLM2, a Hugging Face directory or a llama .gguf file -> LoadedModel."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from pdpair.engine.loader.tokenizer import Tokenizer
from pdpair.engine.model_config import ModelConfig
from pdpair.engine.models.llama import CausalLM
from pdpair.engine.models.registry import build_model

logger = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


@dataclass(frozen=True, eq=False)
class LoadedModel:
    config: ModelConfig
    model: CausalLM
    tokenizer: Tokenizer
    model_id: str
    weights_digest: str


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device | str) -> torch.dtype:
    """None -> fp32 on CPU, bf16 on CUDA; names like "bfloat16"/"bf16" or a torch.dtype."""
    if dtype is None:
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise ValueError(f"unsupported dtype {dtype}; use float32, bfloat16 or float16")
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(set(_DTYPES))}")
    return _DTYPES[dtype]


def weights_digest(model: torch.nn.Module) -> str:
    """16-hex digest of parameter names, shapes, dtypes and a strided sample of each one's values."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        flat = p.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 256)][:256].float().cpu().contiguous()
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


def _finish(
    config: ModelConfig, weights: Iterable[tuple[str, torch.Tensor]], tokenizer: Tokenizer,
    model_id: str, device: torch.device | str, dtype: torch.dtype, started: float,
) -> LoadedModel:
    model = build_model(config, dtype, device)
    with torch.no_grad():
        model.load_weights(weights)
    digest = weights_digest(model)
    logger.info("loaded %s (%s, %d layers, %s on %s) in %.1fs, digest %s", model_id, config.arch,
                config.num_layers, dtype, device, time.perf_counter() - started, digest)
    return LoadedModel(config, model, tokenizer, model_id, digest)


def _load_gguf(path: Path, model_id: str, device, dtype: torch.dtype) -> LoadedModel:
    from pdpair.engine.loader.gguf import GGUFFile, check_architecture, gguf_model_config, gguf_weights
    from pdpair.engine.loader.gguf_tokenizer import gguf_tokenizer

    started = time.perf_counter()
    f = GGUFFile(path)
    check_architecture(f)  # before building a tokenizer for a file we cannot run
    tokenizer = gguf_tokenizer(f)
    config = gguf_model_config(f, tokenizer.eos_token_ids, tokenizer.bos_token_id)
    return _finish(config, gguf_weights(f, config), tokenizer, model_id, device, dtype, started)


def load_model(
    name_or_path: str | Path | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str | None = None,
) -> LoadedModel:
    """Load a model with its tokenizer. `None` or "smollm2-135m": the embedded SmolLM2-135M-Instruct;
    a directory: a Hugging Face checkpoint; a `.gguf` file: a llama-architecture GGUF. No network access."""
    from pdpair.engine.loader.gguf import EMBEDDED_MODEL, embedded_gguf_path

    dtype = resolve_dtype(dtype, device)
    if name_or_path is None or str(name_or_path) == EMBEDDED_MODEL:
        return _load_gguf(embedded_gguf_path(), EMBEDDED_MODEL, device, dtype)
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _load_gguf(path, path.stem, device, dtype)
    if path.is_dir() and (path / "config.json").is_file():
        from pdpair.engine.loader.hf_dir import load_hf_dir, safetensors_weights

        started = time.perf_counter()
        config, _, tokenizer = load_hf_dir(path)
        return _finish(config, safetensors_weights(path), tokenizer, path.name, device, dtype, started)
    raise ValueError(
        f"cannot load model {str(name_or_path)!r}: expected {EMBEDDED_MODEL!r}, a Hugging Face model directory "
        "(config.json, *.safetensors, tokenizer.json) or a .gguf file (models are never downloaded)"
    )
