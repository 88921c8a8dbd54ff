"""Pseudo-labels for the six technical seed10 dimensions, from the alignment and performance features.

Each dimension is 0..100 (100 = flawless) and NaN when it cannot be computed (no score, fewer than
MIN_NOTES notes). Every label is `100 * exp(-penalty)` of a non-negative penalty built from the
interpretable statistics of `technical_statistics`; a penalty of 1 gives 37. `excess(x, tol)` below
is max(0, x - tol). The constants were set from measurements on real human performances (Mozart K265
var. 1; 982 rated PercePiano segments by 19 pianists of Schubert D960 mvt. 2 and 3 and Beethoven
WoO 80) and on generated performances with known faults, so that a good human performance scores high
and is not penalised for expressive timing: timing is measured against a local tempo that follows
rubato, dynamics against phrase-level curves.

note_accuracy (needs a score)
    rate = (missed + sum over extra notes of min(1, velocity / EXTRA_FULL_VELOCITY)) / score notes
    (soft ghost notes count less); penalty = rate / NOTE_ERROR_SCALE.
rhythmic_precision (needs a score)
    e = RMS over score onsets of the median deviation (seconds) of their performed onsets from the
    local-tempo fit (each clipped at TIMING_CLIP_S; grace notes left out); c = RMS within-onset spread
    (chord asynchrony). penalty = excess(e, TIMING_TOL_S) / TIMING_SCALE_S
    + excess(c, CHORD_SPREAD_TOL_S) / CHORD_SPREAD_SCALE_S. Seconds rather than beats: within a
    passage played by several pianists, e tracks the raters' "timing stable <-> unstable" (Spearman
    +0.51) better than deviations in beats (+0.48) or relative to the IOI (+0.43).
dynamics_control (score optional)
    Streams are the score voices (without a score or with one voice: notes above / below the median
    pitch); each stream's line is its highest note per onset group. j = robust std of the line's
    velocities around their Gaussian smoothing over DYNAMICS_SMOOTH_S (note-to-note jitter);
    r = std over time of the smoothed curves (phrase-level shaping). penalty =
    excess(j, JITTER_TOL) / JITTER_SCALE + SHAPING_WEIGHT * excess(1 - r / SHAPING_REF):
    erratic and flat dynamics both lose points.
articulation (needs a score)
    log duration ratio (key-down time / written duration at the local tempo) of matched notes
    released with the sustain pedal up (all matched notes if fewer than MIN_NOTES are): bias
    b = median, spread s = robust std. penalty = excess(|b - ARTIC_CENTRE|, ARTIC_BIAS_TOL) /
    ARTIC_BIAS_SCALE + excess(s, ARTIC_SPREAD_TOL) / ARTIC_SPREAD_SCALE. Score MIDI carries no
    staccato marks, so the band around the human median is wide.
pedaling (score optional; NaN for a transcription without pedal events)
    blur = fraction of performed onset groups at which a note held only by the sustain pedal (key
    released, pedal down ever since, struck less than PEDAL_HOLD_HORIZON_S ago) is 1-2 semitones
    (any octave) from a note held by key; gaps (with a score) = fraction of written-legato transitions
    followed by a silence (no key, no pedal) longer than SILENCE_GAP_S. penalty =
    excess(blur, BLUR_TOL) / BLUR_SCALE + gaps / GAP_SCALE.
tone (score optional)
    u = mean over chords (>= 3 notes within ONSET_GROUP_S) of the velocity std of all notes but the
    top one (voicing the melody is not unevenness); h = fraction of notes with velocity >=
    HARSH_VELOCITY; with audio_features {"cqt": log-magnitude [frames, bins]}, n = mean spectral
    flatness of the louder half of the frames (noisy, unfocused sound). penalty =
    excess(u, UNEVEN_TOL) / UNEVEN_SCALE + h / HARSH_SCALE + excess(n, NOISE_FLATNESS_TOL) / NOISE_SCALE.

Measured on the 982 human PercePiano segments (median label): 85 / 88 / 100 / 100 / 86 / 100 in the
order above; on K265: 98 / 84 / 92 / 91 / 81 / 100. Within a passage, rhythmic_precision vs the
"timing unstable" rating: Spearman -0.46; pedaling vs "pedal blurred": -0.26.

`note_mask` (bool over alignment tokens, or over performed notes without a score) restricts every
statistic to the notes of one window (`pseudo_labels_window` takes a `segment.Segment`); the tempo fit
and the pedal and key state still come from the whole performance, so a window keeps its context.
"""
from __future__ import annotations

