"""Assessment heads: a shared trunk, one small MLP per dimension, and a learned log sigma per dimension.

pooled (B, P) -> logits (B, D). Scores are sigmoid(logits) * 100, computed in fp32. `log_sigma` is the
log standard deviation of each dimension's error on the 0..1 scale (Kendall & Gal's homoscedastic,
task-level aleatoric uncertainty); it is trained by the uncertainty-weighted loss.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from model.config import ModelConfig

INITIAL_SIGMA = 0.2


class DimensionHead(nn.Module):
    """shared (B, S) -> (B,) logit of one dimension: Linear -> ReLU -> Dropout -> Linear."""

    def __init__(self, shared: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(shared, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


class AssessmentHeads(nn.Module):
    """(B, P) pooled -> (B, D) logits, one head per dimension of the schema (in schema order)."""

    def __init__(self, cfg: ModelConfig, n_dims: int):
        super().__init__()
        self.shared = nn.Sequential(nn.Linear(cfg.pooled_size, cfg.head_shared_size), nn.ReLU(),
                                    nn.Dropout(cfg.head_dropout))
        self.dims = nn.ModuleList([DimensionHead(cfg.head_shared_size, cfg.head_hidden_size, cfg.head_dropout)
                                   for _ in range(n_dims)])
        # (D,), on the 0..1 scale; starts at sigma = 0.2 (20 points), a prior of the spread of ratings,
        # rather than 1.0 (100 points), which short runs would never shrink to a calibrated width
        self.log_sigma = nn.Parameter(torch.full((n_dims,), math.log(INITIAL_SIGMA)))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        shared = self.shared(pooled)                                         # (B, S)
        return torch.stack([head(shared) for head in self.dims], dim=-1)     # (B, D)
