"""DeepSeek's feed-forward blocks: the dense SwiGLU MLP and the MoE (group-limited top-k routing with sigmoid
scores and a correction bias, routed scaling, shared experts), in plain torch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pdpair.engine.mla_config import MLAConfig
from pdpair.engine.models.layers import Linear
from torch import nn


class DenseMLP(nn.Module):
    """down(silu(gate(x)) * up(x)), with the checkpoint's names."""

    def __init__(self, hidden: int, intermediate: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.gate_proj = Linear(hidden, intermediate, bias=False, dtype=dtype)
        self.up_proj = Linear(hidden, intermediate, bias=False, dtype=dtype)
        self.down_proj = Linear(intermediate, hidden, bias=False, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class TopkRouter(nn.Module):
    """fp32 router: sigmoid scores; groups ranked by their two best biased scores, the best `topk_group` groups
    kept, the `num_experts_per_tok` best biased scores among them chosen; weights are the unbiased scores
    (normalised if `norm_topk_prob`) times `routed_scaling_factor`."""

    def __init__(self, hidden: int, mc: MLAConfig) -> None:
        super().__init__()
        self.mc = mc
        self.weight = nn.Parameter(torch.empty(mc.n_routed_experts, hidden, dtype=torch.float32),
                                   requires_grad=False)
        self.e_score_correction_bias = nn.Parameter(torch.zeros(mc.n_routed_experts, dtype=torch.float32),
                                                    requires_grad=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mc = self.mc
        scores = F.linear(x.float(), self.weight).sigmoid()
        biased = scores + self.e_score_correction_bias
        groups = biased.view(-1, mc.n_group, mc.n_routed_experts // mc.n_group)
        group_scores = groups.topk(min(2, groups.shape[-1]), dim=-1).values.sum(-1)
        keep = torch.zeros_like(group_scores, dtype=torch.bool)
        keep.scatter_(1, group_scores.topk(mc.topk_group, dim=-1).indices, True)
        biased = groups.masked_fill(~keep[..., None], float("-inf")).view(-1, mc.n_routed_experts)
        ids = biased.topk(mc.num_experts_per_tok, dim=-1).indices
        weights = scores.gather(1, ids)
        if mc.norm_topk_prob:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return ids, weights * mc.routed_scaling_factor


class MoE(nn.Module):
    """Routed experts stacked as w13 [E, 2I, H] (gate then up) and w2 [E, H, I], plus the shared experts."""

    def __init__(self, hidden: int, mc: MLAConfig, dtype: torch.dtype) -> None:
        super().__init__()
        e, inter = mc.n_routed_experts, mc.moe_intermediate_size
        self.inter = inter
        self.gate = TopkRouter(hidden, mc)
        self.w13 = nn.Parameter(torch.empty(e, 2 * inter, hidden, dtype=dtype), requires_grad=False)
        self.w2 = nn.Parameter(torch.empty(e, hidden, inter, dtype=dtype), requires_grad=False)
        self.shared_experts = DenseMLP(hidden, inter * mc.n_shared_experts, dtype) if mc.n_shared_experts else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, weights = self.gate(x)
        out = torch.zeros_like(x)
        flat = ids.reshape(-1)
        order = flat.argsort(stable=True)
        counts = torch.bincount(flat, minlength=self.w13.shape[0]).tolist()
        tokens = order // ids.shape[1]
        w = weights.reshape(-1)[order]
        start = 0
        for expert, n in enumerate(counts):  # only the experts some token chose
            if not n:
                continue
            tok = tokens[start : start + n]
            gate, up = F.linear(x[tok], self.w13[expert]).split(self.inter, dim=-1)
            y = F.linear(F.silu(gate) * up, self.w2[expert]) * w[start : start + n, None].to(x.dtype)
            out.index_add_(0, tok, y)
            start += n
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        return out