import math

import numpy as np

from model.schema import SEED10
from pipelines.constants import CC_SUSTAIN
from pipelines.io.notes import EXTRA, MATCHED, MISSED, Performance, Score

TECHNICAL_DIMENSIONS = tuple(SEED10.pseudo_names)

# --- note accuracy ---------------------------------------------------------------------------------
EXTRA_FULL_VELOCITY = 30.0      # an extra note at this velocity or louder counts as one full error
NOTE_ERROR_SCALE = 0.15         # error rate (per score note) that costs one penalty unit
# --- rhythm ----------------------------------------------------------------------------------------
TIMING_CLIP_S = 0.25            # a single onset deviation counts at most this much
TIMING_TOL_S = 0.02             # RMS onset deviation below this costs nothing
TIMING_SCALE_S = 0.08
CHORD_ONSET_TOL_S = 0.08        # performed notes of one score onset further apart are not "a chord"
CHORD_SPREAD_TOL_S = 0.025      # melody lead / rolled-chord spread that is normal
CHORD_SPREAD_SCALE_S = 0.08
# --- dynamics --------------------------------------------------------------------------------------
DYNAMICS_SMOOTH_S = 0.75        # std of the Gaussian smoothing of velocity over time
JITTER_TOL = 9.0                # velocity steps of note-to-note jitter that is normal (human median 7.4)
JITTER_SCALE = 8.0
SHAPING_REF = 3.0               # phrase-level velocity std (steps) from which shaping costs nothing
SHAPING_WEIGHT = 1.5            # penalty of perfectly flat dynamics
MIN_NOTES = 4                   # fewer notes: the dimension is NaN
# --- articulation ----------------------------------------------------------------------------------
ARTIC_CENTRE = math.log(0.65)   # median performed/written key-down ratio of human notes released dry
ARTIC_BIAS_TOL = 0.6            # |log ratio - centre| that is still a normal touch (0.36x .. 1.18x)
ARTIC_BIAS_SCALE = 0.5
ARTIC_SPREAD_TOL = 0.5          # robust std of log ratios that is normal (human median 0.45)
ARTIC_SPREAD_SCALE = 0.5
# --- pedal -----------------------------------------------------------------------------------------
PEDAL_HOLD_HORIZON_S = 2.0      # a pedal-held note older than this has decayed enough not to blur
ONSET_GROUP_S = 0.05            # performed onsets closer than this form one group
BLUR_TOL = 0.1                  # blurred-onset fraction that pedalled passing notes normally give
BLUR_SCALE = 0.4
SILENCE_GAP_S = 0.08
GAP_SCALE = 0.5
# --- tone ------------------------------------------------------------------------------------------
HARSH_VELOCITY = 112
UNEVEN_TOL = 6.0
UNEVEN_SCALE = 10.0
HARSH_SCALE = 0.3
NOISE_FLATNESS_TOL = 0.25
NOISE_SCALE = 0.25


def score_from_penalty(penalty: float) -> float:
    """100 * exp(-penalty) for a finite penalty >= 0, NaN otherwise."""
    return 100.0 * math.exp(-max(float(penalty), 0.0)) if math.isfinite(penalty) else math.nan


