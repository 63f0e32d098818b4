"""Split a loaded Llama-family `CausalLM` across ranks in place.

Attention is split by KV-head groups over the attention group (each rank keeps its KV heads' query heads;
sizes may differ by one group when the KV heads do not divide evenly), so each rank's KV pool holds only
its KV heads. The MLP is split over every rank (column-parallel gate/up, row-parallel down). The embedding
and the LM head are vocab-parallel over the attention-TP group (vocab.py): each rank keeps a contiguous slice
of the (padded) vocabulary rows, the embedding all-reduces over that group and the head all-gathers every
rank's logits slice, so each rank of the group samples from the same full fp32 logits. The attention group
is the one whose ranks hold the same tokens (under DP attention each DP rank has its own); with attn_tp = 1
the vocabulary stays whole. Only the Llama/Qwen/Gemma decoder family is split; hybrid and latent-attention
models refuse ranks.
"""

from __future__ import annotations

import dataclasses

import torch
from pdpair.engine.distributed.dp_gather import DPGather
from pdpair.engine.distributed.groups import ProcessGroups
from pdpair.engine.distributed.layers import DPGatheredMLP, RowParallelLinear
from pdpair.engine.distributed.topology import split_range
from pdpair.engine.distributed.vocab import shard_vocab
from pdpair.engine.model_config import ModelConfig
from torch import nn


@dataclasses.dataclass(frozen=True)
class HeadShard:
    kv_start: int
    kv_end: int
    group: int  # query heads per KV head

    @property
    def num_kv_heads(self) -> int:
        return self.kv_end - self.kv_start

    @property
    def num_heads(self) -> int:
        return self.num_kv_heads * self.group


def head_shard(config: ModelConfig, attn_tp: int, attn_tp_rank: int) -> HeadShard:
    if config.num_kv_heads < attn_tp:
        raise ValueError(f"attention-TP size {attn_tp} exceeds the model's {config.num_kv_heads} KV heads "
                         "(replicating KV heads is not supported); lower --tp-size or raise --dp-size")
    start, end = split_range(config.num_kv_heads, attn_tp, attn_tp_rank)
    return HeadShard(start, end, config.num_heads // config.num_kv_heads)


def check_shardable(config: ModelConfig) -> None:
    """ValueError unless `config` is of the decoder family that ranks split."""
    if config.mla is not None:
        raise ValueError(f"{config.arch}: tensor / data parallel ranks are not supported for latent-attention "
                         "models; run it on one rank (--tp-size 1)")
    if config.hybrid is not None:
        raise ValueError(f"{config.arch}: tensor / data parallel ranks are not supported for hybrid mamba2 models; "
                         "run it on one rank (--tp-size 1)")


def local_config(config: ModelConfig, attn_tp: int, attn_tp_rank: int) -> ModelConfig:
    """The model config as this rank's pools and attention backend see it (its own heads only)."""
    check_shardable(config)
    s = head_shard(config, attn_tp, attn_tp_rank)
    return dataclasses.replace(config, num_heads=s.num_heads, num_kv_heads=s.num_kv_heads)


def _param(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.contiguous(), requires_grad=False)


def _shard_attention(attn: nn.Module, cfg: ModelConfig, s: HeadShard, groups: ProcessGroups) -> None:
    d = cfg.head_dim
    q = slice(s.kv_start * s.group * d, s.kv_end * s.group * d)
    k = slice(cfg.q_size + s.kv_start * d, cfg.q_size + s.kv_end * d)
    v = slice(cfg.q_size + cfg.kv_size + s.kv_start * d, cfg.q_size + cfg.kv_size + s.kv_end * d)
    w = attn.qkv_proj.weight.data
    attn.qkv_proj.weight = _param(torch.cat([w[q], w[k], w[v]]))
    if attn.qkv_proj.bias is not None:
        b = attn.qkv_proj.bias.data
        attn.qkv_proj.bias = _param(torch.cat([b[q], b[k], b[v]]))
    o = attn.o_proj
    attn.o_proj = RowParallelLinear(o.weight.data[:, q], None if o.bias is None else o.bias.data, groups.attn)
    attn.num_heads, attn.num_kv_heads = s.num_heads, s.num_kv_heads
    attn.q_size, attn.kv_size = s.num_heads * d, s.num_kv_heads * d


def _shard_mlp(mlp: nn.Module, cfg: ModelConfig, groups: ProcessGroups) -> None:
    topo = groups.topo
    start, end = split_range(cfg.intermediate_size, topo.tp_size, topo.rank)
    w = mlp.gate_up_proj.weight.data
    inter = cfg.intermediate_size
    mlp.gate_up_proj.weight = _param(torch.cat([w[start:end], w[inter + start : inter + end]]))
    mlp.intermediate_size = end - start
    down = mlp.down_proj
    mlp.down_proj = RowParallelLinear(down.weight.data[:, start:end], None, groups.tp)


def shard_model(model: nn.Module, groups: ProcessGroups, dp: DPGather | None) -> None:
    """Keep this rank's share of every attention and MLP weight and of the vocabulary (over the attention-TP
    group); with DP attention (`dp` given) each MLP gathers the tokens of every DP rank first and scatters
    its output back."""
    cfg, topo = model.config, groups.topo
    check_shardable(cfg)
    shard_vocab(model, groups.attn, topo.attn_tp_rank)
    s = head_shard(cfg, topo.attn_tp_size, topo.attn_tp_rank)
    for layer in model.layers:
        _shard_attention(layer.self_attn, cfg, s, groups)
        _shard_mlp(layer.mlp, cfg, groups)
        if dp is not None:
            layer.mlp = DPGatheredMLP(layer.mlp, dp)
