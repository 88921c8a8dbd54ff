"""Seeded deviations from a correct rendition, and how each take's deviations are sampled.

Every take after the clean one draws a severity s from a stratified grid over (0.1, 1]
(`take_severities`) and a random subset of deviation families (`sample_deviation_spec`, magnitudes
`MAX_DEVIATIONS` at severity 1), and `apply_deviations` applies them to its own natural rendition
(K265: to the human performance):

| family | spec fields | what changes |
| --- | --- | --- |
| notes | wrong_rate, missed_rate, extra_rate | pitch +-1/2 semitones; note removed; slip note added near a played one |
| timing | onset_jitter_ms, tempo_drift | N(0, sigma) onset shifts; tempo ratio 1 -> 1 + drift across the take |
| local timing | local_tempo_bars, local_tempo_pct | that many bars rushed or dragged by +-pct % inside the bar only |
| dynamics | dynamics_flatten, velocity_noise | velocities pulled to their mean; N(0, sigma) velocity noise |
| tone | voicing_loss, harshness | top note of each chord pulled below the others; velocities pushed up |
| articulation | duration_scale, duration_jitter | sounding durations x scale x exp(N(0, sigma)) |
| pedal | pedal_missing, pedal_blur | pedal presses dropped; pedal held through changes (blur) |
| expression | deadpan | rubato and dynamic shaping removed (interpretive only) |

The result is a `Take`: the performed notes and pedal, the measures of what was applied and their
labels (`pipelines.demo_corpus.labels`), and `events`, one per inserted error with its 0-based score
bar (`bar_truth` gathers them per bar): the truth that per-bar feedback is tested against. Each family
draws from its own random stream, so switching one family on leaves the others' draws alone.

Local timing is not a sampled family (`sample_deviation_spec` never sets it, and a spec without it
writes no local-tempo fields in `to_dict`, so existing corpora are unchanged) and it is not in the
labels: it exists for the per-bar truth (`pipelines.demo_corpus.bar_errors`). Its bars are drawn from
their own stream among the bars whose played notes start at two or more written onsets, never the
first or last bar, never two adjacent; each is played +-local_tempo_pct % faster (rushing) or slower
(dragging) than written: its onsets are compressed or stretched about the bar's start and everything
after is shifted, so the other bars keep their tempo.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np

from pipelines import constants as C
from pipelines.demo_corpus.labels import labels_from_measures
from pipelines.demo_corpus.pieces import CorpusGenerationError, score_end_beat
from pipelines.demo_corpus.renditions import MIN_NOTE_S, Rendition, natural_rendition, onset_groups, top_of_chord
from pipelines.io.notes import PERF_NOTE_DTYPE, Performance, Score

VELOCITY_MIN, VELOCITY_MAX = 1, 127


@dataclasses.dataclass(frozen=True)
class DeviationSpec:
    """Controlled deviations applied to a rendition (all zero / 1.0 scale = the clean take)."""
    wrong_rate: float = 0.0            # fraction of played score notes struck at a wrong pitch
    missed_rate: float = 0.0           # fraction of played score notes left out
    extra_rate: float = 0.0            # added slip notes per played score note
    onset_jitter_ms: float = 0.0       # std of random onset shifts, ms
    tempo_drift: float = 0.0           # tempo ratio at the end minus 1 (+ rushing, - dragging)
    dynamics_flatten: float = 0.0      # 0..1: velocities pulled to their mean
    velocity_noise: float = 0.0        # std of random velocity changes, MIDI units
    voicing_loss: float = 0.0          # 0..1: chord top note pulled down to (at 1: below) the others
    harshness: float = 0.0             # velocity added to every note, MIDI units
    duration_scale: float = 1.0        # sounding-duration factor (< 1 clipped, > 1 over-held)
    duration_jitter: float = 0.0       # std of random log duration factors
    pedal_missing: float = 0.0         # fraction of pedal presses dropped
    pedal_blur: float = 0.0            # fraction of pedal changes not made (held through)
    deadpan: float = 0.0               # 0..1: rubato and dynamic shaping removed
    local_tempo_bars: int = 0          # bars played at a changed tempo inside the bar only
    local_tempo_pct: float = 0.0       # ... by this much, % (sign drawn per bar: + rushing, - dragging)
    seed: int = 0

    def __post_init__(self) -> None:
        unit = ("wrong_rate", "missed_rate", "extra_rate", "dynamics_flatten", "voicing_loss",
                "pedal_missing", "pedal_blur", "deadpan")
        for name in unit:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise CorpusGenerationError(f"deviation {name}={value} must be in [0, 1]")
        for name in ("onset_jitter_ms", "velocity_noise", "harshness", "duration_jitter"):
            if getattr(self, name) < 0.0:
                raise CorpusGenerationError(f"deviation {name}={getattr(self, name)} must be >= 0")
        if not -0.9 < self.tempo_drift < 0.9:
            raise CorpusGenerationError(f"deviation tempo_drift={self.tempo_drift} must be in (-0.9, 0.9)")
        if not 0.05 <= self.duration_scale <= 20.0:
            raise CorpusGenerationError(f"deviation duration_scale={self.duration_scale} must be in [0.05, 20]")
        if int(self.local_tempo_bars) != self.local_tempo_bars or self.local_tempo_bars < 0:
            raise CorpusGenerationError(f"deviation local_tempo_bars={self.local_tempo_bars} must be a count >= 0")
        if not 0.0 <= self.local_tempo_pct < 90.0:
            raise CorpusGenerationError(f"deviation local_tempo_pct={self.local_tempo_pct} must be in [0, 90)")

    @property
    def is_clean(self) -> bool:
        return self == DeviationSpec(seed=self.seed)

    def to_dict(self) -> dict[str, float]:
        """Every field; the local-tempo ones only when set (manifests of older corpora stay byte-identical)."""
        values = dataclasses.asdict(self)
        if self.local_tempo_bars == 0 and self.local_tempo_pct == 0.0:
            for name in LOCAL_TEMPO_FIELDS:
                del values[name]
        return values

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DeviationSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise CorpusGenerationError(f"unknown deviation field {unknown[0]!r}")
        return cls(**data)

    def scaled(self, factor: float) -> "DeviationSpec":
        """The same deviations (same seed) at `factor` times the magnitude."""
        values = self.to_dict()
        for name, value in values.items():
            if name in ("seed", "local_tempo_bars"):   # a count of bars, not a magnitude
                continue
            values[name] = math.exp(math.log(value) * factor) if name == "duration_scale" else value * factor
        return DeviationSpec(**values)


@dataclasses.dataclass
class Take:
    """One generated performance: notes + pedal, the applied deviations, their measures and labels.

    events: one dict per inserted error, in time order. Note errors: {"kind": "missed" | "wrong" | "extra",
    "bar": 0-based score bar, "score_index": the written note (-1 for an extra note), "time_s": its
    performed onset (missed: where it would have been played), "pitch": the pitch played (missed: the
    written one)}; an extra note also has "anchor_index", the written note it slipped from, whose bar
    is its bar. Local timing: {"kind": "rushing" | "dragging", "bar", "tempo_pct": +-x (the bar's
    tempo against the written one, %), "time_s": where the bar starts}.
    """
    notes: np.ndarray                  # PERF_NOTE_DTYPE [n]
    pedal: np.ndarray                  # PEDAL_DTYPE [m]
    spec: DeviationSpec
    measures: dict[str, float]
    labels: dict[str, float]
    counts: dict[str, int]
    events: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def performance(self) -> Performance:
        return Performance(notes=self.notes, pedal=self.pedal, source="midi")


LOCAL_TEMPO_FIELDS = ("local_tempo_bars", "local_tempo_pct")
NOTE_ERROR_KINDS = ("missed", "wrong", "extra")
TIMING_KINDS = ("rushing", "dragging")
LOCAL_TEMPO_STREAM = 8                  # random stream of the local-tempo bars and signs
BAR_START_GUARD_S = 1e-3                # a bar's warp starts this much before its earliest note


def bar_truth(take: Take) -> dict[int, set[str]]:
    """0-based score bar -> the kinds of error inserted in it (missed, wrong, extra, rushing, dragging)."""
    truth: dict[int, set[str]] = {}
    for event in take.events:
        truth.setdefault(int(event["bar"]), set()).add(event["kind"])
    return dict(sorted(truth.items()))


def _rng(spec: DeviationSpec, stream: int) -> np.random.Generator:
    """Independent streams per family, so switching one family on leaves the others' draws alone."""
    return np.random.default_rng([spec.seed, stream])