def pseudo_labels(score: Score | None, perf: Performance, alignment=None, attrs: np.ndarray | None = None,
                  audio_features: dict | None = None, note_mask: np.ndarray | None = None) -> dict[str, float]:
    """{dimension: 0..100 or NaN} for the six technical seed10 dimensions (see the module docstring).

    alignment: `align.Alignment` of perf to score (None without a score); attrs: its
    `note_attributes` (its log_duration_ratio column is used; recomputed when None); note_mask: bool
    over alignment tokens (or over performed notes without an alignment) selecting one window's notes.
    """
    stats = technical_statistics(score, perf, alignment, attrs, audio_features, note_mask)
    return {name: score_from_penalty(penalty(stats)) for name, penalty in PENALTIES.items()}


def _excess(value: float, tolerance: float = 0.0) -> float:
    """max(0, value - tolerance), NaN stays NaN."""
    return value if math.isnan(value) else max(0.0, value - tolerance)


def _note_accuracy_penalty(st: dict[str, float]) -> float:
    return st["error_rate"] / NOTE_ERROR_SCALE


def _rhythm_penalty(st: dict[str, float]) -> float:
    return (_excess(st["timing_rms_s"], TIMING_TOL_S) / TIMING_SCALE_S
            + _excess(st["chord_spread_s"], CHORD_SPREAD_TOL_S) / CHORD_SPREAD_SCALE_S)


def _dynamics_penalty(st: dict[str, float]) -> float:
    return (_excess(st["velocity_jitter"], JITTER_TOL) / JITTER_SCALE
            + SHAPING_WEIGHT * _excess(1.0 - st["velocity_shaping"] / SHAPING_REF))


def _articulation_penalty(st: dict[str, float]) -> float:
    return (_excess(abs(st["duration_bias"] - ARTIC_CENTRE), ARTIC_BIAS_TOL) / ARTIC_BIAS_SCALE
            + _excess(st["duration_spread"], ARTIC_SPREAD_TOL) / ARTIC_SPREAD_SCALE)


def _pedaling_penalty(st: dict[str, float]) -> float:
    return _excess(st["pedal_blur"], BLUR_TOL) / BLUR_SCALE + _zero_if_nan(st["legato_gaps"]) / GAP_SCALE


def _tone_penalty(st: dict[str, float]) -> float:
    return (_excess(st["chord_unevenness"], UNEVEN_TOL) / UNEVEN_SCALE + st["harsh_fraction"] / HARSH_SCALE
            + _zero_if_nan(_excess(st["noise_flatness"], NOISE_FLATNESS_TOL)) / NOISE_SCALE)


PENALTIES = {
    "note_accuracy": _note_accuracy_penalty,
    "rhythmic_precision": _rhythm_penalty,
    "dynamics_control": _dynamics_penalty,
    "articulation": _articulation_penalty,
    "pedaling": _pedaling_penalty,
    "tone": _tone_penalty,
}


def pseudo_labels_window(score: Score | None, perf: Performance, alignment, attrs: np.ndarray | None,
                         segment, audio_features: dict | None = None) -> dict[str, float]:
    """`pseudo_labels` on the notes of one `segment.Segment` (its token_mask)."""
    return pseudo_labels(score, perf, alignment, attrs, audio_features, note_mask=segment.token_mask)


def _zero_if_nan(value: float) -> float:
    return 0.0 if math.isnan(value) else value


# --- statistics ------------------------------------------------------------------------------------
def technical_statistics(score: Score | None, perf: Performance, alignment=None, attrs: np.ndarray | None = None,
                         audio_features: dict | None = None, note_mask: np.ndarray | None = None
                         ) -> dict[str, float]:
    """The interpretable statistics behind the pseudo-labels (NaN where not computable).

    error_rate; timing_rms_s, chord_spread_s (seconds); velocity_jitter, velocity_shaping (MIDI
    steps); duration_bias, duration_spread (log ratio); pedal_blur, legato_gaps (fractions);
    chord_unevenness (MIDI steps), harsh_fraction; noise_flatness (0..1).
    """
    view = _NoteView.build(score, perf, alignment, note_mask)
    stats = {"error_rate": view.error_rate()}
    stats.update(_timing_statistics(score, perf, alignment, view))
    stats.update(_dynamics_statistics(view))
    stats.update(_articulation_statistics(score, perf, alignment, attrs, view))
    stats.update(_pedal_statistics(score, perf, alignment, view))
    stats.update(_tone_statistics(view, audio_features))
    return stats


