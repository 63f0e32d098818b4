"""Tiny random DeepSeek-V3.2 checkpoints saved by transformers (all-dense and with MoE layers), and a
chunked-prefill driver through the engine's real pools and latent-attention backend."""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 512  # the tokenizer has more ids; a small vocabulary keeps the logits cheap
INDEX_TOPK = 8  # contexts below and well above it occur in every test
COMMON = dict(
    vocab_size=VOCAB, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_attention_heads=4,
    num_key_value_heads=4, kv_lora_rank=32, q_lora_rank=48, qk_rope_head_dim=16, qk_nope_head_dim=16,
    v_head_dim=24, index_topk=INDEX_TOPK, index_head_dim=32, index_n_heads=16, n_routed_experts=8,
    n_shared_experts=1, num_experts_per_tok=2, n_group=4, topk_group=2, routed_scaling_factor=1.5,
    max_position_embeddings=512, initializer_range=0.3, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2,
    tie_word_embeddings=False,
)
# name -> (layers, first_k_dense_replace)
CASES = {"dense": (2, 2), "moe": (3, 1), "yarn": (2, 1)}
# YaRN with every knob away from its neutral value: interpolated low frequencies, cos/sin scaled by
# mscale / mscale_all_dim, the softmax scale by mscale_all_dim squared
YARN = dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=16, mscale=1.0,
            mscale_all_dim=0.5, beta_fast=8.0, beta_slow=1.0)


def save_deepseek(name: str, path: Path, seed: int = 4321):
    """Save the tiny `name` checkpoint (fp32, eager attention) with randomised norms, LayerNorm biases and
    router correction biases, plus the embedded tokenizer; returns the transformers model."""
    import transformers

    from tests._tiny_tokenizer import write_checkpoint_tokenizer

    layers, dense = CASES[name]
    rope = {"rope_parameters": YARN} if name == "yarn" else {}
    config = transformers.DeepseekV32Config(num_hidden_layers=layers, first_k_dense_replace=dense, **COMMON, **rope)
    torch.manual_seed(seed)
    model = transformers.DeepseekV32ForCausalLM(config).eval()
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        for pname, p in [*model.named_parameters(), *model.named_buffers()]:
            if pname.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif pname.endswith("norm.bias"):
                p.copy_(0.3 * torch.randn_like(p))
            elif pname.endswith("e_score_correction_bias"):
                p.copy_(0.2 * torch.randn_like(p))
    model.save_pretrained(path)
    write_checkpoint_tokenizer(path)
    return model