def _rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(values ** 2))) if len(values) else 0.0


def _drift_map(drift: float, total_s: float) -> Callable[[np.ndarray], np.ndarray]:
    """t -> performed time when the tempo ratio goes linearly from 1 to 1 + drift over total_s."""
    if drift == 0.0 or total_s <= 0.0:
        return lambda t: t
    return lambda t: (total_s / drift) * np.log1p(drift * np.clip(t, 0.0, None) / total_s)


def _deadpan_map(onsets: np.ndarray, beats: np.ndarray, amount: float) -> Callable[[np.ndarray], np.ndarray]:
    """t -> t moved `amount` of the way from the played timing to a steady tempo (least squares fit)."""
    known = ~np.isnan(beats)
    if amount == 0.0 or known.sum() < 2:
        return lambda t: t
    uniq, inverse = np.unique(np.round(beats[known], 6), return_inverse=True)
    if len(uniq) < 2:
        return lambda t: t
    mean_t = np.maximum.accumulate(np.bincount(inverse, onsets[known]) / np.bincount(inverse))
    slope, intercept = np.polyfit(uniq, mean_t, 1)

    def mapping(t: np.ndarray) -> np.ndarray:
        beat = np.interp(t, mean_t, uniq, left=np.nan, right=np.nan)
        beat = np.where(t < mean_t[0], uniq[0] + (t - mean_t[0]) / slope, beat)
        beat = np.where(t > mean_t[-1], uniq[-1] + (t - mean_t[-1]) / slope, beat)
        played = np.interp(beat, uniq, mean_t, left=np.nan, right=np.nan)
        played = np.where(np.isnan(played), t, played)
        return t + amount * (intercept + slope * beat - played)
    return mapping


