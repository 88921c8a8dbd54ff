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
    (soft ghost notes count less; the repeated notes that play out a written tremolo are not extra:
    `align.tremolo_extras`); penalty = rate / NOTE_ERROR_SCALE.
rhythmic_precision (needs a score)
    e = RMS over score onsets of the median deviation (seconds) of their performed onsets from the
    local-tempo fit (each clipped at TIMING_CLIP_S; grace notes left out); c = RMS within-onset spread
    (chord asynchrony); d = tempo drift against the score: the Theil-Sen slope of log seconds-per-beat of
    successive TEMPO_SPAN_BEATS spans (each a least-squares fit of time on written beat) against time,
    times the window's length from first to last onset (+ dragging, - rushing; the local-tempo fit
    follows a drift, so e cannot see it). penalty = excess(e, TIMING_TOL_S) / TIMING_SCALE_S +
    excess(c, CHORD_SPREAD_TOL_S) / CHORD_SPREAD_SCALE_S + excess(|d|, DRIFT_TOL) / DRIFT_SCALE. Rubato
    that comes back (phrase arches) leaves d near 0. Seconds rather than beats for e: within a passage
    played by several pianists, e tracks the raters' "timing stable <-> unstable" (Spearman +0.57) better
    than deviations in beats.
dynamics_control (score optional)
    Streams are the score voices (without a score or with one voice: notes above / below the median
    pitch); each stream's line is its highest note per onset group. j = robust std of the line's
    velocities around their Gaussian smoothing over DYNAMICS_SMOOTH_S, less (with a score) the mean
    residual of each bar position (a regular metrical accent is shaping, not jitter); r = std over time
    of the smoothed curves (phrase-level shaping). penalty = excess(j / clip(r, SHAPING_REF, SHAPING_CAP),
    JITTER_RATIO_TOL) / JITTER_RATIO_SCALE + SHAPING_WEIGHT * excess(1 - r / SHAPING_REF): erratic and flat
    dynamics both lose points. Jitter counts against the shaping (a dynamics signal-to-noise ratio): the
    same note-to-note unevenness is erratic in a level passage and minor inside phrase swells. The floor
    keeps a flat passage from dividing by ~0 (its flatness has its own term), the cap keeps very wide
    swells from excusing any jitter.
articulation (needs a score)
    log duration ratio (key-down time / written duration at the local tempo) of matched notes
    released with the sustain pedal up (all matched notes if fewer than MIN_NOTES are), in time order:
    bias b = median; spread s = robust std around the running median of ARTIC_NEIGHBOURS notes either
    side (note-to-note inconsistency, not a deliberate change of touch between passages). penalty =
    excess(|b - ARTIC_CENTRE|, ARTIC_BIAS_TOL) / ARTIC_BIAS_SCALE + excess(s, ARTIC_SPREAD_TOL) /
    ARTIC_SPREAD_SCALE: the band 0.53x .. 1.06x of the written length is normal touch, staccato far
    shorter and smeared legato far longer lose points. That band is for a score MIDI, whose lengths are
    often played back (PercePiano's halve staccato notes); a MusicXML score's notated lengths are played
    shorter (human median 0.46x), so there the band is NOTATED_CENTRE +- NOTATED_TOL.
    When the score writes the touch (MusicXML slurs and staccato marks: `Score.notes["mark"]`), each
    written touch has its own reference: legato = median over slurred notes (all but a slur's last),
    staccato = median over staccato notes, both whatever the pedal; b and s are then over the unmarked
    notes (s within each touch). penalty = excess(|b - NOTATED_CENTRE|, NOTATED_TOL) / ARTIC_BIAS_SCALE +
    the spread term + excess(LEGATO_CENTRE - legato, LEGATO_SHORT_TOL) / LEGATO_SCALE (detached) +
    excess(legato - LEGATO_CENTRE, LEGATO_LONG_TOL) / LEGATO_SCALE (smeared) + excess(staccato -
    STACCATO_CENTRE, STACCATO_TOL) / STACCATO_SCALE (held), a touch with fewer than MIN_MARKED notes not
    judged. The references are human: on 400 rated PercePiano segments read with their MusicXML scores,
    slurred notes median 0.86x (quartiles 0.68 .. 0.99), staccato 0.23x (0.18 .. 0.33), unmarked 0.46x.
pedaling (score optional; NaN for a transcription without pedal events)
    CC64 is continuous: damping(v) = 1 at or below HALF_PEDAL_LOW, 0 at or above HALF_PEDAL_HIGH, linear
    between (half-pedal); a note's sound after its key is up falls by exp(-damping seconds / DAMP_TIME_S)
    and naturally by exp(-age / NATURAL_DECAY_S). Harmonic spans: the score cut at bar lines (and mid-bar
    in bars of >= 2 x HARMONY_STEP_BEATS quarters), placed in time by the local tempo, each with the pitch
    classes written in it (without a score: SCORELESS_SPAN_S performed seconds and the pitch classes
    struck). blur = at every harmony change (a pitch class of the old span absent from the new one), the
    sound CLEAR_S after the change of the earlier notes (struck within PEDAL_HOLD_HORIZON_S) whose pitch
    class is foreign to the new span, as pedalled, over the same sound with no damping (summed over the
    changes: 1 = pedal held through, ~0.1 = a legato change). dry = over spans weighted by their sustain
    need (share of leaps >= NEED_LEAP semitones between successive onsets of the upper and lower lines,
    i.e. broken chords and arpeggios rather than runs; 0 under NEED_MIN_ONSETS onsets), the share of
    the span's time without sustain (1 - mean of 1 - damping). penalty = excess(blur, BLUR_TOL) /
    BLUR_SCALE + excess(dry, DRY_TOL) / DRY_SCALE: pedal held across harmony changes and no pedal where
    broken harmonies ask for it both lose points; sevenths or suspensions inside one span do not.
    When the score writes the pedal ('Ped.' .. '*' marks in MusicXML, CC64 in a score MIDI:
    `Score.pedal_beats`), the marks replace the guessed need: written_dry = the share of written-pedal
    time (placed by the local tempo) with the dampers on; held = the share of written changes (a release
    followed by a press within WRITTEN_CHANGE_BEATS) where the dampers never came down within
    WRITTEN_CHANGE_S. penalty = blur term + excess(written_dry, WRITTEN_DRY_TOL) / WRITTEN_DRY_SCALE +
    excess(held, WRITTEN_HELD_TOL) / WRITTEN_HELD_SCALE. On the 262 rated human PercePiano segments
    whose scores mark the pedal (Schubert D960), within passage: written_dry vs "pedal sparse <->
    saturated" -0.65 and vs "clean <-> blurred" -0.60, held vs "clean <-> blurred" +0.48 (the guessed
    harmony blur: +0.19); human medians 0.08 and 0.37.
tone (score optional)
    Chords are the notes of one written onset (without a score: of one performed onset group). u = mean
    over chords of >= 3 notes of the velocity std of all notes but the top one (voicing the melody is not
    unevenness); v = median over chords of the top note's lead over the mean of the others (needs
    MIN_CHORDS chords); h = fraction of notes with velocity >= HARSH_VELOCITY; l = mean velocity excess
    over LOUD_FROM (forced tone); with audio_features {"cqt": log-magnitude [frames, bins]}, n = mean
    spectral flatness of the louder half of the frames (noisy, unfocused sound; computed on the clean
    recording, never on an augmented copy). penalty = excess(u, UNEVEN_TOL) / UNEVEN_SCALE +
    excess(VOICING_TOL - v) / VOICING_SCALE + h / HARSH_SCALE + l / LOUD_SCALE +
    excess(n, NOISE_FLATNESS_TOL) / NOISE_SCALE.

