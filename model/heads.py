"""Assessment heads: a shared trunk, one small MLP per dimension, and the log sigma of each prediction.

pooled (B, P) -> logits (B, D), log_sigma (B, D). Scores are sigmoid(logits) * 100, computed in fp32.
`log_sigma` is the log standard deviation of each prediction's error on the 0..1 scale (Kendall & Gal's
aleatoric uncertainty), trained by the Gaussian negative log-likelihood term of `model.losses`:

    per_item (heteroscedastic):       log_sigma_bd = soft_clamp(w_d . shared_b + c_d)
    per_dimension (homoscedastic):    log_sigma_bd = s_d, one learned value per dimension for every input

With per_item the heads also keep one task log sigma t_d per dimension (Kendall & Gal's homoscedastic
task weighting), which weights each dimension's squared error in the loss; the per-item log sigma is
trained on the errors with the predictions detached, so it learns how sure to be without being able to
discount hard items from the score heads' training (heteroscedastic NLL alone lets a model raise sigma
on the items it fits badly instead of fitting them; the demo's expert stage then stalled at the mean
baseline's error in one of two runs). With per_dimension, t = s and there is no separate term.

where shared_b is the trunk's output (B, head_shared_size) and
soft_clamp(x) = m + h * tanh((x - m) / h), m = (lo + hi) / 2, h = (hi - lo) / 2, with lo = log 0.005 and
hi = log 1.0: smooth, close to the identity near m, and never outside (lo, hi), so sigma stays within
0.5..100 score points however training goes. Both start at sigma = INITIAL_SIGMA for every input
(per_item: w = 0, c = soft_clamp^-1(log INITIAL_SIGMA)).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from model.config import ModelConfig

INITIAL_SIGMA = 0.2                       # on the 0..1 scale (20 score points)
LOG_SIGMA_MIN = math.log(0.005)           # per_item bounds of log sigma (0.5 .. 100 score points)
LOG_SIGMA_MAX = math.log(1.0)


def soft_clamp(x: torch.Tensor, low: float = LOG_SIGMA_MIN, high: float = LOG_SIGMA_MAX) -> torch.Tensor:
    """mid + half * tanh((x - mid) / half): smoothly into (low, high), slope 1 at the midpoint."""
    mid, half = (low + high) / 2, (high - low) / 2
    return mid + half * torch.tanh((x - mid) / half)


def soft_clamp_inverse(y: float, low: float = LOG_SIGMA_MIN, high: float = LOG_SIGMA_MAX) -> float:
    """The x with soft_clamp(x) = y, for low < y < high."""
    mid, half = (low + high) / 2, (high - low) / 2
    return mid + half * math.atanh((y - mid) / half)


class DimensionHead(nn.Module):
    """shared (B, S) -> (B,) logit of one dimension: Linear -> ReLU -> Dropout -> Linear."""

    def __init__(self, shared: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(shared, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


class AssessmentHeads(nn.Module):
    """(B, P) pooled -> (B, D) logits and (B, D) fp32 log sigma, one head per dimension (schema order)."""

    def __init__(self, cfg: ModelConfig, n_dims: int):
        super().__init__()
        self.sigma_head = cfg.sigma_head
        self.shared = nn.Sequential(nn.Linear(cfg.pooled_size, cfg.head_shared_size), nn.ReLU(),
                                    nn.Dropout(cfg.head_dropout))
        self.dims = nn.ModuleList([DimensionHead(cfg.head_shared_size, cfg.head_hidden_size, cfg.head_dropout)
                                   for _ in range(n_dims)])
        # sigma starts at 0.2 (20 points), a prior of the spread of ratings, rather than 1.0 (100 points),
        # which short runs would never shrink to a calibrated width
        if cfg.sigma_head == "per_item":
            self.log_sigma_head = nn.Linear(cfg.head_shared_size, n_dims)
            nn.init.zeros_(self.log_sigma_head.weight)
            nn.init.constant_(self.log_sigma_head.bias, soft_clamp_inverse(math.log(INITIAL_SIGMA)))
            self.task_log_sigma = nn.Parameter(torch.full((n_dims,), math.log(INITIAL_SIGMA)))   # (D,) t_d
        else:
            self.log_sigma = nn.Parameter(torch.full((n_dims,), math.log(INITIAL_SIGMA)))   # (D,)

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """-> logits (B, D), log sigma (B, D) fp32, task log sigma (B, D) fp32 with per_item (None with
        per_dimension, where the log sigma itself weights the tasks)."""
        shared = self.shared(pooled)                                         # (B, S)
        logits = torch.stack([head(shared) for head in self.dims], dim=-1)   # (B, D)
        if self.sigma_head == "per_item":
            log_sigma = soft_clamp(self.log_sigma_head(shared).float())      # (B, D)
            task = self.task_log_sigma.float()[None].expand(pooled.shape[0], -1)
            return logits, log_sigma, task
        return logits, self.log_sigma.float()[None].expand(pooled.shape[0], -1), None