def _apply_deadpan_velocity(velocity: np.ndarray, groups: np.ndarray, amount: float) -> np.ndarray:
    """Move each onset group's mean velocity `amount` of the way to the overall mean (voicing kept)."""
    group_mean = np.bincount(groups, velocity) / np.bincount(groups)
    return velocity + amount * (velocity.mean() - group_mean[groups])


def _pedal_segments(values: np.ndarray) -> list[tuple[int, int]]:
    """(first event index down, first index up again) of each press; the end is len() if never released."""
    down = values >= C.PEDAL_DOWN_THRESHOLD
    segments, start = [], None
    for i, is_down in enumerate(down):
        if is_down and start is None:
            start = i
        elif not is_down and start is not None:
            segments.append((start, i))
            start = None
    if start is not None:
        segments.append((start, len(values)))
    return segments


def _apply_pedal(pedal: np.ndarray, spec: DeviationSpec) -> tuple[np.ndarray, int, int, int, int]:
    """Drop presses and skip changes of the sustain pedal. Returns pedal, n_presses, n_dropped,
    n_changes, n_blurred."""
    pedal = pedal.copy()
    sustain = np.flatnonzero(pedal["controller"] == C.CC_SUSTAIN)
    values = pedal["value"][sustain].astype(np.int64)
    segments = _pedal_segments(values)
    n_seg = len(segments)
    rng = _rng(spec, 6)
    drop_order, blur_order = rng.permutation(n_seg), rng.permutation(max(n_seg - 1, 0))
    dropped = set(drop_order[: int(round(spec.pedal_missing * n_seg))].tolist())
    for k in dropped:
        start, end = segments[k]
        values[start:end] = 0
    blurred = blur_order[: int(round(spec.pedal_blur * max(n_seg - 1, 0)))]
    for c in blurred:                   # next to a dropped press this becomes a late press / late release
        values[segments[c][1]: segments[c + 1][0]] = 127
    pedal["value"][sustain] = values
    return pedal, n_seg, len(dropped), max(n_seg - 1, 0), len(blurred)


