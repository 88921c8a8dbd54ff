"""Temporal aggregation (`model.aggregation`): a BiLSTM over the fused sequence, then multi-head attention
pooling (lstm_attention, the seed's design); attention pooling over a per-step projection (attention); or
mean and standard deviation of a per-step projection (mean: statistics pooling).

(B, T, D) + (B,) lengths -> pooled (B, 2 * lstm_hidden_size) and pooling weights (B, heads, T), which
sum to 1 over each item's valid steps and show where in time the model looked (uniform for mean pooling).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from model.config import ModelConfig
from model.masks import lengths_to_mask


class BiLSTM(nn.Module):
    """Bidirectional LSTM over packed sequences, so padding never reaches the recurrence: (B, T, D) -> (B, T, 2H)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.lstm = nn.LSTM(cfg.fusion_dim, cfg.lstm_hidden_size, num_layers=cfg.lstm_layers, batch_first=True,
                            bidirectional=True, dropout=cfg.lstm_dropout if cfg.lstm_layers > 1 else 0.0)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, lengths.clamp_min(1).cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return out                                                           # (B, T, 2H)


class AttentionPooling(nn.Module):
    """Multi-head additive attention pooling: head h weights time steps and pools its slice of the features.

    forward: (B, T, P), (B, T) mask -> pooled (B, P), weights (B, heads, T)
    """

    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.score = nn.Sequential(nn.Linear(dim, dim // 2), nn.Tanh(), nn.Linear(dim // 2, n_heads))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, p = x.shape
        logits = self.score(x).float().transpose(1, 2)                       # (B, heads, T)
        logits = logits.masked_fill(~mask[:, None, :], float("-inf"))
        weights = torch.softmax(logits, dim=-1)                              # (B, heads, T)
        heads = x.float().view(b, t, self.n_heads, p // self.n_heads)        # (B, T, heads, P/heads)
        pooled = torch.einsum("bht,bthc->bhc", weights, heads).reshape(b, p)  # (B, P)
        return pooled, weights


class StepProjection(nn.Module):
    """Per-step features without recurrence: (B, T, D) -> (B, T, P) by a linear layer and GELU."""

    def __init__(self, cfg: ModelConfig, size: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(cfg.fusion_dim, size), nn.GELU(), nn.Dropout(cfg.lstm_dropout))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class StatisticsPooling(nn.Module):
    """Mean and standard deviation over the valid steps: (B, T, P/2), (B, T) mask -> (B, P), uniform weights."""

    def __init__(self, n_heads: int):
        super().__init__()
        self.n_heads = n_heads

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = mask.float() / mask.float().sum(dim=1, keepdim=True).clamp_min(1.0)    # (B, T)
        mean = torch.einsum("bt,btc->bc", weights, x.float())
        var = torch.einsum("bt,btc->bc", weights, (x.float() - mean[:, None, :]) ** 2)
        pooled = torch.cat([mean, torch.sqrt(var + 1e-6)], dim=-1)
        return pooled, weights[:, None, :].expand(-1, self.n_heads, -1)


class TemporalAggregator(nn.Module):
    """(B, T, D), (B,) lengths -> (B, P), (B, heads, T) by `cfg.aggregation` (see the module doc)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind = cfg.aggregation
        if self.kind == "lstm_attention":
            self.lstm = BiLSTM(cfg)
            self.pool = AttentionPooling(cfg.pooled_size, cfg.pool_heads)
        elif self.kind == "attention":
            self.lstm = StepProjection(cfg, cfg.pooled_size)
            self.pool = AttentionPooling(cfg.pooled_size, cfg.pool_heads)
        else:
            self.lstm = StepProjection(cfg, cfg.pooled_size // 2)
            self.pool = StatisticsPooling(cfg.pool_heads)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if bool((lengths < 1).any()):
            raise ValueError("an item has an empty sequence to aggregate (no audio frames and no notes)")
        mask = lengths_to_mask(lengths, x.shape[1])                          # (B, T)
        return self.pool(self.lstm(x, lengths), mask)
