"""Input statistics: a window's global performance descriptors, read straight from the note inputs.

`model.input_statistics: true` adds a small MLP whose output is added to the pooled vector before the
heads. Its input is computed from the same batch keys the symbolic encoder reads (`notes`, `note_attrs`,
`note_times`, `note_lengths`), so training, evaluation and scoring feed it alike and no feature set has to
be remade:

- mean and standard deviation over the window's tokens of every performance attribute
  (the preprocessing's `PERF_ATTR_NAMES`: played/missed/extra shares, velocity, timing and duration
  deviations, pedal shares);
- log note density (performed notes per second);
- log seconds per written quarter note (the least-squares slope of performed onset time on score position
  over the played score notes): the absolute tempo, which the attributes (all relative to the window's
  own median tempo) do not carry;
- mean and spread of the pitch register, mean log written duration.

`model.recording_statistics: true` adds a second MLP over the same descriptors taken over the whole
recording: their mean and standard deviation across the recording's windows (`recording_statistics`,
computed once per recording by the preprocessing and the scoring job through
`pipelines.features.processor.recording_stats`, and stored with every window as `recording_stats`). A
window then knows the performance it belongs to: a 10 s window cannot see a recording's dynamic range or
how its tempo moves between passages.

Mean pooling of a transformer's outputs can blur such first-order statistics; measured on PercePiano they
carry much of what the raters judge (loudness, pace, pedal; see benchmarks/RESULTS.md, section
percepiano). A window without notes gives zeros.
"""
from __future__ import annotations

import torch
from torch import nn

from model.config import OCTUPLE_N_SPECIAL, OCTUPLE_TICKS_PER_QUARTER, OCTUPLE_TS_DENOMINATORS

N_EXTRA_STATISTICS = 5      # density, tempo, pitch mean, pitch spread, written duration
CLIP = 5.0                  # every statistic is clipped to +-CLIP

_TYPE_NOTE, _TYPE_MISSED, _TYPE_EXTRA = 2, 3, 4     # OctupleMIDI type field values (before the shift)


def n_statistics(n_note_attrs: int) -> int:
    return 2 * n_note_attrs + N_EXTRA_STATISTICS