def _note_errors(onset: np.ndarray, offset: np.ndarray, pitch: np.ndarray, velocity: np.ndarray,
                 score_index: np.ndarray, spec: DeviationSpec, note_bar: np.ndarray
                 ) -> tuple[tuple[np.ndarray, ...], tuple[int, int, int], list[dict[str, Any]]]:
    """Missed, wrong (+-1/2 semitones) and extra (slip) notes among the played score notes.

    note_bar: i8 [n], the score bar of each performed note. Returns (onset, offset, pitch, velocity,
    score_index) with extra notes appended (score_index -1), (n_wrong, n_missed, n_extra) and one event
    per error (`Take.events`). Each kind draws from its own stream; the chosen notes are a prefix of a
    fixed permutation, so a larger rate keeps the smaller rate's choices.
    """
    scored = np.flatnonzero(score_index >= 0)
    n_ref = len(scored)
    rng_missed, rng_wrong, rng_extra = _rng(spec, 1), _rng(spec, 2), _rng(spec, 3)
    missed = scored[rng_missed.permutation(n_ref)[: int(round(spec.missed_rate * n_ref))]]
    missed_set = set(missed.tolist())
    wrong_pool = [i for i in scored[rng_wrong.permutation(n_ref)] if i not in missed_set]
    wrong = np.asarray(wrong_pool[: int(round(spec.wrong_rate * n_ref))], dtype=np.int64)
    steps = rng_wrong.choice([-2, -1, 1, 2], size=len(pitch))
    pitch = pitch.copy()
    for i in wrong:
        candidate = pitch[i] + steps[i]
        clash = np.any((pitch == candidate) & (np.abs(onset - onset[i]) < 0.05))
        pitch[i] = np.clip(pitch[i] - steps[i] if clash else candidate, C.PIANO_MIN_PITCH, C.PIANO_MAX_PITCH)
    n_extra = int(round(spec.extra_rate * n_ref))
    anchors = scored[rng_extra.permutation(n_ref)] if n_ref else scored
    extra_steps = rng_extra.choice([-2, -1, 1, 2], size=n_ref)
    extra_shift = rng_extra.uniform(-0.03, 0.06, size=n_ref)
    extra_len = rng_extra.uniform(0.06, 0.20, size=n_ref)
    extra_gain = rng_extra.uniform(0.5, 0.85, size=n_ref)
    a = anchors[:n_extra]
    keep = np.ones(len(pitch), dtype=bool)
    keep[missed] = False
    new_onset = np.maximum(onset[a] + extra_shift[:n_extra], 0.0)
    new_pitch = np.clip(pitch[a] + extra_steps[:n_extra], C.PIANO_MIN_PITCH, C.PIANO_MAX_PITCH)
    out = (np.concatenate([onset[keep], new_onset]),
           np.concatenate([offset[keep], new_onset + extra_len[:n_extra]]),
           np.concatenate([pitch[keep], new_pitch]),
           np.concatenate([velocity[keep], np.maximum(velocity[a] * extra_gain[:n_extra], VELOCITY_MIN)]),
           np.concatenate([score_index[keep], np.full(n_extra, -1)]))
    events = [_note_event(kind, int(note_bar[i]), int(score_index[i]), float(onset[i]), int(pitch[i]))
              for kind, chosen in (("missed", missed), ("wrong", wrong)) for i in chosen]
    events += [{**_note_event("extra", int(note_bar[i]), -1, float(t), int(p)), "anchor_index": int(score_index[i])}
               for i, t, p in zip(a, new_onset, new_pitch)]
    return out, (len(wrong), len(missed), n_extra), events