Measured on 400 of the human PercePiano segments (median label): 84 / 82 / 100 / 99 / 86 / 100 in the
order above; on K265: 98 / 84 / 78 / 98 / 100 / 88. Within a passage, rhythmic_precision vs the
"timing unstable" rating: Spearman -0.51; the blur statistic vs "pedal blurred" +0.2 and the dry
statistic -0.48 (both track the raters; the two-sided label itself is not a clean <-> blurred scale);
dynamics_control vs "dynamic range little <-> large" +0.14.

`note_mask` (bool over alignment tokens, or over performed notes without a score) restricts every
statistic to the notes of one window (`pseudo_labels_window` takes a `segment.Segment`); the tempo fit
and the pedal and key state still come from the whole performance, so a window keeps its context.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from model.schema import SEED10
from pipelines.constants import CC_SUSTAIN
from pipelines.io.notes import EXTRA, MARK_LEGATO, MARK_NONE, MARK_STACCATO, MATCHED, MISSED, Performance, Score

TECHNICAL_DIMENSIONS = tuple(SEED10.pseudo_names)

# --- note accuracy ---------------------------------------------------------------------------------
EXTRA_FULL_VELOCITY = 30.0      # an extra note at this velocity or louder counts as one full error
NOTE_ERROR_SCALE = 0.15         # error rate (per score note) that costs one penalty unit
# --- rhythm ----------------------------------------------------------------------------------------
TIMING_CLIP_S = 0.25            # a single onset deviation counts at most this much
TIMING_TOL_S = 0.02             # RMS onset deviation below this costs nothing
TIMING_SCALE_S = 0.08
CHORD_ONSET_TOL_S = 0.08        # performed notes of one score onset further apart are not "a chord"
CHORD_SPREAD_TOL_S = 0.012      # chord asynchrony (melody lead included) of the median human: PercePiano 0.012 s
CHORD_SPREAD_SCALE_S = 0.08
TEMPO_SPAN_BEATS = 4.0          # quarters per span of the tempo-drift fit
DRIFT_TOL = 0.1                 # |log tempo change| across a window that rubato and phrase endings give
DRIFT_SCALE = 0.2
# --- dynamics --------------------------------------------------------------------------------------
DYNAMICS_SMOOTH_S = 0.75        # std of the Gaussian smoothing of velocity over time
JITTER_RATIO_TOL = 1.25         # jitter / shaping that is normal: a little above the human median (1.06; K265 1.49)
JITTER_RATIO_SCALE = 1.0        # each further shaping's worth of jitter costs one penalty unit
SHAPING_CAP = 8.7               # human upper quartile of shaping: wider swells excuse no more jitter
SHAPING_REF = 3.0               # phrase-level velocity std (steps) from which shaping costs nothing
SHAPING_WEIGHT = 1.5            # penalty of perfectly flat dynamics
MIN_NOTES = 4                   # fewer notes: the dimension is NaN
ACCENT_MIN_NOTES = 4            # a bar position needs this many line notes for its mean accent to count
# --- articulation ----------------------------------------------------------------------------------
ARTIC_CENTRE = math.log(0.75)   # centre of the normal performed/written key-down ratio of notes released dry
ARTIC_BIAS_TOL = 0.35           # |log ratio - centre| that is still a normal touch (0.53x .. 1.06x)
ARTIC_BIAS_SCALE = 0.35
ARTIC_NEIGHBOURS = 3            # local articulation: median of this many notes either side (time order)
ARTIC_SPREAD_TOL = 0.5          # robust std of log ratios around the local median that is normal (human median 0.33)
ARTIC_SPREAD_SCALE = 0.5
MIN_MARKED = 4                  # fewer notes of a written touch (legato, staccato): that touch is not judged
NOTATED_CENTRE = math.log(0.5)   # the same for a MusicXML score's notated lengths (human median 0.46, quartiles
NOTATED_TOL = 0.7               # 0.31 .. 0.67); a score MIDI's lengths are often played back (staccato halved)
LEGATO_CENTRE = math.log(0.86)  # slurred notes (MusicXML): human median 0.86, lower quartile 0.68
LEGATO_SHORT_TOL = 0.3          # detached below 0.64x
LEGATO_LONG_TOL = 0.3           # smeared above 1.16x (human upper decile 1.06)
LEGATO_SCALE = 0.3
STACCATO_CENTRE = math.log(0.23)  # staccato notes: human median 0.23, upper quartile 0.33, decile 0.46
STACCATO_TOL = 0.5              # held too long above 0.38x
STACCATO_SCALE = 0.4
# --- pedal ---------------------------------------------------------------------------------------
HALF_PEDAL_LOW = 40.0           # CC64 at or below: dampers fully on the strings
HALF_PEDAL_HIGH = 64.0          # CC64 at or above: strings free (between: half-pedal, partial damping)
DAMP_TIME_S = 0.03              # e-folding time of a string's sound under fully applied dampers
NATURAL_DECAY_S = 3.0           # e-folding time of an undamped piano note (a mid-register average)
PEDAL_HOLD_HORIZON_S = 4.0      # notes struck longer ago than this no longer count as carried over
CLEAR_S = 0.25                  # a harmony change should be clear of the old harmony this long after it
HARMONY_STEP_BEATS = 2.0        # harmonic spans: bar lines, and mid-bar in bars of twice this many quarters
NEED_LEAP = 3                   # semitones: successive notes this far apart outline a harmony
NEED_MIN_ONSETS = 3             # a span with fewer written onsets does not ask for sustain
SCORELESS_SPAN_S = 1.0          # without a score, harmonic spans are this many performed seconds
ONSET_GROUP_S = 0.05            # performed onsets closer than this form one group
BLUR_TOL = 0.15                 # carried-over share at harmony changes that legato pedalling leaves
BLUR_SCALE = 0.2
DRY_TOL = 0.6                   # unsustained share of sustain-asking spans human pianists leave (0.43; K265 0.6)
DRY_SCALE = 0.25
WRITTEN_CHANGE_BEATS = 0.25     # a written release followed by a press this soon (quarters) is a pedal change
WRITTEN_CHANGE_S = 0.3          # the dampers should come down within this of a written change
WRITTEN_DRY_TOL = 0.2          # written-pedal time left dry: human PercePiano median 0.08, upper quartile 0.15
WRITTEN_DRY_SCALE = 0.3
WRITTEN_HELD_TOL = 0.5          # written changes held through: human median 0.37, upper quartile 0.55
WRITTEN_HELD_SCALE = 0.5
# --- tone ------------------------------------------------------------------------------------------
HARSH_VELOCITY = 112
LOUD_FROM = 100.0               # velocity steps above this count as forcing the tone
LOUD_SCALE = 6.0                # mean steps above LOUD_FROM that cost one penalty unit
VOICING_TOL = 6.0               # median lead of a chord's top note over the others below this is weak voicing
VOICING_SCALE = 8.0
MIN_CHORDS = 8                  # fewer chords (onset groups of two or more notes): voicing is not judged
UNEVEN_TOL = 6.0
UNEVEN_SCALE = 10.0
HARSH_SCALE = 0.3
NOISE_FLATNESS_TOL = 0.5       # clean piano renderings measure 0.36 .. 0.47
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
            + _excess(st["chord_spread_s"], CHORD_SPREAD_TOL_S) / CHORD_SPREAD_SCALE_S
            + _zero_if_nan(_excess(abs(st["tempo_drift"]), DRIFT_TOL)) / DRIFT_SCALE)