class _NoteView:
    """The played notes of one window (or a whole performance) with what is known about each."""

    def __init__(self, perf: Performance, perf_index: np.ndarray, voice: np.ndarray,
                 tokens: np.ndarray | None = None, token_rows: np.ndarray | None = None):
        self.perf = perf
        self.perf_index = perf_index          # i8 [k] played notes of the window, in onset order
        self.voice = voice                    # i8 [k] stream of each played note (dynamics lines)
        self.tokens = tokens                  # the window's alignment tokens (None without a score)
        self.token_rows = token_rows          # i8: their rows in alignment.tokens (and in attrs)

    @classmethod
    def build(cls, score: Score | None, perf: Performance, alignment, note_mask: np.ndarray | None) -> "_NoteView":
        if alignment is not None and score is None:
            raise ValueError("an alignment needs its score")
        if alignment is None or score is None:
            mask = np.ones(len(perf.notes), bool) if note_mask is None else np.asarray(note_mask, bool)
            idx = np.flatnonzero(mask)
            idx = idx[np.argsort(perf.notes["onset_s"][idx], kind="stable")]
            return cls(perf, idx, _register_streams(perf.notes["pitch"][idx]))
        rows = np.arange(alignment.n_tokens) if note_mask is None else np.flatnonzero(np.asarray(note_mask, bool))
        tokens = alignment.tokens[rows]
        played = tokens[tokens["perf_index"] >= 0]
        played = played[np.argsort(perf.notes["onset_s"][played["perf_index"]], kind="stable")]
        sidx = played["score_index"].astype(np.int64)
        pitch = perf.notes["pitch"][played["perf_index"]]
        voice = np.where(sidx >= 0, score.notes["voice"][np.maximum(sidx, 0)], -1).astype(np.int64)
        if len(np.unique(voice[voice >= 0])) < 2:      # no usable voices: split by register
            voice = _register_streams(pitch)
        else:                                          # extra notes join the voice nearest in pitch
            voice = _fill_extra_voices(voice, pitch)
        return cls(perf, played["perf_index"].astype(np.int64), voice, tokens, rows)

    @property
    def notes(self) -> np.ndarray:
        return self.perf.notes[self.perf_index]

    def error_rate(self) -> float:
        if self.tokens is None:
            return math.nan
        kind = self.tokens["kind"]
        n_score = int(((kind == MATCHED) | (kind == MISSED)).sum())
        extra_vel = self.perf.notes["velocity"][self.tokens["perf_index"][kind == EXTRA]].astype(float)
        errors = float((kind == MISSED).sum()) + float(np.minimum(1.0, extra_vel / EXTRA_FULL_VELOCITY).sum())
        if n_score + len(extra_vel) == 0:
            return math.nan
        return errors / max(n_score, 1)


def _register_streams(pitch: np.ndarray) -> np.ndarray:
    """0 for notes below the median pitch, 1 for the others (a two-hand proxy without score voices)."""
    if len(pitch) == 0:
        return np.zeros(0, dtype=np.int64)
    return (pitch >= np.median(pitch)).astype(np.int64)


def _fill_extra_voices(voice: np.ndarray, pitch: np.ndarray) -> np.ndarray:
    known = voice >= 0
    if known.all() or not known.any():
        return np.where(known, voice, 0)
    nearest = np.abs(pitch[~known][:, None] - pitch[known][None, :]).argmin(1)
    out = voice.copy()
    out[~known] = voice[known][nearest]
    return out


