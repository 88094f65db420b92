"""One MoE layer's MLP: router -> routed INT4 experts (host RAM) + shared expert (device).

The three steps are separate methods so that every runner calls the same code: `MoE.forward` (the
reference), the hybrid executor (runtime/executor.py: routed experts as CPU jobs, hot experts on the
device, deferral) and the CUDA-graph decode (runtime/cuda_graph.py) all route with `route` and combine
with `combine`; only where the routed sum is computed differs.
"""
from __future__ import annotations

from typing import Sequence

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

    def route(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h [T, D] -> (expert ids [T, K] int64, weights [T, K] fp32)."""
        return self.gate(h)

    def shared(self, h: torch.Tensor) -> torch.Tensor | None:
        """h [T, D] -> the shared expert's [T, D] (None when the layer has none)."""
        return self.shared_experts(h) if self.shared_experts is not None else None

    @staticmethod
    def combine(routed: Sequence[torch.Tensor | None], shared: torch.Tensor | None,
                dtype: torch.dtype) -> torch.Tensor:
        """The layer's output [T, D]: the routed parts ([T, D] fp32 each: CPU, device, deferred; None
        skipped) summed in fp32, cast to the activation dtype, then + the shared expert."""
        parts = [p for p in routed if p is not None]
        total = parts[0]
        for p in parts[1:]:
            total = total + p
        y = total.to(dtype)
        return y + shared if shared is not None else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, D] -> [T, D]
        ids, weights = self.route(x)  # [T, K], [T, K]
        return self.combine([self.experts(x, ids, weights)], self.shared(x), x.dtype)
