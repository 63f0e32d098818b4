"""Model-half logic without a real model: config checks, architecture errors, rope math, GGUF q/k order."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pdpair.engine.loader.gguf import _unpermute
from pdpair.engine.loader.hf_dir import hf_model_config
from pdpair.engine.model_config import ModelConfig, RopeScaling
from pdpair.engine.models import SUPPORTED_ARCHITECTURES, resolve_architecture, rope_inv_freq

BASE = dict(arch="llama", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16,
            intermediate_size=128, vocab_size=100, context_length=64)
HF_CFG = dict(architectures=["LlamaForCausalLM"], hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
              num_hidden_layers=2, intermediate_size=128, vocab_size=100, max_position_embeddings=64)


def test_unknown_architecture_lists_supported():
    with pytest.raises(ValueError) as e:
        resolve_architecture("MistralForCausalLM")
    for name in SUPPORTED_ARCHITECTURES:
        assert name in str(e.value)
    with pytest.raises(ValueError, match="LlamaForCausalLM.*Qwen2ForCausalLM.*Qwen3ForCausalLM"):
        hf_model_config({**HF_CFG, "architectures": ["GPTNeoXForCausalLM"]}, ())


def test_load_model_rejects_unknown_names(tmp_path):
    from pdpair.engine.loader import load_model

    with pytest.raises(ValueError, match="smollm2-135m"):
        load_model("no-such-model")
    (tmp_path / "config.json").write_text(json.dumps({**HF_CFG, "architectures": ["FalconForCausalLM"]}))
    with pytest.raises(ValueError, match="Qwen3ForCausalLM"):
        load_model(str(tmp_path))
    with pytest.raises(ValueError, match="dtype"):
        load_model(dtype="int8")


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(num_kv_heads=3), "multiple of num_kv_heads"),
        (dict(num_layers=0), "num_layers"),
        (dict(head_dim=15), "even"),
        (dict(eos_token_ids=(100,)), "outside the vocabulary"),
        (dict(eos_token_ids=[2]), "tuple"),
        (dict(rope_theta=0.0), "rope_theta"),
    ],
)
def test_model_config_rejects_bad_values(change, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**{**BASE, **change})


def test_rope_scaling_rejects_unknown_type():
    with pytest.raises(ValueError, match="llama3"):
        RopeScaling(rope_type="yarn", factor=4.0)


def test_hf_config_reads_both_rope_spellings():
    old = hf_model_config({**HF_CFG, "rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 4.0}}, ())
    new = hf_model_config({**HF_CFG, "rope_parameters": {"rope_theta": 5e5, "rope_type": "linear", "factor": 4.0}}, ())
    assert old.rope_theta == new.rope_theta == 5e5
    assert old.rope_scaling == new.rope_scaling == RopeScaling("linear", 4.0)
    qwen2 = hf_model_config({**HF_CFG, "architectures": ["Qwen2ForCausalLM"]}, ())
    assert qwen2.attention_bias and not qwen2.o_proj_bias and not qwen2.qk_norm
    qwen3 = hf_model_config({**HF_CFG, "architectures": ["Qwen3ForCausalLM"], "head_dim": 32}, ())
    assert qwen3.qk_norm and qwen3.head_dim == 32
    with pytest.raises(ValueError, match="sliding"):  # llama has no sliding-window layers
        hf_model_config({**HF_CFG, "use_sliding_window": True}, ())


def test_hf_config_sliding_window_layers():
    qwen3 = {**HF_CFG, "architectures": ["Qwen3ForCausalLM"], "num_hidden_layers": 4, "sliding_window": 32}
    # transformers: sliding layers only with use_sliding_window, from max_window_layers unless listed
    assert hf_model_config(qwen3, ()).swa_layers == ()
    on = hf_model_config({**qwen3, "use_sliding_window": True, "max_window_layers": 1}, ())
    assert on.swa_layers == (1, 2, 3) and on.full_layers == (0,) and on.sliding_window == 32
    listed = {**qwen3, "use_sliding_window": True,
              "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]}
    assert hf_model_config(listed, ()).swa_layers == (0, 2)
    with pytest.raises(ValueError, match="every layer is sliding"):
        hf_model_config({**qwen3, "use_sliding_window": True, "max_window_layers": 0}, ())
    # a multimodal gemma3 directory: the text config, its 5:1 pattern, both rope spellings
    text = {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 1, "num_hidden_layers": 6,
            "intermediate_size": 128, "vocab_size": 100, "head_dim": 16, "sliding_window": 512,
            "rope_theta": 1e6, "rope_local_base_freq": 1e4, "rope_scaling": {"rope_type": "linear", "factor": 8.0},
            "query_pre_attn_scalar": 16, "final_logit_softcapping": None}
    g = hf_model_config({"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
                         "text_config": text, "eos_token_id": [1, 106]}, ())
    assert g.arch == "gemma3" and g.swa_layers == (0, 1, 2, 3, 4) and g.full_layers == (5,)
    assert (g.rope_theta, g.rope_local_theta, g.rope_scaling) == (1e6, 1e4, RopeScaling("linear", 8.0))
    assert g.norm_plus_one and g.sandwich_norm and g.embed_scale and g.tie_word_embeddings and g.qk_norm
    assert g.attn_scale == 16**-0.5 and g.final_logit_softcapping is None


def test_multimodal_checkpoint_names_map_to_the_text_model():
    from pdpair.engine.loader.hf_dir import _text_name

    assert _text_name("model.language_model.layers.0.mlp.up_proj.weight") == "model.layers.0.mlp.up_proj.weight"
    assert _text_name("language_model.model.norm.weight") == "model.norm.weight"
    assert _text_name("model.vision_tower.vision_model.embeddings.patch_embedding.weight") is None
    assert _text_name("model.multi_modal_projector.mm_input_projection_weight") is None
    assert _text_name("model.embed_tokens.weight") == "model.embed_tokens.weight"


@pytest.mark.parametrize(
    "params",
    [
        {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
        {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 2.0,
         "high_freq_factor": 8.0, "original_max_position_embeddings": 4096},
    ],
)
def test_rope_scaling_matches_hf(params):
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf_cfg = transformers.LlamaConfig(hidden_size=1024, num_attention_heads=8, max_position_embeddings=131072,
                                      rope_parameters=dict(params))
    ref, _ = ROPE_INIT_FUNCTIONS[params["rope_type"]](hf_cfg, "cpu")
    cfg = hf_model_config({**HF_CFG, "hidden_size": 1024, "num_attention_heads": 8, "num_key_value_heads": 8,
                           "rope_parameters": params}, ())
    ours = rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)


def _llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf `LlamaModel.permute` (the row order GGUF files store)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.mark.parametrize("n_head, rows, cols", [(9, 576, 8), (3, 192, 5), (4, 64, 0)])
def test_gguf_unpermute_inverts_llamacpp(n_head, rows, cols):
    shape = (rows, cols) if cols else (rows,)
    w = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    np.testing.assert_array_equal(_unpermute(_llamacpp_permute(w, n_head), n_head), w)


def test_hf_dir_tokenizer_files(tmp_path):
    """tokenizer_config.json (named templates, token dicts), chat_template.jinja override, eos id merging."""
    import tokenizers
    from pdpair.engine.loader.hf_dir import load_hf_dir

    vocab = {c: i for i, c in enumerate("abcdefghij")}
    backend = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=[]))
    backend.add_special_tokens(["<s>", "</s>", "<|im_end|>"])  # ids 10, 11, 12
    backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "config.json").write_text(json.dumps({**HF_CFG, "vocab_size": 13, "eos_token_id": 11}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [11, 10]}))
    named = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "{{ messages[0]['content'] }}"}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": named, "bos_token": {"content": "<s>"}, "eos_token": "</s>"}))
    cfg, _, tok = load_hf_dir(tmp_path)
    assert tok.chat_template == "{{ messages[0]['content'] }}"
    assert (tok.bos_token, tok.eos_token) == ("<s>", "</s>")
    assert cfg.eos_token_ids == tok.eos_token_ids == (11, 10)
    assert tok.apply_chat_template([{"role": "user", "content": "abc"}]) == [0, 1, 2]
    (tmp_path / "chat_template.jinja").write_text("{{ messages[0]['content'] }}<|im_end|>")
    cfg, _, tok = load_hf_dir(tmp_path)
    assert tok.eos_token_ids == (11, 10, 12)  # the template's end-of-turn token joins
    assert tok.apply_chat_template([{"role": "user", "content": "j"}]) == [9, 12]


def test_gguf_of_unsupported_architecture_is_refused(tmp_path):
    from gguf import GGUFWriter
    from pdpair.engine.loader import load_model

    path = tmp_path / "other.gguf"
    w = GGUFWriter(str(path), "mamba")
    w.add_block_count(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="unsupported GGUF architecture 'mamba'; supported: llama"):
        load_model(str(path))