def _note_event(kind: str, bar: int, score_index: int, time_s: float, pitch: int) -> dict[str, Any]:
    return {"kind": kind, "bar": bar, "score_index": score_index, "time_s": time_s, "pitch": pitch}


def _limit_same_pitch_overlap(onset: np.ndarray, offset: np.ndarray, pitch: np.ndarray) -> np.ndarray:
    """End each note before the next onset of the same key (a MIDI key cannot sound twice)."""
    offset = offset.copy()
    order = np.lexsort((onset, pitch))
    same = pitch[order][1:] == pitch[order][:-1]
    nxt = onset[order][1:]
    cur = order[:-1][same]
    offset[cur] = np.minimum(offset[cur], np.maximum(nxt[same] - 0.005, onset[cur] + 0.01))
    return np.maximum(offset, onset + 0.01)


@dataclasses.dataclass
class _Notes:
    """Working arrays of a take while deviations are applied (seconds, MIDI units)."""
    onset: np.ndarray
    offset: np.ndarray
    pitch: np.ndarray
    velocity: np.ndarray
    score_index: np.ndarray
    pedal_times: np.ndarray

    def warp(self, mapping: Callable[[np.ndarray], np.ndarray]) -> None:
        self.onset, self.offset, self.pedal_times = mapping(self.onset), mapping(self.offset), mapping(self.pedal_times)


def _apply_expression_loss(w: _Notes, beats: np.ndarray, groups: np.ndarray, amount: float) -> None:
    """Deadpan: timing toward a steady tempo, onset-group loudness toward the mean."""
    w.warp(_deadpan_map(w.onset, beats, amount))
    w.velocity = _apply_deadpan_velocity(w.velocity, groups, amount)


def _apply_timing(w: _Notes, spec: DeviationSpec) -> np.ndarray:
    """Tempo drift across the take, then onset jitter (durations kept). Returns the jitter, seconds."""
    total = float(max(w.offset.max(), w.pedal_times.max() if len(w.pedal_times) else 0.0))
    w.warp(_drift_map(spec.tempo_drift, total))
    jitter = _rng(spec, 4).normal(0.0, 1.0, len(w.onset)) * spec.onset_jitter_ms / 1000.0
    w.onset, w.offset = w.onset + jitter, w.offset + jitter
    shift = min(float(w.onset.min()), 0.0)
    w.onset, w.offset, w.pedal_times = w.onset - shift, w.offset - shift, np.maximum(w.pedal_times - shift, 0.0)
    return jitter


def _bar_times(score: Score, w: _Notes, note_bar: np.ndarray) -> np.ndarray:
    """f8 [n_bars + 1]: performed time of each bar's start (and of the score's end), from the played score
    notes: the mean onsets of the written onsets interpolated at the bar line, or the bar's earliest note if
    that is sooner, less BAR_START_GUARD_S (so every note of the bar lies after it); NaN where unknown."""
    scored = w.score_index >= 0
    bounds = np.append(score.bar_starts_beat, score_end_beat(score))
    out = np.full(len(bounds), np.nan)
    if not scored.any():
        return out
    beats = score.notes["onset_beat"][w.score_index[scored]]
    uniq, inverse = np.unique(np.round(beats, 6), return_inverse=True)
    group_t = np.bincount(inverse, w.onset[scored]) / np.bincount(inverse)
    line = np.interp(bounds, uniq, group_t, left=np.nan, right=np.nan)
    for b in range(len(bounds)):
        in_bar = scored & (note_bar == b)
        earliest = float(w.onset[in_bar].min()) if in_bar.any() else np.nan
        out[b] = np.fmin(line[b], earliest) - BAR_START_GUARD_S
    return out