def _dynamics_penalty(st: dict[str, float]) -> float:
    ratio = st["velocity_jitter"] / min(max(st["velocity_shaping"], SHAPING_REF), SHAPING_CAP)
    return (_excess(ratio, JITTER_RATIO_TOL) / JITTER_RATIO_SCALE
            + SHAPING_WEIGHT * _excess(1.0 - st["velocity_shaping"] / SHAPING_REF))


def _articulation_penalty(st: dict[str, float]) -> float:
    legato, staccato = st.get("legato_ratio", math.nan), st.get("staccato_ratio", math.nan)
    if math.isnan(legato) and math.isnan(staccato):     # no written touch: the normal band of human touch
        notated = st.get("notated_lengths") == 1.0
        centre, tol = (NOTATED_CENTRE, NOTATED_TOL) if notated else (ARTIC_CENTRE, ARTIC_BIAS_TOL)
        return (_excess(abs(st["duration_bias"] - centre), tol) / ARTIC_BIAS_SCALE
                + _excess(st["duration_spread"], ARTIC_SPREAD_TOL) / ARTIC_SPREAD_SCALE)
    return (_zero_if_nan(_excess(abs(st["duration_bias"] - NOTATED_CENTRE), NOTATED_TOL)) / ARTIC_BIAS_SCALE
            + _zero_if_nan(_excess(st["duration_spread"], ARTIC_SPREAD_TOL)) / ARTIC_SPREAD_SCALE
            + _zero_if_nan(_excess(LEGATO_CENTRE - legato, LEGATO_SHORT_TOL)) / LEGATO_SCALE
            + _zero_if_nan(_excess(legato - LEGATO_CENTRE, LEGATO_LONG_TOL)) / LEGATO_SCALE
            + _zero_if_nan(_excess(staccato - STACCATO_CENTRE, STACCATO_TOL)) / STACCATO_SCALE)


