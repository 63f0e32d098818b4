"""Tiny random sliding-window checkpoints (Qwen3 with `layer_types`, Gemma 3 text) saved with save_pretrained,
shared by the engine parity tests and the end-to-end daemon tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

FAMILIES = ("qwen3", "gemma3")
VOCAB = 512  # the tokenizer has more ids; a small vocabulary keeps the logits cheap
LAYER_TYPES = ["sliding_attention", "full_attention", "sliding_attention"]


def save_tiny_swa(family: str, window: int, path: Path, max_positions: int = 512):
    """Save a 3-layer model (sliding, full, sliding) with a window of `window` tokens; returns the HF model
    (fp32, eager attention). Norms and embeddings are randomised so that every piece matters to the logits."""
    import transformers

    from tests._tiny_tokenizer import checkpoint_tokenizer

    tok = checkpoint_tokenizer()
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=max_positions,
                  rms_norm_eps=1e-5, initializer_range=0.3, bos_token_id=1, eos_token_id=2, sliding_window=window,
                  layer_types=LAYER_TYPES)
    torch.manual_seed(1234 + window)
    if family == "qwen3":
        cfg = transformers.Qwen3Config(use_sliding_window=True, tie_word_embeddings=False,
                                       rope_parameters={"rope_type": "default", "rope_theta": 1e4}, **common)
        model = transformers.Qwen3ForCausalLM(cfg)
    else:  # local/global rope bases, linear scaling on the global one, both softcaps
        cfg = transformers.Gemma3TextConfig(
            query_pre_attn_scalar=24, final_logit_softcapping=30.0, attn_logit_softcapping=20.0,
            rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e5},
                             "sliding_attention": {"rope_type": "default", "rope_theta": 1e3}}, **common)
        model = transformers.Gemma3ForCausalLM(cfg)
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):  # Gemma's norms scale by (1 + w): centre those on 0
                p.copy_((0.0 if family == "gemma3" else 1.0) + 0.3 * torch.randn_like(p))
            elif family == "gemma3" and name.endswith("embed_tokens.weight"):
                p.mul_(0.05)  # x sqrt(hidden) later: keep the residual stream from echoing the input token
    model.save_pretrained(path)
    (path / "tokenizer.json").write_text(tok.to_json(), encoding="utf-8")
    (path / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "chat_template": tok.chat_template}),
        encoding="utf-8")
    return model.eval()
