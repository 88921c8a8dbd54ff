"""Whole-performance descriptors: a dozen numbers that summarise one performance (its notes and sustain pedal)
against its score. The feature baselines (pipelines/evaluation/baselines.py) and the feature model that the
expert stage blends into the network's scores (pipelines/training/feature_model.py) read them; preprocessing
stores them per recording (`perf_features`) and the scoring job computes them alike.
"""
from __future__ import annotations

import numpy as np

Array = np.ndarray

PERFORMANCE_FEATURE_NAMES: tuple[str, ...] = (
    "velocity_mean",         # MIDI velocity, mean over notes
    "velocity_std",          # ... its standard deviation
    "velocity_range",        # 95th - 5th percentile
    "note_density",          # notes per second of performance
    "duration_mean",         # performed note length, seconds (key held)
    "duration_cv",           # its coefficient of variation
    "legato_ratio",          # median over onsets of (note length / time to the next onset)
    "pedal_share",           # share of the performance with the sustain pedal (CC64) down
    "pedal_changes",         # sustain pedal presses per second
    "ioi_cv",                # coefficient of variation of inter-onset intervals (chords merged at 30 ms)
    "tempo_ratio",           # performance length / the score's length at its written tempo (1 without score)
    "duration_ratio",        # mean performed length / mean written length, tempo-corrected (1 without score)
    "melody_velocity_gap",   # mean velocity of the highest note of each onset minus the others'
)


def performance_features(perf, score=None) -> Array:
    """float64 [13] descriptors of a `Performance` (and its `Score`, when given) in PERFORMANCE_FEATURE_NAMES
    order; a performance without notes gives zeros."""
    from pipelines.io.performance import pedal_intervals

    notes = perf.notes
    out = np.zeros(len(PERFORMANCE_FEATURE_NAMES))
    if len(notes) == 0:
        return out
    onsets, offsets = notes["onset_s"].astype(np.float64), notes["offset_s"].astype(np.float64)
    velocity = notes["velocity"].astype(np.float64)
    durations = np.maximum(offsets - onsets, 1e-3)
    start, end = float(onsets.min()), float(offsets.max())
    length = max(end - start, 1e-3)
    p05, p95 = np.percentile(velocity, [5, 95])
    groups = _onset_groups(onsets)
    group_onsets = np.array([onsets[g].min() for g in groups])
    ioi = np.diff(group_onsets)
    legato = [float(np.median(durations[g]) / ioi[i]) for i, g in enumerate(groups[:-1]) if ioi[i] > 0]
    pedal = pedal_intervals(perf.pedal, 64, end_s=end) if len(perf.pedal) else np.zeros((0, 2))
    pedal_time = float(np.clip(pedal[:, 1], start, end).sum() - np.clip(pedal[:, 0], start, end).sum()) \
        if len(pedal) else 0.0
    top, rest = [], []
    for g in groups:
        if len(g) > 1:
            highest = g[np.argmax(notes["pitch"][g])]
            top.append(velocity[highest])
            rest.extend(velocity[[i for i in g if i != highest]])
    tempo_ratio = duration_ratio = 1.0
    if score is not None and len(score.notes):
        written = float((score.notes["onset_s"] + score.notes["duration_s"]).max() - score.notes["onset_s"].min())
        tempo_ratio = length / max(written, 1e-3)
        mean_written = float(np.mean(np.maximum(score.notes["duration_s"], 1e-3)))
        duration_ratio = float(np.mean(durations)) / max(mean_written * tempo_ratio, 1e-3)
    out[:] = [
        velocity.mean(), velocity.std(), p95 - p05,
        len(notes) / length,
        durations.mean(), durations.std() / max(durations.mean(), 1e-6),
        float(np.median(legato)) if legato else 1.0,
        pedal_time / length, len(pedal) / length,
        float(ioi.std() / ioi.mean()) if len(ioi) > 1 and ioi.mean() > 0 else 0.0,
        tempo_ratio, duration_ratio,
        float(np.mean(top) - np.mean(rest)) if top and rest else 0.0,
    ]
    return out


def _onset_groups(onsets: Array, tolerance_s: float = 0.03) -> list[Array]:
    """Indices of notes struck together (onsets within `tolerance_s` of the group's first), in time order."""
    order = np.argsort(onsets, kind="stable")
    groups, current, first = [], [order[0]], onsets[order[0]]
    for i in order[1:]:
        if onsets[i] - first <= tolerance_s:
            current.append(i)
        else:
            groups.append(np.asarray(current))
            current, first = [i], onsets[i]
    groups.append(np.asarray(current))
    return groups


def recording_descriptors(perf, score) -> Array:
    """float32 [13]: `performance_features` as the feature set stores them and the scoring job computes them."""
    return performance_features(perf, score).astype(np.float32)