def _timing_statistics(score: Score | None, perf: Performance, alignment, view: _NoteView) -> dict[str, float]:
    """RMS deviation (s) of per-onset median performed time from the local tempo, and chord spread (s)."""
    nan = {"timing_rms_s": math.nan, "chord_spread_s": math.nan}
    if view.tokens is None:
        return nan
    from pipelines.features.align import is_grace, local_tempo

    matched = view.tokens[view.tokens["kind"] == MATCHED]
    matched = matched[~is_grace(score.notes[matched["score_index"]])]
    if len(matched) < MIN_NOTES:
        return nan
    tempo = local_tempo(score, perf, alignment)
    beats = score.notes["onset_beat"][matched["score_index"]]
    onsets = perf.notes["onset_s"][matched["perf_index"]]
    deviation = onsets - tempo.time_at(beats)
    group_dev, spreads = [], []
    for beat in np.unique(beats):
        d = deviation[beats == beat]
        group_dev.append(np.median(d))
        if len(d) >= 2 and np.ptp(d) < CHORD_ONSET_TOL_S * 4:
            spreads.append(np.std(d))
    group_dev = np.clip(np.asarray(group_dev), -TIMING_CLIP_S, TIMING_CLIP_S)
    return {"timing_rms_s": float(np.sqrt(np.mean(group_dev ** 2))),
            "chord_spread_s": float(np.sqrt(np.mean(np.square(spreads)))) if spreads else 0.0}


def _dynamics_statistics(view: _NoteView) -> dict[str, float]:
    """Note-to-smooth velocity jitter of each stream's top line and phrase-level shaping, MIDI steps.

    Per stream, the line is the highest note of each onset group (so voicing inside a chord is not
    jitter); jitter = robust std of the line's velocity around its Gaussian-smoothed curve; shaping =
    std over time of the smoothed curves (each centred on its own mean).
    """
    notes = view.notes
    nan = {"velocity_jitter": math.nan, "velocity_shaping": math.nan}
    if len(notes) < MIN_NOTES:
        return nan
    residuals, curves = [], []
    for v in np.unique(view.voice):
        line = _top_line(notes[view.voice == v])
        if len(line) < 3:
            continue
        t, vel = line["onset_s"], line["velocity"].astype(float)
        smooth = _gaussian_smooth(t, vel, DYNAMICS_SMOOTH_S)
        residuals.append(vel - smooth)
        curves.append(smooth - smooth.mean())
    if not residuals:
        return nan
    residual = np.concatenate(residuals)
    return {"velocity_jitter": float(1.4826 * np.median(np.abs(residual - np.median(residual)))),
            "velocity_shaping": float(np.std(np.concatenate(curves)))}


def _top_line(notes: np.ndarray) -> np.ndarray:
    """The highest note of each onset group (onsets closer than ONSET_GROUP_S), in time order."""
    notes = notes[np.argsort(notes["onset_s"], kind="stable")]
    group = np.cumsum(np.concatenate([[True], np.diff(notes["onset_s"]) > ONSET_GROUP_S])) if len(notes) else notes
    keep = [np.flatnonzero(group == g)[np.argmax(notes["pitch"][group == g])] for g in np.unique(group)]
    return notes[np.asarray(keep, dtype=np.int64)]


def _gaussian_smooth(t: np.ndarray, y: np.ndarray, sigma: float) -> np.ndarray:
    """Nadaraya-Watson Gaussian smoothing of y(t) evaluated at t, excluding each point itself [n]."""
    w = np.exp(-0.5 * ((t[:, None] - t[None, :]) / sigma) ** 2)
    np.fill_diagonal(w, 0.0)
    total = w.sum(1)
    return np.where(total > 1e-9, (w @ y) / np.maximum(total, 1e-12), y.mean())


