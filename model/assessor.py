"""PianoAssessor: audio and score encoders, cross-attention fusion, temporal aggregation, assessment heads.

    audio (B, S) ──MERT──► weighted layer sum ─► proj ─┐ (+ CQT encoder resampled onto MERT's frames)
    cqt (B, F, 168) ─CQT encoder─► proj ───────────────┤  (the audio axis when there is no MERT)
    notes (B, N, 8) + attrs ─symbolic encoder─► proj ──┴─► bidirectional cross-attention (audio axis)
        ─► BiLSTM ─► attention pooling (B, 2H) ─► heads ─► scores (B, D) in 0..100, sigma (B, D), attention (B, T)

An item whose `note_lengths` is 0 is assessed from audio alone (flagged in `audio_only`), also inside a
batch of scored items. With `audio_encoder: none` the note sequence is the time axis.

The weighted layer sum can be computed once with `encode_mert` and passed instead of the audio
(`mert_features` + `mert_lengths`), so that overlapping inference windows do not run MERT twice: the
backbone is skipped and the rest of the forward pass is the same. sigma is per item and dimension
(`sigma_head: per_item`) or one value per dimension broadcast over the batch (`per_dimension`).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn
from transformers import HubertModel

from model.aggregation import TemporalAggregator
from model.config import ModelConfig
from model.cqt import CqtEncoder
from model.fusion import BidirectionalFusion
from model.heads import AssessmentHeads
from model.masks import lengths_to_mask
from model.mert import MertEncoder
from model.schema import DimensionSchema
from model.statistics import InputStatistics, RecordingStatistics
from model.symbolic import SymbolicEncoder

Batch = dict[str, torch.Tensor]


@dataclasses.dataclass
class AssessmentOutput:
    """What the model says about a batch; every tensor is fp32 except the masks."""
    scores: torch.Tensor          # (B, D) predicted scores, 0..100, schema order
    sigma: torch.Tensor           # (B, D) aleatoric standard deviation on the 0..100 scale
    log_sigma: torch.Tensor       # (B, D) log sigma on the 0..1 scale (the loss's parameter)
    attention: torch.Tensor       # (B, T) pooling attention over the fused time axis, mean of the pool heads
    head_attention: torch.Tensor  # (B, heads, T) the same per pool head
    times: torch.Tensor           # (B, T) seconds from the window start of each step of that axis
    lengths: torch.Tensor         # (B,) valid steps of that axis (attention is 0 beyond)
    frame_rate_hz: float | None   # steps per second of that axis; None when it is the note axis
    audio_only: torch.Tensor      # (B,) bool: the item had no score, so only audio was assessed
    pooled: torch.Tensor          # (B, 2 * lstm_hidden_size) the pooled embedding
    task_log_sigma: torch.Tensor | None = None   # (B, D) per-dimension task weights of the loss (per_item only)


@dataclasses.dataclass
class _Sequence:
    x: torch.Tensor               # (B, T, D)
    lengths: torch.Tensor         # (B,)
    times: torch.Tensor           # (B, T)
    frame_rate_hz: float | None

    @property
    def mask(self) -> torch.Tensor:
        return lengths_to_mask(self.lengths, self.x.shape[1])


def pool_frames(seq: _Sequence, k: int) -> _Sequence:
    """Average every k consecutive valid frames: (B, T, D) -> (B, ceil(T/k), D), padding-invariant.

    Lengths become ceil(length / k); each pooled frame's time is the mean time of its valid frames."""
    if k <= 1:
        return seq
    B, T, D = seq.x.shape
    T2 = -(-T // k)
    pad = T2 * k - T
    mask = seq.mask.to(seq.x.dtype)                                            # (B, T)
    x = torch.nn.functional.pad(seq.x * mask[..., None], (0, 0, 0, pad)).view(B, T2, k, D)
    w = torch.nn.functional.pad(mask, (0, pad)).view(B, T2, k)
    t = torch.nn.functional.pad(seq.times * mask, (0, pad)).view(B, T2, k)
    count = w.sum(-1).clamp_min(1.0)                                          # (B, T2)
    lengths = torch.div(seq.lengths + k - 1, k, rounding_mode="floor")
    rate = None if seq.frame_rate_hz is None else seq.frame_rate_hz / k
    return _Sequence(x.sum(2) / count[..., None], lengths, t.sum(-1) / count, rate)


def resample_frames(x: torch.Tensor, lengths: torch.Tensor, frame_rate_hz: float,
                    target_times: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of (B, T, D) frames at `frame_rate_hz` onto (B, T') times -> (B, T', D).

    Frame k sits at k / frame_rate_hz; positions are clamped to each item's own valid frames.
    """
    last = (lengths.clamp_min(1) - 1).to(target_times.dtype)[:, None]       # (B, 1)
    pos = torch.minimum((target_times * frame_rate_hz).clamp_min(0.0), last)  # (B, T')
    lo = pos.floor()
    frac = (pos - lo)[..., None].to(x.dtype)
    lo = lo.long()
    hi = torch.minimum(lo + 1, last.long())
    gather = lambda idx: torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[-1]))  # noqa: E731
    return gather(lo) * (1 - frac) + gather(hi) * frac


class PianoAssessor(nn.Module):
    """The assessment model; see the module docstring. Build it with `model.builder.build_model`."""

    def __init__(self, cfg: ModelConfig, schema: DimensionSchema, hubert: HubertModel | None = None):
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.schema = schema
        dim = cfg.fusion_dim
        self.mert = MertEncoder(cfg, hubert) if cfg.uses_mert else None
        self.mert_proj = nn.Linear(self.mert.hidden_size, dim) if self.mert else None
        self.cqt = CqtEncoder(cfg) if cfg.uses_cqt else None
        self.cqt_proj = nn.Linear(self.cqt.hidden_size, dim) if self.cqt else None
        self.symbolic = SymbolicEncoder(cfg) if cfg.symbolic_encoder else None
        self.score_proj = nn.Linear(self.symbolic.hidden_size, dim) if self.symbolic else None
        self.fusion = BidirectionalFusion(cfg) if cfg.uses_audio and cfg.symbolic_encoder else None
        self.aggregator = TemporalAggregator(cfg)
        self.input_stats = (InputStatistics(cfg.n_note_attrs, cfg.pooled_size, cfg.head_shared_size)
                            if cfg.input_statistics and cfg.symbolic_encoder else None)
        self.recording_stats = (RecordingStatistics(cfg.n_note_attrs, cfg.pooled_size, cfg.head_shared_size)
                                if cfg.recording_statistics and cfg.symbolic_encoder else None)
        self.heads = AssessmentHeads(cfg, len(schema))

    # --- forward ---------------------------------------------------------------------------------
    def forward(self, batch: Batch) -> AssessmentOutput:
        batch_size = _batch_size(batch)
        if not self.config.performance_attributes and batch.get("note_attrs") is not None:
            batch = {**batch, "note_attrs": torch.zeros_like(batch["note_attrs"])}     # the ablation
        audio = self._encode_audio(batch)
        score = self._encode_score(batch, batch_size)
        if audio is None and (score is None or not bool((score.lengths > 0).all())):
            raise ValueError("audio_encoder is 'none' and an item has no notes: nothing to assess")
        device = (audio if audio is not None else score).x.device
        has_score = (score.lengths > 0) if score is not None else torch.zeros(batch_size, dtype=torch.bool,
                                                                               device=device)
        if audio is None:
            fused = score
        elif self.fusion is None:
            fused = audio
        elif score is None or not bool(has_score.any()):
            fused = dataclasses.replace(audio, x=self.fusion.audio_only(audio.x))
        else:
            x = self.fusion(audio.x, audio.mask, audio.times, score.x, score.mask, score.times, has_score)
            fused = dataclasses.replace(audio, x=x)
        pooled, head_weights = self.aggregator(fused.x, fused.lengths)      # (B, P), (B, heads, T)
        if self.input_stats is not None and score is not None:
            pooled = pooled + self.input_stats(batch["notes"], batch.get("note_attrs"), batch.get("note_times"),
                                               score.lengths).to(pooled.dtype)
        if self.recording_stats is not None and score is not None:
            if "recording_stats" not in batch:
                raise KeyError("batch lacks 'recording_stats' (model.recording_statistics): remake the feature set "
                               "with this revision's jobs/preprocess.py")
            context = batch["recording_stats"].to(pooled.device)
            pooled = pooled + self.recording_stats(context).to(pooled.dtype) * has_score.unsqueeze(1).to(pooled.dtype)
        logits, log_sigma, task_log_sigma = self.heads(pooled)               # (B, D), (B, D), (B, D) | None
        logits = logits.float()
        return AssessmentOutput(
            scores=torch.sigmoid(logits) * 100.0,
            sigma=torch.exp(log_sigma) * 100.0,
            log_sigma=log_sigma,
            attention=head_weights.mean(dim=1),
            head_attention=head_weights,
            times=fused.times,
            lengths=fused.lengths,
            frame_rate_hz=fused.frame_rate_hz,
            audio_only=~has_score,
            pooled=pooled,
            task_log_sigma=task_log_sigma,
        )

    def encode_mert(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """audio (B, S) at 24 kHz, (B,) valid samples -> MERT's weighted layer sum (B, T, H) fp32, (B,) frames.

        What `forward` computes from `batch["audio"]` before the projection; `forward` takes it back as
        `batch["mert_features"]` / `batch["mert_lengths"]`. n samples give `config.mert_frames(n)`
        frames, frame f centred on sample f * hop + (field - 1) / 2 (hop 320, field 400 for MERT-v1).
        Chunks cut by `mert_chunk_spans` yield frames that, concatenated, sit on the frame grid of the
        whole audio, so a window starting at sample k * hop takes frames k, k + 1, ... of them. Features of
        a chunk are not those of the whole audio (MERT sees only the chunk), so chunks should be long
        compared with the windows cut from them.
        """
        if self.mert is None:
            raise ValueError(f"audio_encoder is {self.config.audio_encoder!r}: the model has no MERT branch")
        feats, frames = self.mert(audio, lengths.to(device=audio.device, dtype=torch.long))
        return feats.float(), frames                                         # (B, T, H), (B,)

    def mert_chunk_spans(self, n_samples: int, chunk_s: float,
                         min_tail_samples: int | None = None) -> list[tuple[int, int]]:
        """[start, end) samples of consecutive chunks of about `chunk_s` seconds covering `n_samples`.

        Chunks start at multiples of the hop and run field - hop samples (80 for MERT-v1) past the next
        chunk's start, so chunk i yields exactly the frames i * c, ..., (i + 1) * c - 1 of the whole audio
        (c frames per chunk) and the concatenation has `config.mert_frames(n_samples)` frames. A tail
        shorter than `min_tail_samples` (default: one frame's receptive field) joins the chunk before it.
        """
        cfg = self.config
        hop, field = cfg.mert_hop_samples, cfg.mert_receptive_field_samples
        if n_samples < field:
            raise ValueError(f"{n_samples} samples: MERT needs at least {field}")
        step = max(1, round(chunk_s * cfg.mert_frames_per_s)) * hop                # samples per chunk, hop multiple
        starts = list(range(0, n_samples, step))
        if len(starts) > 1 and n_samples - starts[-1] < max(field, min_tail_samples or 0):
            starts.pop()
        return [(s, min(s + step + field - hop, n_samples) if i + 1 < len(starts) else n_samples)
                for i, s in enumerate(starts)]

    def _encode_audio(self, batch: Batch) -> _Sequence | None:
        seq = None
        if self.mert is not None:
            if "mert_features" in batch:                                     # precomputed by encode_mert
                feats = batch["mert_features"]
                if feats.dim() != 3 or feats.shape[-1] != self.mert.hidden_size:
                    raise ValueError(f"mert_features have shape {tuple(feats.shape)}; expected (B, T, "
                                     f"{self.mert.hidden_size}) from encode_mert")
                feats = feats.to(self.mert_proj.weight.dtype)
                frames = _lengths(batch, "mert_lengths", feats).clamp(max=feats.shape[1])
            else:
                wave = _require(batch, "audio", "audio_encoder='mert' or 'both' (or 'mert_features')")
                lengths = _lengths(batch, "audio_lengths", wave)
                feats, frames = self.mert(wave, lengths)                    # (B, Ta, Hm), (B,)
            times = self.mert.frame_times(feats.shape[1], feats.device).expand(feats.shape[0], -1)
            seq = _Sequence(self.mert_proj(feats), frames, times, self.mert.frame_rate_hz)
        if self.cqt is not None:
            cqt = _require(batch, "cqt", "audio_encoder='cqt' or 'both'")
            feats, frames = self.cqt(cqt, _lengths(batch, "cqt_lengths", cqt))  # (B, Tc, Hc), (B,)
            feats = self.cqt_proj(feats)                                     # (B, Tc, D)
            if seq is None:
                times = self.cqt.frame_times(feats.shape[1], feats.device).expand(feats.shape[0], -1)
                seq = _Sequence(feats, frames, times, self.cqt.frame_rate_hz)
            else:                                                            # onto MERT's frames
                seq.x = seq.x + resample_frames(feats, frames, self.cqt.frame_rate_hz, seq.times)
        if seq is not None:
            seq = pool_frames(seq, self.config.audio_pool_frames)             # (B, T/k, D)
        return seq

    def _encode_score(self, batch: Batch, batch_size: int) -> _Sequence | None:
        if self.symbolic is None or "notes" not in batch or batch["notes"].shape[1] == 0:
            return None
        notes = batch["notes"]                                               # (B, N, 8)
        lengths = batch.get("note_lengths")
        if lengths is None:
            lengths = (notes != 0).any(dim=-1).sum(dim=1)
        lengths = lengths.to(device=notes.device, dtype=torch.long).clamp(max=notes.shape[1])
        if bool((lengths == 0).all()):
            return None
        attrs = batch.get("note_attrs")
        if self.fusion is not None and self.config.fusion_time_bias and "note_times" not in batch:
            raise KeyError("batch lacks 'note_times' (seconds of each note's onset), needed by the time bias "
                           "of the cross-attention (model.fusion_time_bias)")
        mask = lengths_to_mask(lengths, notes.shape[1])
        times = batch.get("note_times")
        times = (torch.zeros(notes.shape[:2], device=notes.device) if times is None
                 else torch.where(mask, times.float().nan_to_num(0.0), 0.0))
        x = self.score_proj(self.symbolic(notes, attrs, lengths))            # (B, N, D)
        return _Sequence(x, lengths, times, None)

    # --- parameters ------------------------------------------------------------------------------
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by learning-rate group, each exactly once; frozen ones left out.

        audio: the MERT backbone and the CQT encoder; symbolic: the symbolic encoder; head: everything
        new on top (MERT's layer weights, projections, fusion, LSTM, pooling, heads, log-sigma head).
        """
        groups: dict[str, list[nn.Parameter]] = {"audio": [], "symbolic": [], "head": []}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            if name.startswith(("mert.hubert.", "cqt.")):
                groups["audio"].append(param)
            elif name.startswith("symbolic."):
                groups["symbolic"].append(param)
            else:
                groups["head"].append(param)
        return groups

    def parameter_counts(self) -> dict[str, dict[str, int]]:
        """{part: {"total": n, "trainable": n}} for each part present, plus "all"."""
        parts = {"mert": self.mert, "cqt": self.cqt, "symbolic": self.symbolic,
                 "projections": [self.mert_proj, self.cqt_proj, self.score_proj],
                 "fusion": self.fusion, "aggregation": [self.aggregator, self.input_stats, self.recording_stats],
                 "heads": self.heads}
        counts = {}
        for name, modules in parts.items():
            modules = [m for m in (modules if isinstance(modules, list) else [modules]) if m is not None]
            if not modules:
                continue
            params = [p for m in modules for p in m.parameters()]
            counts[name] = {"total": sum(p.numel() for p in params),
                            "trainable": sum(p.numel() for p in params if p.requires_grad)}
        counts["all"] = {"total": sum(p.numel() for p in self.parameters()),
                         "trainable": sum(p.numel() for p in self.parameters() if p.requires_grad)}
        return counts


def _require(batch: Batch, key: str, why: str) -> torch.Tensor:
    if key not in batch:
        raise KeyError(f"batch lacks {key!r}, needed by {why}")
    return batch[key]


def _lengths(batch: Batch, key: str, values: torch.Tensor) -> torch.Tensor:
    lengths = batch.get(key)
    if lengths is None:
        return torch.full((values.shape[0],), values.shape[1], dtype=torch.long, device=values.device)
    return lengths.to(device=values.device, dtype=torch.long)


def _batch_size(batch: Batch) -> int:
    for key in ("audio", "mert_features", "cqt", "notes"):
        if key in batch:
            return int(batch[key].shape[0])
    raise KeyError("batch has none of 'audio', 'mert_features', 'cqt', 'notes'")