def _local_tempo_bars(spec: DeviationSpec, note_bar: np.ndarray, beats: np.ndarray,
                      bar_t: np.ndarray) -> list[tuple[int, float]]:
    """(bar, signed tempo %) of the bars played off tempo: drawn from their own stream among the inner bars
    with played notes at two or more written onsets (a tempo inside the bar) and a measurable length,
    never two adjacent."""
    n_bars = len(bar_t) - 1
    onsets_in_bar = np.array([len(np.unique(np.round(beats[note_bar == b], 6))) for b in range(n_bars)])
    eligible = np.array([b for b in range(1, n_bars - 1)
                         if onsets_in_bar[b] >= 2 and np.isfinite(bar_t[b]) and np.isfinite(bar_t[b + 1])
                         and bar_t[b + 1] > bar_t[b]], dtype=np.int64)
    rng = _rng(spec, LOCAL_TEMPO_STREAM)
    order, signs = rng.permutation(len(eligible)), rng.random(len(eligible)) < 0.5
    chosen: list[tuple[int, float]] = []
    for k in order:
        if len(chosen) >= spec.local_tempo_bars:
            break
        b = int(eligible[k])
        if all(abs(b - c) > 1 for c, _ in chosen):
            chosen.append((b, spec.local_tempo_pct if signs[k] else -spec.local_tempo_pct))
    return sorted(chosen)


def _apply_local_tempo(w: _Notes, spec: DeviationSpec, score: Score, beats: np.ndarray,
                       note_bar: np.ndarray) -> list[dict[str, Any]]:
    """Rush or drag `spec.local_tempo_bars` bars inside the bar only. Returns their events."""
    if spec.local_tempo_bars == 0 or spec.local_tempo_pct == 0.0 or not len(score.notes):
        return []
    bar_t = _bar_times(score, w, note_bar)
    chosen = _local_tempo_bars(spec, note_bar, beats, bar_t)
    # a bar at tempo ratio r lasts 1/r as long: t in (start, end] -> start + (t - start) / r, later times
    # shifted by the change of its length; the bars are apart, so their changes add up
    spans = [(bar_t[b], bar_t[b + 1], 1.0 / (1.0 + pct / 100.0) - 1.0) for b, pct in chosen]

    def mapping(t: np.ndarray) -> np.ndarray:
        shift = np.zeros_like(t)
        for start, end, stretch in spans:
            shift += np.clip(t - start, 0.0, end - start) * stretch
        return t + shift

    events = [{"kind": "rushing" if pct > 0 else "dragging", "bar": b, "tempo_pct": float(pct),
               "time_s": float(mapping(np.array([bar_t[b]]))[0])} for b, pct in chosen]
    w.warp(mapping)
    return events


def _apply_articulation(w: _Notes, spec: DeviationSpec) -> np.ndarray:
    """Sounding durations x scale x exp(N(0, jitter)). Returns the drawn log factors."""
    log_factor = _rng(spec, 5).normal(0.0, 1.0, len(w.onset)) * spec.duration_jitter
    w.offset = w.onset + np.maximum((w.offset - w.onset) * spec.duration_scale * np.exp(log_factor), MIN_NOTE_S)
    return log_factor


def _voicing_loss(velocity: np.ndarray, pitch: np.ndarray, groups: np.ndarray, amount: float) -> np.ndarray:
    """Pull each chord's top note down by 2 x amount x its lead over the others (1: mirrored below)."""
    velocity = velocity.copy()
    top = top_of_chord(pitch, groups)
    for t in np.flatnonzero(top):
        others = velocity[(groups == groups[t]) & ~top].mean()
        if velocity[t] > others:
            velocity[t] -= 2.0 * amount * (velocity[t] - others)
    return velocity