def _articulation_statistics(score: Score | None, perf: Performance, alignment, attrs, view: _NoteView
                             ) -> dict[str, float]:
    """Median and robust std of the log duration ratio of matched notes released with the pedal up.

    Under the sustain pedal a key's release is not heard, so those notes are left out unless fewer than
    MIN_NOTES remain (then all matched notes count).
    """
    nan = {"duration_bias": math.nan, "duration_spread": math.nan}
    if view.tokens is None:
        return nan
    from pipelines.features.align import is_grace, local_tempo
    from pipelines.features.attributes import ATTR_INDEX, matched_timing
    from pipelines.io.performance import pedal_down_at

    rows = view.token_rows[view.tokens["kind"] == MATCHED]
    matched = view.tokens[view.tokens["kind"] == MATCHED]
    written = ~is_grace(score.notes[matched["score_index"]])
    rows, matched = rows[written], matched[written]
    if len(matched) < MIN_NOTES:
        return nan
    if attrs is not None:
        ldr = np.asarray(attrs)[rows, ATTR_INDEX["log_duration_ratio"]]
    else:
        ldr = matched_timing(score, perf, matched, local_tempo(score, perf, alignment))["log_duration_ratio"]
    dry = ~pedal_down_at(perf.pedal, perf.notes["offset_s"][matched["perf_index"]], CC_SUSTAIN)
    if dry.sum() >= MIN_NOTES:
        ldr = ldr[dry]
    centre = float(np.median(ldr))
    return {"duration_bias": centre, "duration_spread": float(1.4826 * np.median(np.abs(ldr - centre)))}


def _pedal_statistics(score: Score | None, perf: Performance, alignment, view: _NoteView) -> dict[str, float]:
    """Fraction of onset groups blurred by pedal-held clashing notes; fraction of legato gaps."""
    if len(perf.pedal) == 0 and perf.source == "transcription":
        return {"pedal_blur": math.nan, "legato_gaps": math.nan}
    notes = view.notes
    if len(notes) < MIN_NOTES:
        return {"pedal_blur": math.nan, "legato_gaps": math.nan}
    from pipelines.io.performance import pedal_intervals

    all_notes = perf.notes
    intervals = pedal_intervals(perf.pedal, CC_SUSTAIN, end_s=perf.duration_s + 10.0)
    group_times = _onset_groups(notes["onset_s"])
    blurred = [_blur_at(t, all_notes, intervals) for t in group_times]
    gaps = math.nan
    if view.tokens is not None:
        gaps = _legato_gap_fraction(score, perf, view, intervals)
    return {"pedal_blur": float(np.mean(blurred)) if blurred else math.nan, "legato_gaps": gaps}


def _onset_groups(onsets: np.ndarray) -> np.ndarray:
    """First onset of each run of onsets closer than ONSET_GROUP_S [g] (input sorted or not)."""
    onsets = np.sort(onsets)
    if len(onsets) == 0:
        return onsets
    starts = np.concatenate([[True], np.diff(onsets) > ONSET_GROUP_S])
    return onsets[starts]


def _pedal_down_throughout(intervals: np.ndarray, start: np.ndarray, end: float) -> np.ndarray:
    """bool [n]: the sustain pedal is down over all of [start_i, end]."""
    if len(intervals) == 0:
        return np.zeros(len(start), dtype=bool)
    k = np.searchsorted(intervals[:, 0], start, side="right") - 1
    ok = k >= 0
    kk = np.maximum(k, 0)
    return ok & (intervals[kk, 0] <= start) & (intervals[kk, 1] >= end)


