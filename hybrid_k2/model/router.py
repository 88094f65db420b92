"""The MoE router (`mlp.gate`): sigmoid scores, bias for selection only, grouped top-k, renormalise, scale.

Computed in fp32 whatever the activation dtype, as the reference implementations do: a flipped
expert choice is a large error, unlike a rounded activation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hybrid_k2.config import ModelArgs


class Router(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        E, D = args.n_routed_experts, args.hidden_size
        self.top_k, self.n_group, self.topk_group = args.num_experts_per_tok, args.n_group, args.topk_group
        self.scoring_func, self.norm_topk_prob = args.scoring_func, args.norm_topk_prob
        self.route_scale = args.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(E, D, device="meta"), requires_grad=False)
        self.e_score_correction_bias = nn.Parameter(torch.zeros(E, device="meta"), requires_grad=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [T, D] -> (expert ids [T, K] int64, weights [T, K] fp32)."""
        logits = F.linear(x.float(), self.weight.float())  # [T, E]
        scores = logits.sigmoid() if self.scoring_func == "sigmoid" else logits.softmax(dim=-1)
        choice = scores + self.e_score_correction_bias.float()  # bias picks experts, never weighs them
        if self.n_group > 1:
            T, E = choice.shape
            grouped = choice.view(T, self.n_group, E // self.n_group)  # [T, G, E/G]
            group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)  # [T, G]
            keep = group_scores.topk(self.topk_group, dim=-1, sorted=False).indices  # [T, topk_group]
            mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, keep, True)  # [T, G]
            choice = choice.masked_fill(~mask[:, :, None].expand_as(grouped).reshape(T, E), float("-inf"))
        ids = choice.topk(self.top_k, dim=-1, sorted=False).indices  # [T, K]
        weights = scores.gather(1, ids)  # [T, K]
        if self.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return ids, weights * self.route_scale
