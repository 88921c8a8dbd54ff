"""Whole-performance descriptors: numbers that summarise one performance (its notes and pedals) against its score.

- `performance_features` (13, PERFORMANCE_FEATURE_NAMES): from the performance MIDI and the score alone; the
  feature baselines (pipelines/evaluation/baselines.py) read these, the "dozen simple features" of issue 11.
- `aligned_features` (18, ALIGNED_FEATURE_NAMES): from the note alignment's attributes (the same numbers the
  network reads per note: timing against the local tempo, duration against the written length, wrong and
  missed notes, pedals), summarised over the whole performance and over its 10 s stretches (how much the
  loudness, articulation and timing change along it).
- `score_features` (15, SCORE_FEATURE_NAMES): from the score alone (what the music asks for: its tempo,
  texture, register, written dynamics, pedal and touch), the same for every performance of a passage.
- `technical_features` (16, TECHNICAL_FEATURE_NAMES): the fault measures behind the pseudo-labels
  (`pipelines.features.pseudo_labels.technical_statistics`: timing, chord spread, tempo drift, velocity
  jitter and shaping, durations against the written ones, harmony-aware pedal blur, dryness against the
  written pedal), each judged against human norms, on the performance's notes only (no audio).
- `recording_descriptors` (62, DESCRIPTOR_NAMES): all four, what preprocessing stores per recording
  (`perf_features`), what the scoring job computes alike, and what the feature model the expert stage blends
  into the network's scores reads (pipelines/training/feature_model.py).
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


ALIGNED_FEATURE_NAMES: tuple[str, ...] = (
    "missed_share",            # score notes not played / all tokens
    "extra_share",             # performed notes not in the score / all tokens
    "onset_dev_abs",           # mean |onset deviation from the local tempo|, beats (matched notes)
    "onset_dev_std",           # its standard deviation (signed)
    "ioi_ratio_std",           # standard deviation of log(performed IOI / expected IOI)
    "ioi_ratio_abs",           # mean |log IOI ratio|
    "ioi_ratio_spread",        # its 90th - 10th percentile
    "duration_ratio_mean",     # mean log(performed / written duration at the local tempo): articulation
    "duration_ratio_std",      # its standard deviation
    "duration_ratio_p10",      # its 10th percentile (the shortest notes)
    "duration_ratio_p90",      # its 90th percentile (the longest notes)
    "sustain_share",           # matched notes struck with the sustain pedal down
    "soft_share",              # ... with una corda down
    "dynamic_contrast_std",    # standard deviation over 10 s stretches of their mean velocity (/127)
    "dynamic_contrast_range",  # max - min of the stretches' mean velocity
    "articulation_contrast",   # standard deviation over stretches of their mean log duration ratio
    "timing_instability",      # mean over stretches of the standard deviation of log IOI ratio
    "velocity_duration_corr",  # Pearson r of velocity and log duration ratio over matched notes
)
# What the music asks for, from the score alone: the same for every performance of a passage. Within a
# composition a passage's own character sets much of its ratings (a slow, thin passage is heard as slow-paced
# and sparse whoever plays it); the trees read these beside the performance's descriptors (RESULTS.md,
# section percepiano: the score descriptors).
SCORE_FEATURE_NAMES: tuple[str, ...] = (
    "score_bars",              # bars in the score
    "score_tempo_qpm",         # first written tempo, quarter notes per minute
    "score_notes_per_beat",    # written notes per quarter note
    "score_notes_per_s",       # ... per second at the written tempo
    "score_pitch_mean",        # MIDI pitch of the written notes, mean
    "score_pitch_std",         # ... standard deviation
    "score_pitch_range",       # ... 95th - 5th percentile
    "score_polyphony",         # written notes per distinct onset
    "score_low_share",         # written notes below middle C
    "score_duration_beats",    # mean written length, quarter notes
    "score_velocity_mean",     # written (deadpan) velocity, mean: the score's dynamics where it has them
    "score_velocity_std",      # ... standard deviation (0 for a score without dynamics)
    "score_pedal_share",       # share of the score's length under a written sustain pedal (0 without marks)
    "score_staccato_share",    # written notes marked staccato (MusicXML; 0 for a score MIDI)
    "score_legato_share",      # written notes under a slur (MusicXML; 0 for a score MIDI)
)
# The pseudo-labels' fault measures (pipelines/features/pseudo_labels.py, `technical_statistics`), whole
# performance, no audio: within passage several track what raters hear (RESULTS.md, section pseudo_labels:
# written_dry against "pedal sparse <-> saturated" 0.73), and the trees reading them gain on every protocol
# (section percepiano: the technical descriptors). A statistic that cannot be computed reads its fill value.
TECHNICAL_STATISTICS: tuple[tuple[str, float], ...] = (      # (statistic, fill value where not computable)
    ("timing_rms_s", 0.0), ("chord_spread_s", 0.0), ("tempo_drift", 0.0),   # tempo_drift as its size
    ("error_rate", 0.0), ("velocity_jitter", 0.0), ("velocity_shaping", 0.0), ("chord_unevenness", 0.0),
    ("voicing_lead", 0.0), ("loud_excess", 0.0), ("harsh_fraction", 0.0), ("duration_bias", 0.0),
    ("duration_spread", 0.0), ("pedal_blur", 0.0), ("pedal_dry", 0.0),
    ("pedal_written_dry", -1.0), ("pedal_written_held", -1.0),          # -1: the score writes no pedal
)
TECHNICAL_FEATURE_NAMES: tuple[str, ...] = tuple(f"tech_{name}" for name, _ in TECHNICAL_STATISTICS)
DESCRIPTOR_NAMES: tuple[str, ...] = (PERFORMANCE_FEATURE_NAMES + ALIGNED_FEATURE_NAMES + SCORE_FEATURE_NAMES
                                     + TECHNICAL_FEATURE_NAMES)
STRETCH_S, STRETCH_HOP_S = 10.0, 5.0      # the stretches of the contrast descriptors: 10 s, every 5 s


def aligned_features(attrs: Array, onsets_s: Array) -> Array:
    """float64 [18] in ALIGNED_FEATURE_NAMES order from the alignment's per-token attributes `attrs`
    [n, N_PERF_ATTRS] (pipelines.features.attributes.note_attributes) and each token's performed (or, for a
    missed note, estimated) onset in seconds; zeros without tokens, 0 for a statistic without enough notes."""
    from pipelines.constants import PERF_ATTR_NAMES

    out = np.zeros(len(ALIGNED_FEATURE_NAMES))
    attrs = np.asarray(attrs, dtype=np.float64)
    if attrs.ndim != 2 or len(attrs) == 0:
        return out
    col = {name: attrs[:, i] for i, name in enumerate(PERF_ATTR_NAMES)}
    onsets = np.asarray(onsets_s, dtype=np.float64)
    played = col["played"] > 0.5
    onset_dev, ioi, dur, vel = (col[n][played] for n in ("onset_dev", "log_ioi_ratio", "log_duration_ratio",
                                                          "velocity"))

    def pct(v: Array, q: float) -> float:
        return float(np.percentile(v, q)) if len(v) else 0.0

    def mean(v: Array) -> float:
        return float(v.mean()) if len(v) else 0.0

    def std(v) -> float:
        return float(np.std(v)) if len(v) > 1 else 0.0

    stretch_vel, stretch_dur, stretch_ioi = [], [], []
    times = onsets[played]
    if len(times):
        start, last = float(times.min()), max(float(times.max()) - STRETCH_S, float(times.min()))
        for s in [*np.arange(start, last, STRETCH_HOP_S), last]:      # the last stretch ends at the last onset
            inside = (times >= s) & (times <= s + STRETCH_S)
            if inside.any():
                stretch_vel.append(vel[inside].mean())
                stretch_dur.append(dur[inside].mean())
            if inside.sum() > 2:
                stretch_ioi.append(ioi[inside].std())
    corr = 0.0
    if len(vel) > 2 and vel.std() > 0 and dur.std() > 0:
        corr = float(np.corrcoef(vel, dur)[0, 1])
    out[:] = [
        mean(col["missed"]), mean(col["extra"]),
        mean(np.abs(onset_dev)), std(onset_dev),
        std(ioi), mean(np.abs(ioi)), pct(ioi, 90) - pct(ioi, 10),
        mean(dur), std(dur), pct(dur, 10), pct(dur, 90),
        mean(col["sustain"][played]), mean(col["soft"][played]),
        std(stretch_vel), (max(stretch_vel) - min(stretch_vel)) if stretch_vel else 0.0,
        std(stretch_dur), float(np.mean(stretch_ioi)) if stretch_ioi else 0.0,
        corr,
    ]
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def score_features(score) -> Array:
    """float64 [15] in SCORE_FEATURE_NAMES order from a `Score` alone; zeros for a score without notes."""
    from pipelines.io.notes import MARK_LEGATO, MARK_STACCATO

    out = np.zeros(len(SCORE_FEATURE_NAMES))
    notes = score.notes
    if len(notes) == 0:
        return out
    onset_beat = notes["onset_beat"].astype(np.float64)
    end_beat = float((onset_beat + notes["duration_beat"]).max())
    if score.n_bars:
        end_beat = max(end_beat, float(score.bar_starts_beat[-1]))
    length_beat = max(end_beat - float(min(onset_beat.min(), 0.0)), 1e-3)
    qpm = float(score.tempo_qpm) if score.tempo_qpm and score.tempo_qpm > 0 else 120.0
    pitch = notes["pitch"].astype(np.float64)
    velocity = notes["velocity"].astype(np.float64)
    pedal = 0.0
    if score.pedal_beats is not None and len(score.pedal_beats):
        spans = np.clip(np.asarray(score.pedal_beats, np.float64), 0.0, end_beat)
        pedal = float(np.clip((spans[:, 1] - spans[:, 0]).sum() / length_beat, 0.0, 1.0))
    p05, p95 = np.percentile(pitch, [5, 95])
    out[:] = [
        score.n_bars, qpm,
        len(notes) / length_beat, len(notes) / (length_beat * 60.0 / qpm),
        pitch.mean(), pitch.std(), p95 - p05,
        len(notes) / len(np.unique(np.round(onset_beat, 3))),
        float((pitch < 60).mean()),
        float(notes["duration_beat"].mean()),
        velocity.mean(), velocity.std(),
        pedal,
        float((notes["mark"] == MARK_STACCATO).mean()), float((notes["mark"] == MARK_LEGATO).mean()),
    ]
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def technical_features(score, perf, alignment, attrs: Array | None = None) -> Array:
    """float64 [16] in TECHNICAL_FEATURE_NAMES order: the pseudo-labels' fault measures of the whole
    performance against its score (no audio), each statistic's fill value where it cannot be computed."""
    from pipelines.features.pseudo_labels import technical_statistics

    stats = technical_statistics(score, perf, alignment, attrs)
    out = np.array([stats.get(name, np.nan) for name, _ in TECHNICAL_STATISTICS], dtype=np.float64)
    drift = TECHNICAL_FEATURE_NAMES.index("tech_tempo_drift")
    out[drift] = abs(out[drift])             # rushing or dragging alike
    fill = np.array([value for _, value in TECHNICAL_STATISTICS])
    return np.where(np.isfinite(out), out, fill)


def recording_descriptors(perf, score, alignment, attrs: Array) -> Array:
    """float32 [62] in DESCRIPTOR_NAMES order, as the feature set stores them (`perf_features`) and the scoring
    job computes them: `performance_features` and `aligned_features` of the score's `alignment` to `perf`,
    the score's own `score_features`, then the `technical_features`."""
    return np.concatenate([performance_features(perf, score),
                           aligned_features(attrs, alignment.tokens["perf_onset_s"]),
                           score_features(score),
                           technical_features(score, perf, alignment, attrs)]).astype(np.float32)
