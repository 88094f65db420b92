"""SwiGLU MLP: the dense layer(s) before the MoE layers, and the shared expert of every MoE layer."""
import torch
import torch.nn.functional as F
from torch import nn

from hybrid_k2.model.linear import Linear


class MLP(nn.Module):
    def __init__(self, dim: int, inter_dim: int):
        super().__init__()
        self.gate_proj = Linear(dim, inter_dim)
        self.up_proj = Linear(dim, inter_dim)
        self.down_proj = Linear(inter_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, D] -> [T, D]
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
