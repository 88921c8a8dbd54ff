"""Small helpers for padded batches: lengths to masks, masked statistics, safe attention masks."""
from __future__ import annotations

import torch


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) valid lengths -> (B, max_len) bool mask, True on valid steps."""
    steps = torch.arange(max_len, device=lengths.device)
    return steps[None, :] < lengths[:, None]


def at_least_one(mask: torch.Tensor) -> torch.Tensor:
    """A key mask whose rows each keep at least one position (the first) valid.

    Attention over a row with no valid key gives NaN; items without a sequence (no score, say) use
    this mask and have their attention output gated to zero by the caller instead.
    """
    if mask.shape[1] == 0:
        return mask
    empty = ~mask.any(dim=1)
    if not bool(empty.any()):
        return mask
    mask = mask.clone()
    mask[empty, 0] = True
    return mask


def masked_mean_std(x: torch.Tensor, mask: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of (B, S) `x` over its valid entries, each (B, 1)."""
    mask = mask.to(x.dtype)
    count = mask.sum(dim=1, keepdim=True).clamp_min(1.0)
    mean = (x * mask).sum(dim=1, keepdim=True) / count
    var = (((x - mean) * mask) ** 2).sum(dim=1, keepdim=True) / count
    return mean, torch.sqrt(var + eps)
