"""A light encoder of log-magnitude CQT frames: the audio branch where no pretrained weights are at hand.

(B, F, 168) log-CQT (44.1 kHz, hop 512, ~86.13 frames/s) -> (B, F, H), one vector per CQT frame.
A per-bin affine input scaling (learned, initialised to map the log floor near -1.5 and loud bins
near +1.5; no per-frame normalisation, so loudness survives for dynamics), two 3x3 conv blocks that
halve the frequency axis each, a projection, and `cqt_layers` residual dilated temporal conv blocks.
Every norm is per frame and padded frames are zeroed before each convolution, so a padded batch gives
the same valid frames as items run one at a time.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.config import CQT_FRAMES_PER_S, ModelConfig
from model.masks import lengths_to_mask

LOG_FLOOR_CENTRE = -6.0     # log(|C| + 1e-6) spans about -13.8 (silence) to +2 (loud bins)
LOG_SCALE = 0.25


class ChannelNorm2d(nn.Module):
    """LayerNorm over channels at each (time, frequency) point of a (B, C, T, F) map."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class SpectralConvBlock(nn.Module):
    """3x3 conv -> channel norm -> GELU -> 2x max-pool over frequency: (B, Ci, T, F) -> (B, Co, T, F/2)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm = ChannelNorm2d(out_channels)

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        x = x * frame_mask[:, None, :, None]                                 # zero padded frames
        x = F.gelu(self.norm(self.conv(x)))
        return F.max_pool2d(x, kernel_size=(1, 2))


class TemporalConvBlock(nn.Module):
    """Pre-norm residual dilated conv over time: x + Dropout(GELU(Conv1d(LN(x)))), (B, T, H) -> (B, T, H)."""

    def __init__(self, hidden: int, dilation: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.conv = nn.Conv1d(hidden, hidden, kernel_size=3, padding=dilation, dilation=dilation)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        h = self.norm(x) * frame_mask[..., None]                             # (B, T, H), padding zeroed
        h = self.conv(h.transpose(1, 2)).transpose(1, 2)
        return x + self.dropout(F.gelu(h))


class CqtEncoder(nn.Module):
    """Log-CQT frames -> (B, F, cqt_hidden_size) features at the CQT frame rate (~86.13 Hz)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_bins = cfg.cqt_bins
        self.frame_rate_hz = CQT_FRAMES_PER_S
        self.in_scale = nn.Parameter(torch.full((cfg.cqt_bins,), LOG_SCALE))
        self.in_shift = nn.Parameter(torch.full((cfg.cqt_bins,), -LOG_FLOOR_CENTRE * LOG_SCALE))
        self.spectral = nn.ModuleList([SpectralConvBlock(1, cfg.cqt_channels),
                                       SpectralConvBlock(cfg.cqt_channels, cfg.cqt_channels)])
        self.proj = nn.Linear(cfg.cqt_channels * (cfg.cqt_bins // 4), cfg.cqt_hidden_size)
        self.temporal = nn.ModuleList([TemporalConvBlock(cfg.cqt_hidden_size, 2 ** i, cfg.cqt_dropout)
                                       for i in range(cfg.cqt_layers)])
        self.out_norm = nn.LayerNorm(cfg.cqt_hidden_size)
        self.dropout = nn.Dropout(cfg.cqt_dropout)

    @property
    def hidden_size(self) -> int:
        return self.proj.out_features

    def frame_times(self, n_frames: int, device: torch.device) -> torch.Tensor:
        """(T,) time of each CQT frame in seconds (frames are centred on multiples of the hop)."""
        return torch.arange(n_frames, device=device) / self.frame_rate_hz

    def forward(self, cqt: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if cqt.shape[-1] != self.n_bins:
            raise ValueError(f"cqt has {cqt.shape[-1]} bins; the model expects {self.n_bins} (model.cqt_bins)")
        lengths = lengths.to(torch.long).clamp(max=cqt.shape[1])
        cqt = cqt[:, : max(int(lengths.max()), 1)]
        valid = lengths_to_mask(lengths, cqt.shape[1])                       # (B, T)
        frame_mask = valid.to(cqt.dtype)
        cqt = torch.where(valid[..., None], cqt, torch.zeros((), dtype=cqt.dtype, device=cqt.device))
        x = (cqt * self.in_scale + self.in_shift)[:, None]                   # (B, 1, T, F)
        for block in self.spectral:
            x = block(x, frame_mask)                                         # (B, C, T, F/2), then F/4
        x = x.permute(0, 2, 1, 3).flatten(2)                                 # (B, T, C * F/4)
        x = self.dropout(self.proj(x))                                       # (B, T, H)
        for block in self.temporal:
            x = block(x, frame_mask)
        return self.out_norm(x), lengths                                     # (B, T, H), (B,)