def _pedaling_penalty(st: dict[str, float]) -> float:
    blur = _excess(st["pedal_blur"], BLUR_TOL) / BLUR_SCALE
    if math.isnan(st.get("pedal_written_dry", math.nan)):       # no written pedal: the score's harmony
        return blur + _excess(st["pedal_dry"], DRY_TOL) / DRY_SCALE
    return (blur + _excess(st["pedal_written_dry"], WRITTEN_DRY_TOL) / WRITTEN_DRY_SCALE
            + _zero_if_nan(_excess(st["pedal_written_held"], WRITTEN_HELD_TOL)) / WRITTEN_HELD_SCALE)


def _tone_penalty(st: dict[str, float]) -> float:
    return (_excess(st["chord_unevenness"], UNEVEN_TOL) / UNEVEN_SCALE + st["harsh_fraction"] / HARSH_SCALE
            + st["loud_excess"] / LOUD_SCALE + _zero_if_nan(_excess(VOICING_TOL - st["voicing_lead"])) / VOICING_SCALE
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

    error_rate; timing_rms_s, chord_spread_s (seconds), tempo_drift (log tempo change); velocity_jitter,
    velocity_shaping (MIDI steps); duration_bias, duration_spread, legato_ratio, staccato_ratio (log ratio;
    the last two NaN without slurs / staccato marks), notated_lengths (1.0 for a MusicXML score); pedal_blur, pedal_dry,
    pedal_written_dry, pedal_written_held (0..1; the written ones NaN without pedal marks in the score);
    chord_unevenness, voicing_lead, loud_excess (MIDI steps), harsh_fraction; noise_flatness (0..1).
    """
    view = _NoteView.build(score, perf, alignment, note_mask)
    stats = {"error_rate": view.error_rate()}
    stats.update(_timing_statistics(score, perf, alignment, view))
    stats.update(_dynamics_statistics(view, score))
    stats.update(_articulation_statistics(score, perf, alignment, attrs, view))
    stats.update(_pedal_statistics(score, perf, alignment, view))
    stats.update(_tone_statistics(view, audio_features, score))
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
        self.tremolo = None                   # bool over tokens: extra notes that play out a written tremolo

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
        view = cls(perf, played["perf_index"].astype(np.int64), voice, tokens, rows)
        from pipelines.features.align import tremolo_extras
        view.tremolo = tremolo_extras(score, alignment)[rows]
        return view

    @property
    def notes(self) -> np.ndarray:
        return self.perf.notes[self.perf_index]

    def error_rate(self) -> float:
        if self.tokens is None:
            return math.nan
        kind = self.tokens["kind"]
        n_score = int(((kind == MATCHED) | (kind == MISSED)).sum())
        extra = (kind == EXTRA) & ~self.tremolo if self.tremolo is not None else kind == EXTRA
        extra_vel = self.perf.notes["velocity"][self.tokens["perf_index"][extra]].astype(float)
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
    nan = {"timing_rms_s": math.nan, "chord_spread_s": math.nan, "tempo_drift": math.nan}
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
    group_t = np.array([np.median(onsets[beats == b]) for b in np.unique(beats)])
    return {"timing_rms_s": float(np.sqrt(np.mean(group_dev ** 2))),
            "chord_spread_s": float(np.sqrt(np.mean(np.square(spreads)))) if spreads else 0.0,
            "tempo_drift": _tempo_drift(np.unique(beats), group_t)}


def _tempo_drift(beats: np.ndarray, times: np.ndarray) -> float:
    """Change of log tempo across the window: the Theil-Sen slope of log seconds-per-beat of successive
    spans of TEMPO_SPAN_BEATS (each a least-squares fit of performed time on written beat) against their
    mid time, times the window's length (first to last onset: the whole change, not only that between the
    first and last spans' mid times). + dragging, - rushing; 0 with fewer than three spans."""
    edges = np.arange(beats[0], beats[-1] + TEMPO_SPAN_BEATS, TEMPO_SPAN_BEATS)
    mids, log_spb = [], []
    for a, b in zip(edges[:-1], edges[1:]):
        sel = (beats >= a) & (beats <= b)
        if sel.sum() >= 3 and np.ptp(beats[sel]) >= TEMPO_SPAN_BEATS / 2:
            spb = np.polyfit(beats[sel], times[sel], 1)[0]
            if spb > 0:
                mids.append(float(np.mean(times[sel])))
                log_spb.append(math.log(spb))
    if len(mids) < 3:
        return 0.0
    mids, log_spb = np.asarray(mids), np.asarray(log_spb)
    i, j = np.triu_indices(len(mids), 1)
    slope = float(np.median((log_spb[j] - log_spb[i]) / np.maximum(mids[j] - mids[i], 1e-6)))
    return slope * float(times[-1] - times[0])


def _dynamics_statistics(view: _NoteView, score: Score | None = None) -> dict[str, float]:
    """Note-to-smooth velocity jitter of each stream's top line and phrase-level shaping, MIDI steps.

    Per stream, the line is the highest note of each onset group (so voicing inside a chord is not
    jitter); jitter = robust std of the line's velocity around its Gaussian-smoothed curve, less (with a
    score) the mean residual of its position in the bar (a regular metrical accent is not jitter);
    shaping = std over time of the smoothed curves (each centred on its own mean).
    """
    notes = view.notes
    nan = {"velocity_jitter": math.nan, "velocity_shaping": math.nan}
    if len(notes) < MIN_NOTES:
        return nan
    position = _bar_positions(view, score)
    residuals, positions, curves = [], [], []
    for v in np.unique(view.voice):
        idx = np.flatnonzero(view.voice == v)
        line = idx[_top_line(notes[idx])]
        if len(line) < 3:
            continue
        t, vel = notes["onset_s"][line], notes["velocity"][line].astype(float)
        smooth = _gaussian_smooth(t, vel, DYNAMICS_SMOOTH_S)
        residuals.append(vel - smooth)
        positions.append(position[line])
        curves.append(smooth - smooth.mean())
    if not residuals:
        return nan
    residual = _remove_metrical_accent(np.concatenate(residuals), np.concatenate(positions))
    return {"velocity_jitter": float(1.4826 * np.median(np.abs(residual - np.median(residual)))),
            "velocity_shaping": float(np.std(np.concatenate(curves)))}


def _bar_positions(view: _NoteView, score: Score | None) -> np.ndarray:
    """f8 [k]: written position in the bar (quarters) of each played note of the view; NaN if unknown."""
    return _score_field(view, score, "position_beat")


def _score_field(view: _NoteView, score: Score | None, field: str) -> np.ndarray:
    """f8 [k]: a score-note field of each played note of the view (rounded), NaN for extra notes or no score."""
    out = np.full(len(view.perf_index), np.nan)
    if view.tokens is None or score is None:
        return out
    sidx = np.full(len(view.perf.notes), -1, dtype=np.int64)
    tok = view.tokens[view.tokens["perf_index"] >= 0]
    sidx[tok["perf_index"]] = tok["score_index"]
    known = sidx[view.perf_index] >= 0
    out[known] = np.round(score.notes[field][sidx[view.perf_index][known]], 3)
    return out


def _written_onsets(view: _NoteView, score: Score | None) -> np.ndarray:
    """f8 [k]: written onset (quarters) of each played note of the view; NaN if unknown."""
    return _score_field(view, score, "onset_beat")


def _remove_metrical_accent(residual: np.ndarray, position: np.ndarray) -> np.ndarray:
    """Residuals less the mean residual of their bar position (positions with >= ACCENT_MIN_NOTES notes)."""
    out = residual.copy()
    for pos in np.unique(position[~np.isnan(position)]):
        sel = position == pos
        if sel.sum() >= ACCENT_MIN_NOTES:
            out[sel] -= residual[sel].mean()
    return out


def _top_line(notes: np.ndarray) -> np.ndarray:
    """Indices (into notes) of the highest note of each onset group (onsets closer than ONSET_GROUP_S),
    in time order."""
    order = np.argsort(notes["onset_s"], kind="stable")
    onsets, pitch = notes["onset_s"][order], notes["pitch"][order]
    group = np.cumsum(np.concatenate([[True], np.diff(onsets) > ONSET_GROUP_S]))
    return np.asarray([order[np.flatnonzero(group == g)[np.argmax(pitch[group == g])]] for g in np.unique(group)],
                      dtype=np.int64)


def _gaussian_smooth(t: np.ndarray, y: np.ndarray, sigma: float) -> np.ndarray:
    """Nadaraya-Watson Gaussian smoothing of y(t) evaluated at t, excluding each point itself [n]."""
    w = np.exp(-0.5 * ((t[:, None] - t[None, :]) / sigma) ** 2)
    np.fill_diagonal(w, 0.0)
    total = w.sum(1)
    return np.where(total > 1e-9, (w @ y) / np.maximum(total, 1e-12), y.mean())


def _articulation_statistics(score: Score | None, perf: Performance, alignment, attrs, view: _NoteView
                             ) -> dict[str, float]:
    """Articulation statistics of the matched notes' log duration ratios (see the module docstring).

    Unmarked notes count only when released with the pedal up (under the sustain pedal a key's release
    is not heard), unless fewer than MIN_NOTES remain; notes the score marks legato or staccato count
    however the pedal is (the mark asks for the key's action).
    """
    nan = {"duration_bias": math.nan, "duration_spread": math.nan, "legato_ratio": math.nan,
           "staccato_ratio": math.nan,
           "notated_lengths": float(score is not None and score.source_format == "musicxml")}
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
    order = np.argsort(perf.notes["onset_s"][matched["perf_index"]], kind="stable")
    ldr = ldr[order]
    mark = score.notes["mark"][matched["score_index"]][order]
    dry = ~pedal_down_at(perf.pedal, perf.notes["offset_s"][matched["perf_index"]], CC_SUSTAIN)[order]
    out = dict(nan)
    for key, kind in (("legato_ratio", MARK_LEGATO), ("staccato_ratio", MARK_STACCATO)):
        if (mark == kind).sum() >= MIN_MARKED:
            out[key] = float(np.median(ldr[mark == kind]))
    plain = mark == MARK_NONE
    if plain.sum() >= MIN_NOTES:
        plain_dry = plain & dry
        counted = plain_dry if plain_dry.sum() >= MIN_NOTES else plain
        out["duration_bias"] = float(np.median(ldr[counted]))
    residuals = []                      # note-to-note inconsistency within each kind of written touch
    for kind in (MARK_NONE, MARK_LEGATO, MARK_STACCATO):
        sel = mark == kind
        if kind == MARK_NONE and (sel & dry).sum() >= MIN_NOTES:
            sel = sel & dry
        if sel.sum() >= MIN_NOTES:
            x = ldr[sel]
            local = np.array([np.median(x[max(i - ARTIC_NEIGHBOURS, 0): i + ARTIC_NEIGHBOURS + 1])
                              for i in range(len(x))])
            residuals.append(x - local)
    if residuals:
        r = np.concatenate(residuals)
        out["duration_spread"] = float(1.4826 * np.median(np.abs(r - np.median(r))))
    return out


def _pedal_statistics(score: Score | None, perf: Performance, alignment, view: _NoteView) -> dict[str, float]:
    """Harmony-aware blur and missing sustain over the window's harmonic spans (see the module docstring)."""
    nan = {"pedal_blur": math.nan, "pedal_dry": math.nan}
    if len(perf.pedal) == 0 and perf.source == "transcription":
        return nan
    if len(view.notes) < MIN_NOTES:
        return nan
    damper = _Damper(perf.pedal)
    spans = _score_spans(score, perf, alignment, view) if view.tokens is not None else _performed_spans(view)
    if not spans:
        return nan
    carried, possible = np.array([_carry_over(perf.notes, damper, spans[k - 1], spans[k])
                                  for k in range(1, len(spans))] or [(0.0, 0.0)]).T
    need = np.array([s.need for s in spans])
    dry = np.array([1.0 - damper.mean_sustain(s.start_s, s.end_s) for s in spans])
    stats = {"pedal_blur": float(carried.sum() / possible.sum()) if possible.sum() > 0 else 0.0,
             "pedal_dry": float(np.sum(need * dry) / need.sum()) if need.sum() > 0 else 0.0,
             "pedal_written_dry": math.nan, "pedal_written_held": math.nan}
    if view.tokens is not None and score.pedal_beats is not None:
        stats.update(_written_pedal_statistics(score, perf, alignment, view, damper))
    return stats


def _written_pedal_statistics(score: Score, perf: Performance, alignment, view: _NoteView, damper: "_Damper"
                              ) -> dict[str, float]:
    """The performed pedal against the written one ('Ped.' .. '*' of the score), within the window's written
    range (its first to last played onset): written_dry = the share of written-pedal time with the dampers
    on (1 - mean sustain, time placed by the local tempo); written_held = the share of written releases that
    are followed by a written press (a pedal change) where the dampers never came down within
    WRITTEN_CHANGE_S of the release (1 - the most damping there). NaN where the range holds no written pedal."""
    from pipelines.features.align import local_tempo

    nan = {"pedal_written_dry": math.nan, "pedal_written_held": math.nan}
    played = view.tokens[view.tokens["score_index"] >= 0]["score_index"]
    if len(played) < MIN_NOTES or alignment.n_matched < 2:
        return nan
    beats = score.notes["onset_beat"][played]
    lo, hi = float(beats.min()), float(beats.max())
    marks = np.clip(score.pedal_beats, lo, hi)
    inside = marks[:, 1] > marks[:, 0]
    if not inside.any():
        return nan
    tempo = local_tempo(score, perf, alignment)
    t0, t1 = tempo.time_at(marks[inside, 0]), tempo.time_at(marks[inside, 1])
    length = np.maximum(t1 - t0, 0.0)
    sustain = np.array([damper.mean_sustain(a, b) for a, b in zip(t0, t1)])
    dry = float(np.clip(np.sum(length * (1.0 - sustain)) / length.sum(), 0.0, 1.0)) if length.sum() > 0 else math.nan
    releases, gap = score.pedal_beats[:-1, 1], score.pedal_beats[1:, 0] - score.pedal_beats[:-1, 1]
    changes = releases[(releases >= lo) & (releases <= hi) & (gap >= 0.0) & (gap <= WRITTEN_CHANGE_BEATS)]
    held = math.nan
    if len(changes):
        at = tempo.time_at(changes)
        held = float(np.clip(np.mean([1.0 - damper.max_damping(t - WRITTEN_CHANGE_S, t + WRITTEN_CHANGE_S)
                                      for t in at]), 0.0, 1.0))
    return {"pedal_written_dry": dry, "pedal_written_held": held}


class _Damper:
    """The sustain pedal (CC64) as a continuous damping function of time.

    damping(v) = 1 at or below HALF_PEDAL_LOW (dampers on the strings), 0 at or above HALF_PEDAL_HIGH
    (strings free), linear in between (half-pedalling); no event yet = damped. `integral(t)` is the
    cumulative damping seconds up to t (piecewise linear), so a note whose key is up from r keeps
    exp(-(integral(t) - integral(r)) / DAMP_TIME_S) of its sound at t.
    """

    def __init__(self, pedal: np.ndarray):
        events = pedal[pedal["controller"] == CC_SUSTAIN]
        events = events[np.argsort(events["time_s"], kind="stable")]
        times = np.concatenate([[-1e6], events["time_s"].astype(float)])
        damping = np.concatenate([[1.0], np.clip((HALF_PEDAL_HIGH - events["value"].astype(float))
                                                  / (HALF_PEDAL_HIGH - HALF_PEDAL_LOW), 0.0, 1.0)])
        self.times, self.damping = times, damping
        self.knots = np.concatenate([[0.0], np.cumsum(damping[:-1] * np.diff(times))])

    def integral(self, t: np.ndarray | float) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        k = np.searchsorted(self.times, t, side="right") - 1
        return self.knots[k] + self.damping[k] * (t - self.times[k])

    def max_damping(self, t0: float, t1: float) -> float:
        """The most damping at any time in [t0, t1] (1 = the dampers were fully down at some point)."""
        first = np.searchsorted(self.times, t0, side="right") - 1
        last = np.searchsorted(self.times, t1, side="right") - 1
        return float(self.damping[first:last + 1].max())

    def mean_sustain(self, t0: float, t1: float) -> float:
        """Mean of 1 - damping over [t0, t1] (1 = pedal fully down throughout)."""
        if t1 <= t0:
            return float(1.0 - self.damping[np.searchsorted(self.times, t0, side="right") - 1])
        return float(1.0 - (self.integral(t1) - self.integral(t0)) / (t1 - t0))


@dataclasses.dataclass
class _Span:
    """One harmonic span: performed start and end (s), the pitch classes written in it, its sustain need."""
    start_s: float
    end_s: float
    pitch_classes: frozenset
    need: float


def _span_need(pitch: np.ndarray, onsets: np.ndarray) -> float:
    """0..1: how much a span's written notes ask for sustain: the share of leaps (>= NEED_LEAP semitones)
    between successive onsets of its upper and lower lines (a broken chord or arpeggio rather than a scale
    run or repeated notes), over at least NEED_MIN_ONSETS onsets."""
    times = np.unique(onsets)
    if len(times) < NEED_MIN_ONSETS:
        return 0.0
    split = np.median(pitch)
    shares = []
    for line in (pitch >= split, pitch < split):
        if line.sum() < 2:
            continue
        top = np.array([pitch[line & (onsets == t)].max() for t in times if (line & (onsets == t)).any()])
        steps = np.abs(np.diff(top))
        steps = steps[steps > 0]
        if len(steps) >= 2:
            shares.append(float(np.mean(steps >= NEED_LEAP)))
    return max(shares) if shares else 0.0


def _score_spans(score: Score, perf: Performance, alignment, view: _NoteView) -> list[_Span]:
    """The window's harmonic spans: the score cut at every bar line and every HARMONY_STEP_BEATS within a
    bar, placed in time by the local tempo; pitch classes of every written note sounding in the span."""
    from pipelines.features.align import local_tempo

    sn = score.notes
    played = view.tokens[view.tokens["score_index"] >= 0]["score_index"]
    if len(played) < MIN_NOTES or alignment.n_matched < 2:
        return []
    lo, hi = float(sn["onset_beat"][played].min()), float(sn["onset_beat"][played].max())
    end = float((sn["onset_beat"] + sn["duration_beat"]).max())
    bars = np.append(score.bar_starts_beat, end)
    steps = [(b - a) / 2 if b - a >= 2 * HARMONY_STEP_BEATS else b - a for a, b in zip(bars[:-1], bars[1:])]
    cuts = np.unique(np.concatenate([np.arange(a, b - 1e-6, max(st, 0.5))
                                     for a, b, st in zip(bars[:-1], bars[1:], steps)] + [[end]]))
    first = max(int(np.searchsorted(cuts, lo, side="right")) - 1, 0)     # the span holding the first note ..
    last = min(int(np.searchsorted(cuts, hi, side="right")), len(cuts) - 1)   # .. to the end of the last one
    cuts = cuts[first:last + 1]
    times = local_tempo(score, perf, alignment).time_at(cuts)
    spans = []
    for a, b, ta, tb in zip(cuts[:-1], cuts[1:], times[:-1], times[1:]):
        sounding = (sn["onset_beat"] < b - 1e-6) & (sn["onset_beat"] + sn["duration_beat"] > a + 1e-6)
        struck = (sn["onset_beat"] >= a - 1e-6) & (sn["onset_beat"] < b - 1e-6)
        if not struck.any():
            continue
        spans.append(_Span(float(ta), float(tb), frozenset((sn["pitch"][sounding] % 12).tolist()),
                           _span_need(sn["pitch"][struck], sn["onset_beat"][struck])))
    return spans


def _performed_spans(view: _NoteView) -> list[_Span]:
    """Without a score: spans of SCORELESS_SPAN_S performed seconds, pitch classes of the notes struck in
    them (a coarse stand-in for the harmony)."""
    notes = view.notes
    t0, t1 = float(notes["onset_s"].min()), float(notes["onset_s"].max())
    cuts = np.arange(t0, t1 + SCORELESS_SPAN_S, SCORELESS_SPAN_S)
    spans = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        struck = (notes["onset_s"] >= a) & (notes["onset_s"] < b)
        if struck.any():
            spans.append(_Span(float(a), float(b), frozenset((notes["pitch"][struck] % 12).tolist()),
                               _span_need(notes["pitch"][struck], np.round(notes["onset_s"][struck], 2))))
    return spans


def _carry_over(notes: np.ndarray, damper: _Damper, before: _Span, after: _Span) -> tuple[float, float]:
    """(carried, possible) at a harmony change: the sound, CLEAR_S after the change, of the released notes
    whose pitch class is foreign to the new span, with the dampers as pedalled and without any damping
    (velocity / 127 x natural decay). (0, 0) when the harmony does not change."""
    if not (before.pitch_classes - after.pitch_classes):
        return 0.0, 0.0
    t = min(after.start_s + CLEAR_S, max(after.end_s, after.start_s + ONSET_GROUP_S))
    change = after.start_s - ONSET_GROUP_S
    old = (notes["onset_s"] < change) & (notes["onset_s"] > change - PEDAL_HOLD_HORIZON_S)
    old &= ~np.isin(notes["pitch"] % 12, list(after.pitch_classes))
    sound = notes["velocity"][old].astype(float) / 127.0 * np.exp(-(t - notes["onset_s"][old]) / NATURAL_DECAY_S)
    released = np.minimum(notes["offset_s"][old], t)           # a key still down at t holds its note itself
    survives = np.exp(-(damper.integral(t) - damper.integral(released)) / DAMP_TIME_S)
    return float(np.sum(sound * survives)), float(np.sum(sound))


def _tone_statistics(view: _NoteView, audio_features: dict | None, score: Score | None = None) -> dict[str, float]:
    """Chord unevenness (velocity std without the top note), the top note's lead, loudness, noise.

    Chords are the notes of one written onset (with a score) or of one performed onset group."""
    notes = view.notes
    out = {"chord_unevenness": math.nan, "harsh_fraction": math.nan, "loud_excess": math.nan, "voicing_lead": math.nan,
           "noise_flatness": _noise_flatness(audio_features)}
    if len(notes) < MIN_NOTES:
        return out
    order = np.argsort(notes["onset_s"], kind="stable")
    onsets, pitch, vel = notes["onset_s"][order], notes["pitch"][order], notes["velocity"][order].astype(float)
    group = np.cumsum(np.concatenate([[True], np.diff(onsets) > ONSET_GROUP_S]))
    written = _written_onsets(view, score)[order]
    known = ~np.isnan(written)
    if known.any():         # a written onset is one chord however spread its notes are played
        group = group.copy()
        group[known] = np.unique(written[known], return_inverse=True)[1] - len(onsets) - 1
    spreads, leads = [], []
    for g in np.unique(group):
        sel = group == g
        by_pitch = vel[sel][np.argsort(pitch[sel])]
        if sel.sum() >= 2:
            leads.append(by_pitch[-1] - by_pitch[:-1].mean())
        if sel.sum() >= 3:
            spreads.append(np.std(by_pitch[:-1]))
    out["chord_unevenness"] = float(np.mean(spreads)) if spreads else 0.0
    out["harsh_fraction"] = float(np.mean(vel >= HARSH_VELOCITY))
    out["loud_excess"] = float(np.mean(np.maximum(vel - LOUD_FROM, 0.0)))
    out["voicing_lead"] = float(np.median(leads)) if len(leads) >= MIN_CHORDS else math.nan
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