def _apply_dynamics(w: _Notes, spec: DeviationSpec, groups: np.ndarray) -> np.ndarray:
    """Flatten, add noise, lose voicing, add harshness. Returns the drawn velocity noise."""
    w.velocity = w.velocity + spec.dynamics_flatten * (w.velocity.mean() - w.velocity)
    noise = _rng(spec, 7).normal(0.0, 1.0, len(w.onset)) * spec.velocity_noise
    w.velocity = _voicing_loss(w.velocity + noise, w.pitch, groups, spec.voicing_loss) + spec.harshness
    return noise


def _score_beats(score: Score, score_index: np.ndarray) -> np.ndarray:
    """Written onset (quarters) of each performed note; NaN where the note is not in the score."""
    if not len(score.notes):
        return np.full(len(score_index), np.nan)
    return np.where(score_index >= 0, score.notes["onset_beat"][np.clip(score_index, 0, None)], np.nan)


def _score_bars(score: Score, score_index: np.ndarray) -> np.ndarray:
    """i8 [n]: score bar of each performed note; -1 where the note is not in the score."""
    if not len(score.notes):
        return np.full(len(score_index), -1, dtype=np.int64)
    return np.where(score_index >= 0, score.notes["bar"][np.clip(score_index, 0, None)], -1).astype(np.int64)


def apply_deviations(score: Score, spec: DeviationSpec, base: Rendition | None = None,
                     expression_seed: int = 0, pedal_beats: float | None = None) -> Take:
    """Apply `spec` to a correct rendition of `score` (pure; deterministic for the inputs).

    score: the written notes; base: the correct performance to deviate from (default: the natural
    rendition for `expression_seed` and `pedal_beats`). Returns the performed notes (PERF_NOTE_DTYPE,
    seconds), the pedal (PEDAL_DTYPE), the measures of what was applied and the labels (0..100).
    Order: expression loss, tempo drift and jitter, local tempo, articulation, dynamics and tone, note
    errors, pedal. `Take.events` holds every inserted note error and off-tempo bar with its score bar.
    """
    base = base if base is not None else natural_rendition(score, expression_seed, pedal_beats)
    n = base.notes
    w = _Notes(n["onset_s"].astype(float), n["offset_s"].astype(float), n["pitch"].astype(np.int64),
               n["velocity"].astype(float), base.score_index, base.pedal["time_s"].astype(float))
    beats = _score_beats(score, base.score_index)
    groups = onset_groups(beats)
    note_bar = _score_bars(score, base.score_index)
    _apply_expression_loss(w, beats, groups, spec.deadpan)
    jitter = _apply_timing(w, spec)
    timing_events = _apply_local_tempo(w, spec, score, beats, note_bar)
    log_factor = _apply_articulation(w, spec)
    noise = _apply_dynamics(w, spec, groups)
    (onset, offset, pitch, velocity, _), (n_wrong, n_missed, n_extra), note_events = _note_errors(
        w.onset, w.offset, w.pitch, w.velocity, w.score_index, spec, note_bar)
    pedal = base.pedal.copy()
    pedal["time_s"] = w.pedal_times
    pedal, n_presses, n_dropped, n_changes, n_blurred = _apply_pedal(pedal, spec)
    notes = np.zeros(len(onset), dtype=PERF_NOTE_DTYPE)
    notes["onset_s"], notes["pitch"] = onset, pitch
    notes["offset_s"] = _limit_same_pitch_overlap(onset, offset, pitch)
    notes["velocity"] = np.clip(np.round(velocity), VELOCITY_MIN, VELOCITY_MAX)
    n_ref = int((base.score_index >= 0).sum())
    measures = {
        "note_error_rate": (n_wrong + n_missed + n_extra) / max(n_ref, 1),
        "onset_jitter_ms": _rms(jitter) * 1000.0,
        "tempo_drift": abs(spec.tempo_drift),
        "dynamics_flatten": spec.dynamics_flatten,
        "velocity_noise": _rms(noise),
        "voicing_loss": spec.voicing_loss,
        "harshness": spec.harshness,
        "duration_log_scale": abs(math.log(spec.duration_scale)),
        "duration_log_jitter": _rms(log_factor),
        "pedal_missing": n_dropped / n_presses if n_presses else 0.0,
        "pedal_blur": n_blurred / n_changes if n_changes else 0.0,
        "deadpan": spec.deadpan,
    }
    counts = {"n_score_notes_played": n_ref, "n_wrong": n_wrong, "n_missed": n_missed, "n_extra": n_extra,
              "n_pedal_presses": n_presses, "n_pedal_dropped": n_dropped, "n_pedal_changes": n_changes,
              "n_pedal_blurred": n_blurred}
    events = sorted(note_events + timing_events, key=lambda e: (e["time_s"], e["kind"]))
    return Take(notes=notes[np.lexsort((notes["pitch"], notes["onset_s"]))], pedal=pedal, spec=spec,
                measures=measures, labels=labels_from_measures(measures), counts=counts, events=events)