def _masked_mean_std(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, N, F), mask (B, N) -> mean, std (B, F) over the masked steps (0 where none)."""
    w = mask.unsqueeze(-1).to(x.dtype)
    n = w.sum(1).clamp(min=1.0)
    mean = (x * w).sum(1) / n
    var = (((x - mean.unsqueeze(1)) ** 2) * w).sum(1) / n
    return mean, var.clamp(min=0.0).sqrt()


def note_statistics(notes: torch.Tensor, attrs: torch.Tensor | None, times: torch.Tensor | None,
                    lengths: torch.Tensor, n_note_attrs: int) -> torch.Tensor:
    """(B, N, 8) tokens, (B, N, A) attributes, (B, N) onsets (s), (B,) lengths -> (B, 2A + 5) float32."""
    b, n = notes.shape[:2]
    device = notes.device
    valid = torch.arange(n, device=device).unsqueeze(0) < lengths.unsqueeze(1)
    tokens = (notes.long() - OCTUPLE_N_SPECIAL).clamp(min=0)
    kind = tokens[..., 0]
    valid = valid & (kind >= _TYPE_NOTE)                 # BOS / EOS rows are no notes
    played = valid & (kind != _TYPE_MISSED)
    written = valid & (kind != _TYPE_EXTRA)
    if attrs is None:
        attrs = torch.zeros(b, n, n_note_attrs, device=device)
    a_mean, a_std = _masked_mean_std(attrs.float().nan_to_num(0.0), valid)
    t = torch.zeros(b, n, device=device) if times is None else times.float().nan_to_num(0.0)

    n_played = played.sum(1).float()
    big = torch.finfo(torch.float32).max
    t_first = torch.where(played, t, big).amin(1)
    t_last = torch.where(played, t, -big).amax(1)
    span = torch.where(n_played > 0, t_last - t_first, torch.zeros_like(t_first)).clamp(min=0.0)
    log_density = torch.log((n_played + 1.0) / (span + 1.0))

    numerator = tokens[..., 7] // len(OCTUPLE_TS_DENOMINATORS) + 1
    denominator = torch.tensor(OCTUPLE_TS_DENOMINATORS, device=device, dtype=torch.float32)[
        (tokens[..., 7] % len(OCTUPLE_TS_DENOMINATORS))]
    quarters = tokens[..., 1].float() * numerator.float() * 4.0 / denominator \
        + tokens[..., 2].float() / OCTUPLE_TICKS_PER_QUARTER
    both = played & written
    q_mean, q_std = _masked_mean_std(quarters.unsqueeze(-1), both)
    tq_mean, _ = _masked_mean_std(t.unsqueeze(-1), both)
    w = both.float()
    cov = ((quarters - q_mean) * (t - tq_mean) * w).sum(1) / w.sum(1).clamp(min=1.0)
    var_q = (q_std.squeeze(-1) ** 2)
    slope = torch.where(var_q > 1e-3, cov / var_q.clamp(min=1e-3), torch.full_like(cov, 0.5))
    log_spq = torch.log(slope.clamp(min=0.05, max=5.0))

    pitch = tokens[..., 3].float() / 87.0
    p_mean, p_std = _masked_mean_std(pitch.unsqueeze(-1), valid)
    dur = torch.log1p(tokens[..., 4].float() / OCTUPLE_TICKS_PER_QUARTER)
    d_mean, _ = _masked_mean_std(dur.unsqueeze(-1), written)
    out = torch.cat([a_mean, a_std, log_density.unsqueeze(1), log_spq.unsqueeze(1), p_mean, p_std, d_mean], 1)
    return torch.where(lengths.unsqueeze(1) > 0, out, torch.zeros_like(out)).clamp(-CLIP, CLIP)


def n_recording_statistics(n_note_attrs: int) -> int:
    return 2 * n_statistics(n_note_attrs)


def recording_statistics(notes: torch.Tensor, attrs: torch.Tensor, times: torch.Tensor, lengths: torch.Tensor,
                         n_note_attrs: int) -> torch.Tensor:
    """The windows of one recording, padded: (W, N, 8) tokens, (W, N, A) attributes, (W, N) onsets, (W,)
    lengths -> float32 (2S,): the mean and the standard deviation over the windows with notes of each
    window's `note_statistics` (zeros when no window has notes; one window has zero spread)."""
    size = n_recording_statistics(n_note_attrs)
    keep = lengths > 0
    if not bool(keep.any()):
        return torch.zeros(size)
    with torch.no_grad():
        stats = note_statistics(notes[keep], attrs[keep], times[keep], lengths[keep], n_note_attrs)
    return torch.cat([stats.mean(0), stats.std(0, unbiased=False)]).clamp(-CLIP, CLIP).float()


class RecordingStatistics(nn.Module):
    """recording_statistics (B, 2S) -> (B, P) added to the pooled vector."""

    def __init__(self, n_note_attrs: int, pooled_size: int, hidden: int):
        super().__init__()
        self.size = n_recording_statistics(n_note_attrs)
        self.mlp = nn.Sequential(nn.Linear(self.size, hidden), nn.GELU(), nn.Linear(hidden, pooled_size))

    def forward(self, stats: torch.Tensor) -> torch.Tensor:
        return self.mlp(stats.to(self.mlp[0].weight.dtype))


class InputStatistics(nn.Module):
    """note_statistics -> (B, P) added to the pooled vector."""

    def __init__(self, n_note_attrs: int, pooled_size: int, hidden: int):
        super().__init__()
        self.n_note_attrs = n_note_attrs
        self.mlp = nn.Sequential(nn.Linear(n_statistics(n_note_attrs), hidden), nn.GELU(),
                                 nn.Linear(hidden, pooled_size))

    def forward(self, notes, attrs, times, lengths) -> torch.Tensor:
        stats = note_statistics(notes, attrs, times, lengths, self.n_note_attrs)
        return self.mlp(stats.to(self.mlp[0].weight.dtype))
