"""Tiny random Bamba / Granite 4.0-H dense checkpoints saved by transformers, and a chunked-prefill driver."""

from __future__ import annotations

from pathlib import Path

import torch

COMMON = dict(
    hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=512, rms_norm_eps=1e-5, initializer_range=0.3, bos_token_id=1, eos_token_id=2,
    mamba_n_heads=8, mamba_n_groups=2, mamba_d_state=16, mamba_d_conv=4, mamba_expand=2, mamba_chunk_size=8,
    tie_word_embeddings=False,
)
D_CONV, SSD_CHUNK = 4, 8
VOCAB = 512  # the tokenizer has more ids; a small vocabulary keeps the logits cheap
CASES = ("bamba", "granite", "granite-rope")


def hybrid_case(name: str):
    """(config, model class) of a named tiny case: bamba (partial rope), granite (NoPE), granite-rope."""
    import transformers

    if name == "bamba":
        return transformers.BambaConfig(attn_layer_indices=[1], **COMMON), transformers.BambaForCausalLM
    granite = dict(COMMON, shared_intermediate_size=80, num_local_experts=0,
                   layer_types=["mamba", "attention", "mamba", "mamba"], embedding_multiplier=1.5,
                   attention_multiplier=0.2, residual_multiplier=0.7, logits_scaling=2.5,
                   position_embedding_type="rope" if name == "granite-rope" else "nope")
    return transformers.GraniteMoeHybridConfig(**granite), transformers.GraniteMoeHybridForCausalLM


def save_hybrid(name: str, path: Path, seed: int = 1234):
    """Save a tiny random `name` checkpoint (fp32, eager attention) with randomised norms, biases and SSM
    parameters, plus the embedded tokenizer; returns the HF model."""
    from tests._oracle import randomise_norms_and_biases
    from tests._tiny_tokenizer import write_checkpoint_tokenizer

    config, model_cls = hybrid_case(name)
    config.vocab_size = VOCAB
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    model.config._attn_implementation = "eager"
    randomise_norms_and_biases(model, {"A_log": (0.0, 0.5), "dt_bias": (0.0, 0.5), ".D": (1.0, 0.5)})
    model.save_pretrained(path)
    write_checkpoint_tokenizer(path)
    return model


def hf_state(hf, ids: list[int]) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """(all-position logits [L, V], conv states [conv_dim, d_conv - 1] and SSM states per mamba layer)."""
    with torch.inference_mode():
        out = hf(torch.tensor([ids]), use_cache=True)
    layers = [layer for layer in out.cache.layers if hasattr(layer, "recurrent_states")]
    convs = [layer.conv_states[0][0, :, 1:].clone() for layer in layers]
    ssms = [layer.recurrent_states[0][0].clone() for layer in layers]
    return out.logits[0].float(), convs, ssms
