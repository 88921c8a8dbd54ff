"""Multi-task loss over the assessment dimensions, masked where a label is missing.

On the 0..1 scale (scores / 100), for dimension d with valid labels b in V_d and smoothed targets
y'_bd = (1 - eps) * y_bd + eps * mean_d (label smoothing toward the training mean), and the Gaussian
negative log-likelihood (up to a constant) of target y' under N(p, sigma^2), s = log sigma:

    nll(p, s) = 0.5 * exp(-2 s) * (p - y')^2 + s

    uncertainty (Kendall & Gal, 2018), per_dimension sigma:
        L = sum_d  mean_{b in V_d} nll(p_bd, s_d)
    uncertainty, per_item sigma (the default):
        L = sum_d  mean_{b in V_d} [ nll(p_bd, t_d) + nll(sg(p_bd), s_bd) ]
    equal (ablation):
        L = sum_d  mean_{b in V_d} [ 0.5 * (p_bd - y'_bd)^2 + nll(sg(p_bd), s_bd) ]

where s is the model output's log sigma (B, D): one learned value per dimension (`sigma_head:
per_dimension`, homoscedastic) or predicted per item (`per_item`, heteroscedastic), and t_d the per-item
model's task log sigma (`output.task_log_sigma`). sg() stops the gradient: the score heads are weighted
per dimension (t_d) or equally, whatever an item's sigma is, and the per-item sigma is trained by the
likelihood of the errors the predictions make. (The plain heteroscedastic nll(p_bd, s_bd) lets a model
raise sigma on the items it fits badly instead of fitting them; see model/heads.py.) Dimensions without
a valid label in the batch contribute nothing. Computed in fp32 whatever the autocast context.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from model.schema import DimensionSchema

SCORE_SCALE = 100.0


class MultiTaskLoss(nn.Module):
    """forward(output, labels (B, D) with NaN for missing) -> (loss scalar, {dimension: MSE on 0..1})."""

    def __init__(self, schema_or_n_dims: DimensionSchema | int,
                 weighting: Literal["uncertainty", "equal"] = "uncertainty", label_smoothing: float = 0.1):
        super().__init__()
        if weighting not in ("uncertainty", "equal"):
            raise ValueError(f"weighting must be 'uncertainty' or 'equal', got {weighting!r}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if isinstance(schema_or_n_dims, DimensionSchema):
            self.names = list(schema_or_n_dims.names)
        else:
            self.names = [f"dim{i}" for i in range(int(schema_or_n_dims))]
        self.weighting = weighting
        self.label_smoothing = label_smoothing
        # smoothing target per dimension on the 0..1 scale; mid-scale until set_target_mean is called
        self.register_buffer("target_mean", torch.full((len(self.names),), 0.5))

    def set_target_mean(self, mean: torch.Tensor) -> None:
        """Smooth toward these per-dimension training means (0..100 scale; NaN keeps mid-scale)."""
        mean = torch.as_tensor(mean, dtype=torch.float32).flatten()
        if mean.numel() != len(self.names):
            raise ValueError(f"target mean has {mean.numel()} values; the loss has {len(self.names)} dimensions")
        mean = torch.where(torch.isnan(mean), torch.full_like(mean, SCORE_SCALE / 2), mean)
        self.target_mean.copy_((mean / SCORE_SCALE).to(self.target_mean.device))

    def forward(self, output, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pred = output.scores.float() / SCORE_SCALE                           # (B, D)
        log_sigma = output.log_sigma.float()                                 # (B, D)
        if labels.shape != pred.shape:
            raise ValueError(f"labels have shape {tuple(labels.shape)}; predictions have {tuple(pred.shape)}")
        labels = labels.to(device=pred.device, dtype=torch.float32) / SCORE_SCALE
        valid = ~torch.isnan(labels)                                         # (B, D)
        eps = self.label_smoothing
        target = (1.0 - eps) * labels + eps * self.target_mean.to(pred.device)[None]
        sq_err = torch.where(valid, (pred - torch.where(valid, target, pred)) ** 2, 0.0)  # (B, D)
        count = valid.sum(dim=0)                                             # (D,)
        denom = count.clamp_min(1).float()
        mse = sq_err.sum(dim=0) / denom                                      # (D,)
        task = getattr(output, "task_log_sigma", None)
        if self.weighting == "uncertainty" and task is None:                 # per-dimension sigma
            nll = torch.where(valid, 0.5 * torch.exp(-2.0 * log_sigma) * sq_err + log_sigma, 0.0)   # (B, D)
            per_dim = nll.sum(dim=0) / denom                                 # (D,)
        elif self.weighting == "uncertainty":                                # task weights + per-item sigma
            task = task.float()
            weighted = torch.where(valid, 0.5 * torch.exp(-2.0 * task) * sq_err + task, 0.0)
            nll = torch.where(valid, 0.5 * torch.exp(-2.0 * log_sigma) * sq_err.detach() + log_sigma, 0.0)
            per_dim = (weighted + nll).sum(dim=0) / denom                    # (D,)
        else:                                                                # predictions detached in the nll
            nll = torch.where(valid, 0.5 * torch.exp(-2.0 * log_sigma) * sq_err.detach() + log_sigma, 0.0)
            per_dim = 0.5 * mse + nll.sum(dim=0) / denom                     # (D,)
        present = count > 0
        # the zero terms keep every output in the graph (no labels -> zero loss that still back-propagates; an
        # output a weighting leaves out, like the task sigma under equal weights, still gets the gradient DDP
        # waits for)
        outputs = pred.sum() + log_sigma.sum() + (task.float().sum() if task is not None else 0.0)
        loss = per_dim[present].sum() + 0.0 * outputs
        details = {name: mse[i].detach() for i, name in enumerate(self.names) if bool(present[i])}
        return loss, details
