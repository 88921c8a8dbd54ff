"""Bidirectional cross-attention between the audio frames and the score notes.

Both sides carry time stamps in seconds from the window start (audio frame centres; each note's
performed onset), so attention gets a learned relative time-offset bias: head h adds
-slope_h * |t_query - t_key|, with slopes initialised from 8 /s (a ~125 ms neighbourhood) down to
0.25 /s (nearly global). Padding is masked on both sides.

The two directions run in turn: the notes first gather their acoustic evidence (score <- audio), then
the audio frames read those audio-informed notes (audio <- score). The audio side, on the audio time
axis, is the fused sequence. An item without a score passes through with its cross-attention update
gated to zero, which is exactly the audio-only path, so such items can share a batch with scored ones.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.config import ModelConfig
from model.masks import at_least_one

MIN_SLOPE_PER_S = 0.25
MAX_SLOPE_PER_S = 8.0


class RelativeTimeBias(nn.Module):
    """(B, Tq) and (B, Tk) times in seconds -> (B, heads, Tq, Tk) additive attention bias."""

    def __init__(self, n_heads: int):
        super().__init__()
        if n_heads == 1:
            slopes = torch.tensor([1.0])
        else:
            slopes = torch.logspace(math.log10(MAX_SLOPE_PER_S), math.log10(MIN_SLOPE_PER_S), n_heads)
        self.raw_slope = nn.Parameter(torch.log(torch.expm1(slopes)))        # softplus^-1: slopes stay > 0

    def forward(self, q_times: torch.Tensor, k_times: torch.Tensor) -> torch.Tensor:
        offset = (q_times[:, :, None] - k_times[:, None, :]).abs().float()   # (B, Tq, Tk)
        slope = F.softplus(self.raw_slope.float())                           # (h,)
        return -slope[None, :, None, None] * offset[:, None]                 # (B, h, Tq, Tk)


class CrossAttention(nn.Module):
    """One direction: queries read a context sequence. LayerNorm before (both inputs) and after the residual.

    forward: x (B, Tq, D), context (B, Tk, D), key mask (B, Tk), times, gate (B,) -> (B, Tq, D)
    """

    def __init__(self, dim: int, n_heads: int, dropout: float, time_bias: bool):
        super().__init__()
        self.n_heads = n_heads
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.attn_dropout = dropout
        self.dropout = nn.Dropout(dropout)
        self.norm_out = nn.LayerNorm(dim)
        self.time_bias = RelativeTimeBias(n_heads) if time_bias else None

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor,
                x_times: torch.Tensor, context_times: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        b, tq, d = x.shape
        h = self.n_heads
        q = self.q(self.norm_q(x)).view(b, tq, h, d // h).transpose(1, 2)               # (B, h, Tq, d/h)
        k, v = self.kv(self.norm_kv(context)).view(b, -1, 2, h, d // h).permute(2, 0, 3, 1, 4)  # (B, h, Tk, d/h)
        keep = at_least_one(context_mask)[:, None, None, :]                               # (B, 1, 1, Tk)
        if self.time_bias is not None:
            bias = self.time_bias(x_times, context_times).to(q.dtype)                    # (B, h, Tq, Tk)
            bias = bias.masked_fill(~keep, float("-inf"))
        else:
            bias = keep
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                           dropout_p=self.attn_dropout if self.training else 0.0)
        y = self.out(y.transpose(1, 2).reshape(b, tq, d))                                 # (B, Tq, D)
        y = y * gate.to(y.dtype)[:, None, None]                                           # no context: no update
        return self.norm_out(x + self.dropout(y))


class BidirectionalFusion(nn.Module):
    """score <- audio, then audio <- score; returns the fused audio sequence (B, Ta, D)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        args = (cfg.fusion_dim, cfg.fusion_heads, cfg.fusion_dropout, cfg.fusion_time_bias)
        self.score_from_audio = CrossAttention(*args)
        self.audio_from_score = CrossAttention(*args)

    def forward(self, audio: torch.Tensor, audio_mask: torch.Tensor, audio_times: torch.Tensor,
                score: torch.Tensor, score_mask: torch.Tensor, score_times: torch.Tensor,
                has_score: torch.Tensor) -> torch.Tensor:
        has_audio = audio_mask.any(dim=1)
        score = self.score_from_audio(score, audio, audio_mask, score_times, audio_times, has_audio)  # (B, N, D)
        return self.audio_from_score(audio, score, score_mask, audio_times, score_times, has_score)  # (B, Ta, D)

    def audio_only(self, audio: torch.Tensor) -> torch.Tensor:
        """What `forward` gives an item without a score: the audio through the last layer norm."""
        return self.audio_from_score.norm_out(audio)                                      # (B, Ta, D)
