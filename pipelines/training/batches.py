"""Feature rows (Parquet, pipelines/features/rows.py) -> model batches (dicts of padded tensors).

Used by training (Ray Train workers), evaluation and scoring alike, so every consumer pads, scales
and masks the same way. Pure numpy/torch: no Ray here.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import torch

from pipelines import constants as C
from pipelines.features.rows import loads_labels, unpack_array

# columns each audio encoder needs; the others can stay on disk
BASE_COLUMNS = ["recording_id", "segment_index", "split", "piece_id", "performer_id", "start_s", "end_s",
                "bar_start", "bar_end", "notes", "note_attrs", "note_times", "n_notes", "has_score",
                "labels_json", "pseudo_json", "augment", "status"]


def columns_for(audio_encoder: str, recording_statistics: bool = False) -> list[str]:
    """The Parquet columns a model with this audio encoder (and `model.recording_statistics`) reads."""
    extra = {"mert": ["audio", "audio_samples"], "cqt": ["cqt", "cqt_frames"],
             "both": ["audio", "audio_samples", "cqt", "cqt_frames"], "none": ["cqt", "cqt_frames"]}[audio_encoder]
    return BASE_COLUMNS + extra + (["recording_stats"] if recording_statistics else [])


def _pad_stack(arrays: Sequence[np.ndarray], dtype: torch.dtype, min_len: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack variable-length arrays (L_i, *tail) into (B, L_max, *tail) zeros-padded, plus lengths (B,)."""
    lengths = [len(a) for a in arrays]
    longest = max(max(lengths, default=0), min_len)
    tail = arrays[0].shape[1:] if arrays else ()
    out = np.zeros((len(arrays), longest, *tail), dtype=np.float32 if dtype.is_floating_point else np.int64)
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a
    return torch.as_tensor(out, dtype=dtype), torch.as_tensor(lengths, dtype=torch.long)


def recording_stats_matrix(stats: Sequence[np.ndarray]) -> torch.Tensor:
    """(B, 2S) float32 from each item's `recording_stats` vector; zeros for an item without one (no score)."""
    from model.statistics import n_recording_statistics

    size = n_recording_statistics(C.N_PERF_ATTRS)
    return torch.as_tensor(np.stack([s if len(s) == size else np.zeros(size, np.float32) for s in stats]),
                           dtype=torch.float32).reshape(-1, size)


def label_matrix(texts: Iterable[str], names: Sequence[str]) -> np.ndarray:
    """(B, D) float32 labels on 0..100 from JSON dicts; NaN where a dimension has no label."""
    rows = []
    for text in texts:
        labels = loads_labels(text)
        rows.append([labels.get(n, np.nan) for n in names])
    return np.asarray(rows, dtype=np.float32).reshape(-1, len(names))


def target_column(stage: str) -> str:
    """Which label column a training stage learns from."""
    return "pseudo_json" if stage == "pseudo" else "labels_json"


def collate(batch: dict[str, Any], names: Sequence[str], *, stage: str = "expert", audio_only: bool = False,
            max_notes: int | None = None) -> dict[str, torch.Tensor]:
    """A numpy batch from Ray Data / pyarrow (dict of column arrays) -> model batch of tensors.

    Output keys: audio (B, S) + audio_lengths, cqt (B, F, 168) + cqt_lengths, notes (B, N, 8),
    note_attrs (B, N, A), note_times (B, N), note_lengths (B,), recording_stats (B, 2S) where the rows carry
    them, labels (B, D) with NaN = missing.
    """
    out: dict[str, torch.Tensor] = {}
    if "audio" in batch:
        out["audio"], out["audio_lengths"] = _pad_stack([unpack_array(b, "f2").astype(np.float32)
                                                         for b in batch["audio"]], torch.float32)
    if "cqt" in batch:
        out["cqt"], out["cqt_lengths"] = _pad_stack([unpack_array(b, "f2", (C.CQT_N_BINS,)).astype(np.float32)
                                                     for b in batch["cqt"]], torch.float32)
    n = len(batch["notes"])
    notes = [unpack_array(b, "i2", (8,)).astype(np.int64) for b in batch["notes"]]
    attrs = [unpack_array(b, "f4", (C.N_PERF_ATTRS,)) for b in batch["note_attrs"]]
    times = [unpack_array(b, "f4") for b in batch["note_times"]]
    if max_notes is not None:
        notes, attrs, times = ([a[:max_notes] for a in arrays] for arrays in (notes, attrs, times))
    if audio_only:
        notes = [a[:0] for a in notes]
        attrs = [a[:0] for a in attrs]
        times = [a[:0] for a in times]
    out["notes"], out["note_lengths"] = _pad_stack(notes, torch.long)
    out["note_attrs"], _ = _pad_stack(attrs, torch.float32)
    out["note_times"], _ = _pad_stack(times, torch.float32)
    if "recording_stats" in batch:
        out["recording_stats"] = recording_stats_matrix([unpack_array(b, "f4") for b in batch["recording_stats"]])
    column = target_column(stage)
    if column in batch:
        out["labels"] = torch.as_tensor(label_matrix(batch[column], names))
    assert out["notes"].shape[0] == n
    return out


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
