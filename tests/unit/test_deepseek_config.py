"""config.json of DeepSeek-V3.2 -> ModelConfig / MLAConfig: the released model's fields, YaRN frequencies and
scales against transformers' own, refusals that name what is unsupported."""

from __future__ import annotations

import math

import pytest
import torch
from pdpair.engine.loader.hf_deepseek import deepseek_model_config
from pdpair.engine.models.deepseek_rope import DeepseekRotary

# the shape of the released DeepSeek-V3.2-Exp config.json (rope_scaling as it ships)
V32 = dict(
    architectures=["DeepseekV32ForCausalLM"], model_type="deepseek_v32", vocab_size=129280, hidden_size=7168,
    intermediate_size=18432, moe_intermediate_size=2048, num_hidden_layers=61, num_attention_heads=128,
    num_key_value_heads=128, n_shared_experts=1, n_routed_experts=256, routed_scaling_factor=2.5, kv_lora_rank=512,
    q_lora_rank=1536, qk_rope_head_dim=64, v_head_dim=128, qk_nope_head_dim=128, n_group=8, topk_group=4,
    num_experts_per_tok=8, first_k_dense_replace=3, norm_topk_prob=True, max_position_embeddings=163840,
    rope_theta=10000, index_topk=2048, index_head_dim=128, index_n_heads=64, scoring_func="sigmoid",
    rope_scaling=dict(type="yarn", factor=40, original_max_position_embeddings=4096, beta_fast=32, beta_slow=1,
                      mscale=1.0, mscale_all_dim=1.0),
)


def test_the_released_shape():
    cfg = deepseek_model_config(V32, (1,))
    mla = cfg.mla
    assert (mla.latent_dim, mla.index_head_dim, mla.index_topk) == (576, 128, 2048)
    assert mla.moe_layers == tuple(range(3, 61)) and cfg.num_kv_heads == 1 and cfg.head_dim == 64
    mscale = 0.1 * math.log(40) + 1.0
    assert mla.softmax_scale == pytest.approx(192**-0.5 * mscale**2)
    assert mla.yarn.attention_factor == pytest.approx(1.0)


def test_yarn_frequencies_and_factor_match_transformers():
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=16, mscale=1.0,
                mscale_all_dim=0.5, beta_fast=8.0, beta_slow=1.0)
    small = dict(V32, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                 qk_rope_head_dim=16, max_position_embeddings=512, rope_scaling=None, rope_parameters=rope)
    hf_cfg = transformers.DeepseekV32Config(**{k: v for k, v in small.items() if k not in ("architectures",
                                                                                          "scoring_func")})
    ref_freq, ref_factor = ROPE_INIT_FUNCTIONS["yarn"](hf_cfg)
    mla = deepseek_model_config(small, ()).mla
    rot = DeepseekRotary(16, 10000.0, mla.yarn)
    torch.testing.assert_close(rot.inv_freq, ref_freq.float())
    assert rot.factor == pytest.approx(ref_factor) and ref_factor != pytest.approx(1.0)


@pytest.mark.parametrize("change, message", [
    (dict(quantization_config={"quant_method": "fp8"}), "quantised checkpoints .fp8."),
    (dict(q_lora_rank=None), "q_lora_rank null"),
    (dict(scoring_func="softmax"), "scoring_func 'softmax'"),
    (dict(rope_scaling=dict(type="longrope", factor=2.0)), "rope type 'longrope'"),
    (dict(mlp_layer_types=["dense"] * 60), "mlp_layer_types must list"),
])
def test_unsupported_configs_are_refused_by_name(change, message):
    with pytest.raises(ValueError, match=message):
        deepseek_model_config({**V32, **change}, ())


def test_parallel_ranks_are_refused_for_latent_attention():
    from pdpair.engine.distributed.shard import local_config

    with pytest.raises(ValueError, match="tensor / data parallel ranks are not supported"):
        local_config(deepseek_model_config(V32, ()), 2, 0)