def _blur_at(t: float, notes: np.ndarray, intervals: np.ndarray) -> bool:
    """Whether a pedal-held recent note clashes (1-2 semitones, any octave) with a key-held note at t."""
    group_end = t + ONSET_GROUP_S
    key_held = (notes["onset_s"] <= group_end) & (notes["offset_s"] > group_end)
    released = (notes["offset_s"] <= t) & (notes["onset_s"] > t - PEDAL_HOLD_HORIZON_S)
    if not key_held.any() or not released.any():
        return False
    held_by_pedal = released.copy()
    held_by_pedal[released] = _pedal_down_throughout(intervals, notes["offset_s"][released], group_end)
    if not held_by_pedal.any():
        return False
    ringing = np.unique(notes["pitch"][held_by_pedal] % 12)
    sounding = np.unique(notes["pitch"][key_held] % 12)
    interval = (ringing[:, None] - sounding[None, :]) % 12
    return bool(np.isin(interval, (1, 2, 10, 11)).any())


def _legato_gap_fraction(score: Score, perf: Performance, view: _NoteView, intervals: np.ndarray) -> float:
    """Of the window's score onsets whose written notes reach the next onset, the fraction followed by an
    audible silence (no key and no pedal holding any note) longer than SILENCE_GAP_S before the next
    performed onset."""
    matched = view.tokens[view.tokens["kind"] == MATCHED]
    if len(matched) < 2:
        return math.nan
    sn = score.notes[matched["score_index"]]
    pn = perf.notes[matched["perf_index"]]
    beats = np.unique(sn["onset_beat"])
    written_end = np.array([np.max(sn["onset_beat"][sn["onset_beat"] == b] + sn["duration_beat"][sn["onset_beat"] == b])
                            for b in beats])
    all_notes = perf.notes
    legato, gaps = 0, 0
    for b, end_b, next_b in zip(beats[:-1], written_end[:-1], beats[1:]):
        if end_b + 1e-6 < next_b:
            continue
        legato += 1
        last_release = float(pn["offset_s"][sn["onset_beat"] == b].max())
        next_onset = float(pn["onset_s"][sn["onset_beat"] == next_b].min())
        if next_onset - last_release <= SILENCE_GAP_S:
            continue
        mid = (last_release + next_onset) / 2
        keys = ((all_notes["onset_s"] < mid) & (all_notes["offset_s"] > mid)).any()
        pedal = _pedal_down_throughout(intervals, np.array([last_release]), mid)[0]
        gaps += int(not keys and not pedal)
    return gaps / legato if legato else math.nan


def _tone_statistics(view: _NoteView, audio_features: dict | None) -> dict[str, float]:
    """Velocity unevenness inside chords (std without the top note), harsh-velocity fraction, noise."""
    notes = view.notes
    out = {"chord_unevenness": math.nan, "harsh_fraction": math.nan,
           "noise_flatness": _noise_flatness(audio_features)}
    if len(notes) < MIN_NOTES:
        return out
    order = np.argsort(notes["onset_s"], kind="stable")
    onsets, pitch, vel = notes["onset_s"][order], notes["pitch"][order], notes["velocity"][order].astype(float)
    group = np.cumsum(np.concatenate([[True], np.diff(onsets) > ONSET_GROUP_S]))
    spreads = []
    for g in np.unique(group):
        sel = group == g
        if sel.sum() >= 3:
            inner = vel[sel][np.argsort(pitch[sel])][:-1]
            spreads.append(np.std(inner))
    out["chord_unevenness"] = float(np.mean(spreads)) if spreads else 0.0
    out["harsh_fraction"] = float(np.mean(vel >= HARSH_VELOCITY))
    return out


def _noise_flatness(audio_features: dict | None) -> float:
    """Mean spectral flatness (geometric / arithmetic mean of magnitude) of the loudest half of frames."""
    if not audio_features or audio_features.get("cqt") is None:
        return math.nan
    log_mag = np.asarray(audio_features["cqt"], dtype=np.float64)
    if log_mag.ndim != 2 or len(log_mag) == 0:
        return math.nan
    mag = np.exp(log_mag)
    flatness = np.exp(np.log(mag).mean(1)) / np.maximum(mag.mean(1), 1e-12)
    loud = log_mag.mean(1) >= np.median(log_mag.mean(1))
    return float(flatness[loud].mean())
