"""One MoE layer's MLP: router -> routed INT4 experts (host RAM) + shared expert (device)."""
from __future__ import annotations

import torch
from torch import nn

from hybrid_k2.config import ModelArgs
from hybrid_k2.model.experts import RoutedExperts
from hybrid_k2.model.mlp import MLP
from hybrid_k2.model.router import Router


class MoE(nn.Module):
    def __init__(self, args: ModelArgs, store):
        super().__init__()
        self.gate = Router(args)
        self.experts = RoutedExperts(store)
        self.shared_experts = (MLP(args.hidden_size, args.moe_intermediate_size * args.n_shared_experts)
                               if args.n_shared_experts else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, D] -> [T, D]
        ids, weights = self.gate(x)  # [T, K], [T, K]
        y = self.experts(x, ids, weights).to(x.dtype)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x)
        return y