# --- sampling takes --------------------------------------------------------------------------

FAMILY_PROBABILITY = 0.55               # chance that a family of deviations is active in a take
MAX_DEVIATIONS = {                      # magnitudes at severity 1 (each drawn x U(0.5, 1))
    "wrong_rate": 0.08, "missed_rate": 0.08, "extra_rate": 0.05, "onset_jitter_ms": 60.0,
    "tempo_drift": 0.35, "dynamics_flatten": 0.9, "velocity_noise": 20.0, "voicing_loss": 1.0,
    "harshness": 30.0, "duration_log_scale": 0.7, "duration_jitter": 0.5, "pedal_missing": 1.0,
    "pedal_blur": 0.9, "deadpan": 1.0,
}
FAMILIES = {
    "notes": ("wrong_rate", "missed_rate", "extra_rate"),
    "timing": ("onset_jitter_ms", "tempo_drift"),
    "dynamics": ("dynamics_flatten", "velocity_noise"),
    "tone": ("voicing_loss", "harshness"),
    "articulation": ("duration_log_scale", "duration_jitter"),
    "pedal": ("pedal_missing", "pedal_blur"),
    "expression": ("deadpan",),
}


def sample_deviation_spec(rng: np.random.Generator, severity: float, seed: int) -> DeviationSpec:
    """A random set of deviation families (at least one), each field at severity x U(0.5, 1) x max."""
    families = [f for f in FAMILIES if rng.random() < FAMILY_PROBABILITY]
    if not families:
        families = [list(FAMILIES)[int(rng.integers(len(FAMILIES)))]]
    values: dict[str, float] = {}
    for family in families:
        names = list(FAMILIES[family])
        if family == "notes":           # one to three of the note error kinds
            names = [n for n in names if rng.random() < 0.7] or [names[int(rng.integers(len(names)))]]
        for name in names:
            values[name] = severity * rng.uniform(0.5, 1.0) * MAX_DEVIATIONS[name]
    if "tempo_drift" in values and rng.random() < 0.5:
        values["tempo_drift"] = -values["tempo_drift"]
    if "duration_log_scale" in values:
        sign = 1.0 if rng.random() < 0.5 else -1.0
        values["duration_scale"] = math.exp(sign * values.pop("duration_log_scale"))
    return DeviationSpec(**{k: float(v) for k, v in values.items()}, seed=int(seed))


def take_severities(n_takes: int, rng: np.random.Generator) -> list[float]:
    """0 for the clean take, then one severity per stratum of (0.1, 1] so the takes span the range."""
    k = n_takes - 1
    return [0.0] + [0.1 + 0.9 * (i + rng.random()) / k for i in range(k)]
