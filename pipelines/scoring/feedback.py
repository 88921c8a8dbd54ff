"""Per-bar feedback: what went wrong in which bar, measured from the alignment of playing and score.

`analyse(score, perf, names)` aligns nothing itself: it takes the alignment the scoring job already made
(`measure_bars`) or makes one (`analyse`), and returns one measurement dict per score bar and the flags
raised on them. The model's share (attention and per-window scores pooled onto the bars) is added after
inference by `add_model_to_bars`; recordings without a score get time ranges from the per-window scores
(`time_flags`). `observation` picks the single thing most worth practising.

Per bar (units in the names; NaN where the input cannot tell):

| field | meaning |
| --- | --- |
| bar, index | the bar's number as the score numbers it (MIDI: index + 1; MusicXML: its measure number), 0-based index |
| start_s, end_s | where the bar lies in the recording (from the fitted tempo map) |
| score_notes, matched | written notes of the bar, and those found in the playing |
| missed, wrong, extra | written notes not played; played a semitone or two off (a missed written note with an extra |
| | played note within WRONG_MAX_SEMITONES and WRONG_WINDOW_BEATS of it; from audio also a neighbour pitch |
| | whose onset activation is strong where the transcriber kept no note); played notes not in the score |
| unclear | unmatched written notes the transcriber's onset activation says may have sounded (audio only): counted |
| | neither as played nor as missed |
| onset_dev_ms | median signed deviation of the bar's onsets from the piece's smooth tempo map (+ = late) |
| tempo_pct | tempo of the bar against the bars around it, % (+ = rushing, - = dragging) |
| unsteady_ms | spread of the bar's onsets around the bar's own straight tempo line (RMS, ms) |
| velocity, velocity_contrast | mean MIDI velocity (transcription: basic-pitch's amplitude x 127), and minus the |
| | mean of the two bars either side, less the same difference in the written velocities |
| duration_ratio | median played / written length at the local tempo (legato ~0.9-1, staccato < 0.5) |
| legato_ratio, staccato_ratio | the same over the bar's slurred notes and over its staccato notes, where the |
| | score (MusicXML) marks MIN_MARKED_IN_BAR or more of them; NaN otherwise |
| pedal_down_pct | share of the bar with the sustain pedal down (performance MIDI only) |
| pedal_held_changes | 1 when the harmony changes at the bar's first bar line and the sustain pedal is held across it |

Flags (`flag_bars`): one per run of consecutive bars with the same finding, `{bar, last_bar, dimension,
kind, reason, start_s, end_s, severity}`; `dimension` is the schema's dimension for that kind of finding
(`DIMENSION_FOR`), or the kind itself when the schema has none. Thresholds are named constants below; they
were set on the demo corpus's clean takes (no flag) and its takes with known errors (benchmarks/
bench_bar_feedback.py, precision and recall in benchmarks/RESULTS.md).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from pipelines.constants import CC_SUSTAIN
from pipelines.io.notes import MARK_LEGATO, MARK_STACCATO, EXTRA, MATCHED, MISSED, Performance, Score

if TYPE_CHECKING:
    from pipelines.features.transcribe import OnsetEvidence

# --- note errors ----------------------------------------------------------------------------------
WRONG_MAX_SEMITONES = 2            # a played note this close in pitch to a missed written one is a wrong note
WRONG_WINDOW_BEATS = 0.5           # ... when its onset is within this many beats of the written note's place
WRONG_WINDOW_MIN_S = 0.12          # ... or this many seconds, whichever is wider
NEIGHBOUR_STRUCK = 0.75           # (audio) onset activation of a neighbour pitch the decoder left out: struck
UNCLEAR_BAR_SHARE = 0.15           # (audio) a bar with more of its written notes unclear than this: no missed flag
WRONG_DOMINANCE = 0.5             # (audio) ... and the written pitch's onset activation is under this share of it
EVIDENCE_PLAYED = 0.30             # transcriber onset activation (0..1) at an unmatched written note that
                                   # says it may have sounded: "unclear", not missed
HARMONIC_INTERVALS = (12, 19, 24, 28, 31)   # an extra transcribed note this far above a sounding note is
                                             # taken for its overtone, not a played note
# --- timing ---------------------------------------------------------------------------------------
TEMPO_FLAG_PCT = 12.0              # a bar this much faster (slower) than the bars around it is rushed (dragged)
TEMPO_CONTEXT_BARS = 3             # bars each side that set the reference tempo
UNSTEADY_FLAG_MS = 60.0            # onsets spread this much around the bar's own tempo line
ONSET_OUTLIER_BEATS = 0.75        # a matched onset this far from the alignment's tempo fit is not used for timing
MIN_TIMING_ONSETS = 3              # distinct onsets a bar needs for its tempo (the next downbeat counts)
# --- dynamics, articulation, pedal ----------------------------------------------------------------
DYNAMICS_FLAG_VELOCITY = 22.0      # a bar this much louder/softer than its neighbours, beyond what is written
# played / written length of a bar's notes outside these: clipped / over-held. Each is about the 2nd (98th)
# percentile of 1,295 bars of 150 rated human PercePiano segments (their cut last bars left out), so a good
# pianist rarely gets the flag: score MIDI lengths (often played back) and MusicXML's notated ones differ
CLIPPED_RATIO, OVERHELD_RATIO = 0.23, 2.5
NOTATED_CLIPPED_RATIO = 0.15
MIN_MARKED_IN_BAR = 2              # slurred (staccato) notes a bar needs for its written-touch measure
DETACHED_RATIO = 0.30              # slurred notes played shorter than this x their length: detached (human 2 %)
HELD_STACCATO_RATIO = 1.05         # staccato notes held longer than this x their length: not staccato (human 98 %)
PEDAL_BLUR_FLAG = 1                # a bar line into a new harmony with the pedal held through
HARMONY_SAME = 0.7                 # cosine of the pitch-class profiles either side of a bar line: same harmony
PEDAL_CHANGE_S = 0.2               # no pedal change within this of the bar line: held through
PEDAL_MISSING_CONTEXT_PCT = 50.0   # a bar with no pedal where the bars around it are pedalled this much

DIMENSION_FOR = {                  # kind of finding -> dimension names to report it under, first present wins
    "missed": ("note_accuracy",), "wrong": ("note_accuracy",), "extra": ("note_accuracy",),
    "rushing": ("rhythmic_precision", "timing"), "dragging": ("rhythmic_precision", "timing"),
    "unsteady": ("rhythmic_precision", "timing"),
    "dynamics": ("dynamics_control", "dynamic_range", "dynamic_sophistication"),
    "articulation": ("articulation", "articulation_length"),
    "pedal": ("pedaling", "pedal_clarity", "pedal_amount"),
}
# how much a finding weighs when choosing what to practise first (per unit of `severity`)
PRIORITY = {"missed": 1.0, "wrong": 1.2, "extra": 0.6, "rushing": 1.0, "dragging": 1.0, "unsteady": 0.7,
            "dynamics": 0.5, "articulation": 0.4, "pedal": 0.5}
KIND_WORDS = {"missed": "missed notes", "wrong": "wrong notes", "extra": "extra notes", "rushing": "rushing",
              "dragging": "dragging", "unsteady": "unsteady timing", "dynamics": "uneven dynamics",
              "articulation": "articulation", "pedal": "pedalling"}

BAR_FIELDS = ("bar", "index", "start_s", "end_s", "score_notes", "matched", "missed", "wrong", "extra", "unclear",
              "onset_dev_ms", "tempo_pct", "unsteady_ms", "velocity", "velocity_contrast", "duration_ratio",
              "legato_ratio", "staccato_ratio",
              "pedal_down_pct", "pedal_held_changes", "attention", "window_scores")


def dimension_for(kind: str, names: Sequence[str]) -> str:
    """The schema dimension a finding of `kind` is reported under (the kind itself if none fits)."""
    return next((n for n in DIMENSION_FOR.get(kind, ()) if n in names), kind)


def bar_numbers(score: Score) -> np.ndarray:
    """i8 [n_bars]: each bar's number as the score prints it (MIDI: 1, 2, ...)."""
    numbers = getattr(score, "bar_numbers", None)
    if numbers is not None and len(numbers) == score.n_bars:
        return np.asarray(numbers, dtype=np.int64)
    return np.arange(1, score.n_bars + 1, dtype=np.int64)


# --- measurements ---------------------------------------------------------------------------------
def analyse(score: Score, perf: Performance, names: Sequence[str], alignment=None,
            evidence: OnsetEvidence | None = None) -> dict[str, Any]:
    """Bars, flags and the observation for a performance of `score` (aligned here unless given)."""
    if alignment is None:
        from pipelines.features.align import align
        alignment = align(score, perf)
    bars = measure_bars(score, perf, alignment, evidence=evidence)
    flags = flag_bars(bars, names, perf_source=perf.source, notated=score.source_format == "musicxml")
    return {"bars": bars, "flags": flags, "observation": observation(flags, bars)}


def measure_bars(score: Score, perf: Performance, alignment, *,
                 evidence: OnsetEvidence | None = None) -> list[dict[str, Any]]:
    """One measurement dict per score bar (module docstring), in bar order."""
    from pipelines.features.align import local_tempo

    n_bars = score.n_bars
    sn = score.notes
    tok = alignment.tokens
    tempo = local_tempo(score, perf, alignment)
    starts_beat = np.asarray(score.bar_starts_beat, np.float64)
    last_beat = float((sn["onset_beat"] + sn["duration_beat"]).max()) if len(sn) else starts_beat[-1] + 4.0
    ends_beat = np.append(starts_beat[1:], max(last_beat, starts_beat[-1] + 1e-3))
    start_s, end_s = tempo.time_at(starts_beat), tempo.time_at(ends_beat)
    numbers = bar_numbers(score)

    from pipelines.features.align import tremolo_extras
    notes = _note_errors(score, perf, tok[~tremolo_extras(score, alignment, tempo)], tempo, evidence)
    timing = _timing(score, perf, tok, tempo, n_bars, starts_beat, ends_beat)
    dyn = _dynamics(score, perf, tok, n_bars)
    art = _articulation(score, perf, tok, tempo, n_bars)
    ped = _pedal(score, perf, n_bars, start_s, end_s, tempo)
    bars = []
    for b in range(n_bars):
        bars.append({
            "bar": int(numbers[b]), "index": b, "start_s": float(start_s[b]), "end_s": float(end_s[b]),
            "score_notes": int((sn["bar"] == b).sum()), "matched": int(notes["matched"][b]),
            "missed": int(notes["missed"][b]), "wrong": int(notes["wrong"][b]), "extra": int(notes["extra"][b]),
            "unclear": int(notes["unclear"][b]),
            "onset_dev_ms": timing["onset_dev_ms"][b], "tempo_pct": timing["tempo_pct"][b],
            "unsteady_ms": timing["unsteady_ms"][b], "velocity": dyn["velocity"][b],
            "velocity_contrast": dyn["contrast"][b], "duration_ratio": art["all"][b],
            "legato_ratio": art["legato"][b], "staccato_ratio": art["staccato"][b],
            "pedal_down_pct": ped["down_pct"][b], "pedal_held_changes": int(ped["held_changes"][b]),
            "attention": math.nan, "window_scores": [],
        })
    return bars


def _note_errors(score: Score, perf: Performance, tok: np.ndarray, tempo, evidence) -> dict[str, np.ndarray]:
    n_bars = score.n_bars
    sn, pn = score.notes, perf.notes
    out = {k: np.zeros(n_bars, np.int64) for k in ("matched", "missed", "wrong", "extra", "unclear")}
    matched = tok[tok["kind"] == MATCHED]
    np.add.at(out["matched"], sn["bar"][matched["score_index"]], 1)
    missed = tok[tok["kind"] == MISSED]
    extra = tok[tok["kind"] == EXTRA]
    used = np.zeros(len(extra), bool)           # paired with a written note as its wrong pitch
    overtone = np.zeros(len(extra), bool)       # (audio) at an overtone of a sounding note: not counted as extra
    transcribed = perf.source == "transcription"
    if transcribed and len(extra):
        overtone = _overtones(pn, extra["perf_index"])
    matched_pitch = sn["pitch"][matched["score_index"]].astype(int)
    matched_beat = sn["onset_beat"][matched["score_index"]]
    spb = tempo.spb_at_beat(sn["onset_beat"][missed["score_index"]]) if len(missed) else np.zeros(0)
    # where each missed note was due: through the played onsets either side (chord mates: exactly theirs),
    # closer than the smooth tempo map in a bar played out of tempo
    beats_u, times_u = _onset_groups(score, perf, tok)
    due = np.interp(sn["onset_beat"][missed["score_index"]], beats_u, times_u) if len(beats_u) >= 2 \
        else missed["perf_onset_s"].astype(float)
    outside = (sn["onset_beat"][missed["score_index"]] < beats_u[0]) | \
        (sn["onset_beat"][missed["score_index"]] > beats_u[-1]) if len(beats_u) >= 2 else np.ones(len(missed), bool)
    due = np.where(outside, missed["perf_onset_s"], due)
    for i, m in enumerate(missed):
        s = sn[m["score_index"]]
        t = float(due[i])
        heard = evidence.at(int(s["pitch"]), t) if evidence is not None else 0.0
        reach = max(WRONG_WINDOW_MIN_S, WRONG_WINDOW_BEATS * float(spb[i]))
        near = np.flatnonzero(~used & (np.abs(extra["perf_onset_s"] - t) <= reach)
                              & (np.abs(extra["pitch"].astype(int) - int(s["pitch"])) <= WRONG_MAX_SEMITONES))
        j = near[np.argmin(np.abs(extra["perf_onset_s"][near] - t)
                           + 0.01 * np.abs(extra["pitch"][near].astype(int) - int(s["pitch"])))] if len(near) else -1
        # a played neighbour pitch stands in for it: a wrong note, unless (audio) the written pitch itself
        # started there about as strongly, when the neighbour is more likely the transcriber's bleed
        if j >= 0 and (evidence is None or heard < WRONG_DOMINANCE * evidence.at(int(extra["pitch"][j]),
                                                                               float(extra["perf_onset_s"][j]))):
            used[j] = True
            out["wrong"][s["bar"]] += 1
        elif j < 0 and evidence is not None and _neighbour_struck(evidence, int(s["pitch"]), t, heard,
                                                                   matched_pitch[matched_beat == s["onset_beat"]]):
            out["wrong"][s["bar"]] += 1          # the transcriber kept neither, but a neighbour pitch clearly started
        elif heard >= EVIDENCE_PLAYED:
            out["unclear"][s["bar"]] += 1        # the written pitch did start there: the decoder dropped it
        else:
            out["missed"][s["bar"]] += 1
    for j in np.flatnonzero(~used & ~overtone):
        out["extra"][extra["bar"][j]] += 1
    return out


def _neighbour_struck(evidence, pitch: int, t: float, heard: float, chord: np.ndarray) -> bool:
    """(audio) A pitch within WRONG_MAX_SEMITONES of a missing written note, not itself written at that
    onset, started at its time as strongly as the transcriber's own threshold and well above the written pitch."""
    for step in (-2, -1, 1, 2):
        q = pitch + step
        if q in chord:
            continue
        level = evidence.at(q, t)
        if level >= NEIGHBOUR_STRUCK and heard < WRONG_DOMINANCE * level:
            return True
    return False


def _overtones(pn: np.ndarray, extra_index: np.ndarray) -> np.ndarray:
    """bool [len(extra_index)]: the extra note sits a harmonic interval above a note sounding at its onset."""
    out = np.zeros(len(extra_index), bool)
    for k, p in enumerate(extra_index):
        t, pitch = pn["onset_s"][p], int(pn["pitch"][p])
        sounding = (pn["onset_s"] <= t + 0.05) & (pn["offset_s"] > t) & (np.arange(len(pn)) != p)
        below = pitch - pn["pitch"][sounding].astype(int)
        out[k] = bool(np.isin(below, HARMONIC_INTERVALS).any())
    return out


def _onset_groups(score: Score, perf: Performance, tok: np.ndarray, tempo=None) -> tuple[np.ndarray, np.ndarray]:
    """(score beats [G], median performed onset [G]) of the distinct written onsets with matched notes.

    With `tempo` (the alignment's robust local fit), matches further than ONSET_OUTLIER_BEATS from it are
    left out: a note matched to another occurrence of its pitch (a transcriber's dropped note can cause it)
    would otherwise bend the bar's tempo."""
    from pipelines.features.align import median_per_onset

    m = tok[tok["kind"] == MATCHED]
    if not len(m):
        return np.zeros(0), np.zeros(0)
    beats, onsets = score.notes["onset_beat"][m["score_index"]], perf.notes["onset_s"][m["perf_index"]]
    if tempo is not None:
        keep = np.abs(onsets - tempo.time_at(beats)) <= ONSET_OUTLIER_BEATS * tempo.spb_at_beat(beats)
        if keep.sum() >= 2:
            beats, onsets = beats[keep], onsets[keep]
    return median_per_onset(beats, onsets)


def _timing(score: Score, perf: Performance, tok: np.ndarray, tempo, n_bars: int, starts_beat: np.ndarray,
            ends_beat: np.ndarray) -> dict[str, list[float]]:
    from pipelines.features.align import fit_local_tempo

    beats, times = _onset_groups(score, perf, tok, tempo)
    nan = [math.nan] * n_bars
    out = {"onset_dev_ms": list(nan), "tempo_pct": list(nan), "unsteady_ms": list(nan)}
    if len(beats) < 2:
        return out
    # the piece's smooth tempo (wide kernel): onset deviations are measured from it
    smooth = fit_local_tempo(beats, times, bandwidth_beats=8.0)
    dev = times - smooth.time_at(beats)
    spb = np.full(n_bars, np.nan)
    for b in range(n_bars):
        inside = (beats >= starts_beat[b] - 1e-6) & (beats < ends_beat[b] - 1e-6)
        if inside.any():
            out["onset_dev_ms"][b] = float(np.median(dev[inside]) * 1000.0)
        # the bar's own straight tempo line through its onsets and the next downbeat (Theil-Sen: a note
        # matched to the wrong place does not tilt it)
        span = (beats >= starts_beat[b] - 1e-6) & (beats <= ends_beat[b] + 1e-6)
        if span.sum() >= MIN_TIMING_ONSETS and np.ptp(beats[span]) >= 0.99:
            slope, icept = _theil_sen(beats[span], times[span])
            if slope > 0 and b < n_bars - 1:             # the last bar has no closing downbeat: not measured
                spb[b] = slope
                resid = times[span] - (slope * beats[span] + icept)
                out["unsteady_ms"][b] = float(1.4826 * np.median(np.abs(resid - np.median(resid))) * 1000.0)
    for b in range(n_bars):
        if not np.isfinite(spb[b]):
            continue
        lo, hi = max(0, b - TEMPO_CONTEXT_BARS), min(n_bars, b + TEMPO_CONTEXT_BARS + 1)
        around = np.concatenate([spb[lo:b], spb[b + 1:hi]])
        around = around[np.isfinite(around)]
        if len(around) >= 2:
            out["tempo_pct"][b] = float((np.median(around) / spb[b] - 1.0) * 100.0)
    return out


def _theil_sen(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Median of pairwise slopes, and the median intercept for it."""
    i, j = np.triu_indices(len(x), 1)
    dx = x[j] - x[i]
    ok = dx > 1e-9
    if not ok.any():
        return 0.0, float(np.median(y))
    slope = float(np.median((y[j] - y[i])[ok] / dx[ok]))
    return slope, float(np.median(y - slope * x))


def _dynamics(score: Score, perf: Performance, tok: np.ndarray, n_bars: int) -> dict[str, list[float]]:
    m = tok[tok["kind"] == MATCHED]
    bar = score.notes["bar"][m["score_index"]]
    played = perf.notes["velocity"][m["perf_index"]].astype(float)
    written = score.notes["velocity"][m["score_index"]].astype(float)
    vel, wri = np.full(n_bars, np.nan), np.full(n_bars, np.nan)
    for b in np.unique(bar):
        vel[b], wri[b] = played[bar == b].mean(), written[bar == b].mean()
    contrast = np.full(n_bars, np.nan)
    for b in range(n_bars):
        if not np.isfinite(vel[b]):
            continue
        nb = [k for k in (b - 2, b - 1, b + 1, b + 2) if 0 <= k < n_bars and np.isfinite(vel[k])]
        if len(nb) >= 2:
            contrast[b] = (vel[b] - vel[nb].mean()) - (wri[b] - wri[nb].mean())
    return {"velocity": vel.tolist(), "contrast": contrast.tolist()}


def _articulation(score: Score, perf: Performance, tok: np.ndarray, tempo, n_bars: int) -> dict[str, list[float]]:
    """Per bar: the median played / written length of its notes ("all"), and of its slurred ("legato") and
    staccato ("staccato") notes where the score marks at least MIN_MARKED_IN_BAR of them (else NaN)."""
    m = tok[tok["kind"] == MATCHED]
    sn, pn = score.notes[m["score_index"]], perf.notes[m["perf_index"]]
    written = sn["duration_beat"] * tempo.spb_at_beat(sn["onset_beat"])
    ok = written > 0.05                                  # grace notes and tiny values say nothing
    ratio = (pn["offset_s"] - pn["onset_s"])[ok] / written[ok]
    bar, mark = sn["bar"][ok], sn["mark"][ok]
    out = {"all": [math.nan] * n_bars, "legato": [math.nan] * n_bars, "staccato": [math.nan] * n_bars}
    for b in np.unique(bar):
        out["all"][b] = float(np.median(ratio[bar == b]))
        for key, kind in (("legato", MARK_LEGATO), ("staccato", MARK_STACCATO)):
            sel = (bar == b) & (mark == kind)
            if sel.sum() >= MIN_MARKED_IN_BAR:
                out[key][b] = float(np.median(ratio[sel]))
    return out


def _pedal(score: Score, perf: Performance, n_bars: int, start_s: np.ndarray, end_s: np.ndarray,
           tempo) -> dict[str, np.ndarray]:
    down_pct = np.full(n_bars, np.nan)
    held = np.zeros(n_bars, np.int64)
    if perf.source == "transcription":                   # audio: no pedal data
        return {"down_pct": down_pct.tolist(), "held_changes": held}
    from pipelines.io.performance import pedal_down_at

    times = perf.pedal["time_s"][perf.pedal["controller"] == CC_SUSTAIN] if len(perf.pedal) else np.zeros(0)

    def is_down(t: np.ndarray) -> np.ndarray:
        return pedal_down_at(perf.pedal, t, CC_SUSTAIN)

    for b in range(n_bars):
        if end_s[b] > start_s[b]:
            grid = np.linspace(start_s[b], end_s[b], 41)[:-1]
            down_pct[b] = float(is_down(grid).mean() * 100.0)
    # harmony changes at bar lines: the written pitch classes of the half bar after it against those of the
    # half bar before it (duration-weighted); a pedal held down across such a bar line blurs the two
    if len(times) and n_bars > 1:
        starts = np.asarray(score.bar_starts_beat, np.float64)
        for b in range(1, n_bars):
            half = 0.5 * (starts[b] - starts[b - 1])
            before = _pitch_classes(score.notes, starts[b] - half, starts[b])
            after = _pitch_classes(score.notes, starts[b], starts[b] + half)
            if before.sum() == 0 or after.sum() == 0:
                continue
            similarity = float(before @ after / (np.linalg.norm(before) * np.linalg.norm(after)))
            if similarity >= HARMONY_SAME:
                continue
            t = float(start_s[b])
            if is_down(np.linspace(t - PEDAL_CHANGE_S, t + PEDAL_CHANGE_S, 9)).all() and \
                    not _pedal_moved(times, t - PEDAL_CHANGE_S, t + PEDAL_CHANGE_S):
                held[b] += 1
    return {"down_pct": down_pct.tolist(), "held_changes": held}


def _pitch_classes(notes: np.ndarray, a: float, b: float) -> np.ndarray:
    """f8 [12]: beats each pitch class sounds in the written span [a, b)."""
    end = notes["onset_beat"] + notes["duration_beat"]
    overlap = np.clip(np.minimum(end, b) - np.maximum(notes["onset_beat"], a), 0.0, None)
    out = np.zeros(12)
    np.add.at(out, notes["pitch"].astype(int) % 12, overlap)
    return out


def _pedal_moved(times: np.ndarray, a: float, b: float) -> bool:
    return bool(((times > a) & (times < b)).any())


# --- flags ----------------------------------------------------------------------------------------
def _finite(value) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def bar_findings(bar: dict[str, Any], bars: list[dict[str, Any]], *, perf_source: str,
                 notated: bool = False) -> dict[str, tuple[float, str]]:
    """kind -> (severity, words) of what is wrong in one bar."""
    out: dict[str, tuple[float, str]] = {}
    for kind in ("missed", "wrong", "extra"):
        n = bar[kind]
        if kind == "extra" and perf_source == "transcription":
            n = 0           # the transcriber's own false notes (precision ~0.87) drown real extra notes: counted only
        if kind == "missed" and perf_source == "transcription" and \
                bar.get("unclear", 0) > UNCLEAR_BAR_SHARE * max(bar["score_notes"], 1):
            n = 0           # the transcriber lost many of this bar's notes: its missing ones say little
        if n:
            out[kind] = (float(n), f"{n} {KIND_WORDS[kind][:-1] if n == 1 else KIND_WORDS[kind]}")
    tempo = bar["tempo_pct"]
    if _finite(tempo) and abs(tempo) >= TEMPO_FLAG_PCT:
        kind = "rushing" if tempo > 0 else "dragging"
        out[kind] = (abs(tempo) / 10.0, f"{kind} {abs(tempo):.0f} %")
    if _finite(bar["unsteady_ms"]) and bar["unsteady_ms"] >= UNSTEADY_FLAG_MS:
        out["unsteady"] = (bar["unsteady_ms"] / UNSTEADY_FLAG_MS, f"unsteady (onsets +-{bar['unsteady_ms']:.0f} ms)")
    c = bar["velocity_contrast"]          # transcribed "velocity" is the transcriber's amplitude: measured, not flagged
    if perf_source != "transcription" and _finite(c) and abs(c) >= DYNAMICS_FLAG_VELOCITY:
        out["dynamics"] = (abs(c) / DYNAMICS_FLAG_VELOCITY,
                           f"{'louder' if c > 0 else 'softer'} than the bars around by {abs(c):.0f} velocity")
    r = bar["duration_ratio"]
    legato, staccato = bar.get("legato_ratio", math.nan), bar.get("staccato_ratio", math.nan)
    if perf_source == "transcription":
        pass                # the transcriber's note ends follow the sound's decay, not the key: measured only
    elif _finite(legato) and legato < DETACHED_RATIO:
        out["articulation"] = (abs(math.log(legato / DETACHED_RATIO)) + 0.5,
                               f"slurred notes detached (played {legato:.0%} of their length)")
    elif _finite(staccato) and staccato > HELD_STACCATO_RATIO:
        out["articulation"] = (abs(math.log(staccato / HELD_STACCATO_RATIO)) + 0.5,
                               f"staccato notes held ({staccato:.0%} of their length)")
    elif _finite(r) and (r < (NOTATED_CLIPPED_RATIO if notated else CLIPPED_RATIO) or r > OVERHELD_RATIO):
        words = f"notes clipped to {r:.0%} of their length" if r < OVERHELD_RATIO else \
            f"notes held {r:.1f}x their written length"
        out["articulation"] = (abs(math.log(r)), words)
    if bar["pedal_held_changes"] >= PEDAL_BLUR_FLAG:
        out["pedal"] = (float(bar["pedal_held_changes"]), "pedal held over from the bar before into a new harmony")
    elif _finite(bar["pedal_down_pct"]) and bar["pedal_down_pct"] == 0.0:
        i = bar["index"]
        around = [b["pedal_down_pct"] for b in bars[max(0, i - 2): i] + bars[i + 1: i + 3]
                  if _finite(b["pedal_down_pct"])]
        if len(around) >= 2 and min(around) >= PEDAL_MISSING_CONTEXT_PCT:
            out["pedal"] = (1.0, "no pedal where the bars around are pedalled")
    return out


def _bar_range(first: int, last: int) -> str:
    return f"bar {first}" if first == last else f"bars {first}-{last}"


def flag_bars(bars: list[dict[str, Any]], names: Sequence[str], *, perf_source: str = "midi",
              notated: bool = False) -> list[dict[str, Any]]:
    """Flags, one per run of consecutive bars with the same kind of finding, in bar order. notated: the score's
    lengths are notated ones (MusicXML), which pianists play shorter than a score MIDI's."""
    per_bar = [bar_findings(b, bars, perf_source=perf_source, notated=notated) for b in bars]
    flags: list[dict[str, Any]] = []
    kinds = [k for k in PRIORITY]
    for kind in kinds:
        b = 0
        while b < len(bars):
            if kind not in per_bar[b]:
                b += 1
                continue
            e = b
            while e + 1 < len(bars) and kind in per_bar[e + 1]:
                e += 1
            run = [per_bar[k][kind] for k in range(b, e + 1)]
            severity = float(sum(s for s, _ in run))
            if kind in ("missed", "wrong", "extra"):
                total = sum(bars[k][kind] for k in range(b, e + 1))
                words = f"{total} {KIND_WORDS[kind][:-1] if total == 1 else KIND_WORDS[kind]}"
            elif len(run) == 1:
                words = run[0][1]
            else:
                words = "; ".join(f"{bars[b + i]['bar']}: {w}" for i, (_, w) in enumerate(run))
            flags.append({"bar": int(bars[b]["bar"]), "last_bar": int(bars[e]["bar"]),
                          "dimension": dimension_for(kind, names), "kind": kind,
                          "reason": f"{_bar_range(bars[b]['bar'], bars[e]['bar'])}: {words}",
                          "start_s": float(bars[b]["start_s"]), "end_s": float(bars[e]["end_s"]),
                          "severity": severity})
            b = e + 1
    flags.sort(key=lambda f: (f["bar"], f["kind"]))
    return flags


def observation(flags: list[dict[str, Any]], bars: list[dict[str, Any]] | None = None) -> str:
    """The single thing most worth practising, in one sentence ("" when nothing stands out)."""
    if not flags:
        return ""
    weight: dict[str, float] = {}
    for f in flags:
        weight[f["dimension"]] = weight.get(f["dimension"], 0.0) + PRIORITY.get(f["kind"], 0.5) * f["severity"]
    dim = max(weight, key=weight.get)
    mine = sorted((f for f in flags if f["dimension"] == dim),
                  key=lambda f: -PRIORITY.get(f["kind"], 0.5) * f["severity"])
    worst = mine[0]
    more = len(mine) - 1
    tail = f" ({more} more place{'s' if more != 1 else ''} for it)" if more else ""
    return f"{dim.replace('_', ' ').capitalize()}: {worst['reason']}{tail}."


# --- the model's share, and recordings without a score ----------------------------------------------
def add_model_to_bars(bars: list[dict[str, Any]], *, curve: np.ndarray, curve_hop_s: float,
                      starts: np.ndarray, ends: np.ndarray, scores: np.ndarray, duration_s: float) -> None:
    """Fill each bar's `attention` (its share of the attention curve over its share of the time; 1 =
    average) and `window_scores` (per dimension, the windows over the bar weighted by overlap)."""
    curve = np.asarray(curve, np.float64)
    edges = np.arange(len(curve) + 1) * curve_hop_s
    for bar in bars:
        a, b = max(0.0, bar["start_s"]), min(duration_s, bar["end_s"])
        if b <= a or not len(curve):
            continue
        overlap = np.clip(np.minimum(edges[1:], b) - np.maximum(edges[:-1], a), 0.0, None) / curve_hop_s
        mass = float((curve * overlap).sum())
        bar["attention"] = mass / max((b - a) / max(duration_s, 1e-9), 1e-9)
        w = np.clip(np.minimum(ends, b) - np.maximum(starts, a), 0.0, None)
        if w.sum() > 0:
            bar["window_scores"] = (w @ scores / w.sum()).astype(np.float32).tolist()


TIME_FLAG_POINTS = 12.0            # a stretch this many points below the recording's own score
TIME_FLAG_SIGMAS = 1.5             # ... and this many of the windows' own sigma below it


def _clock(t: float) -> str:
    return f"{int(t // 60)}:{int(t % 60):02d}"


def time_flags(starts: np.ndarray, ends: np.ndarray, scores: np.ndarray, sigma: np.ndarray,
               overall: np.ndarray, names: Sequence[str], low_confidence: Sequence[bool]) -> list[dict[str, Any]]:
    """Without a score: stretches whose per-window scores fall well below the recording's own (the model's
    view, in time ranges), per confident dimension, consecutive windows merged."""
    out: list[dict[str, Any]] = []
    for d, name in enumerate(names):
        if low_confidence[d] or len(starts) < 3:
            continue
        gap = overall[d] - scores[:, d]
        low = (gap >= TIME_FLAG_POINTS) & (gap >= TIME_FLAG_SIGMAS * sigma[:, d])
        k = 0
        while k < len(low):
            if not low[k]:
                k += 1
                continue
            e = k
            while e + 1 < len(low) and low[e + 1]:
                e += 1
            worst = float(gap[k:e + 1].max())
            out.append({"start_s": float(starts[k]), "end_s": float(ends[e]), "dimension": name,
                        "severity": worst, "reason": f"{_clock(starts[k])}-{_clock(ends[e])}: {name.replace('_', ' ')} "
                                  f"{worst:.0f} points below this recording's {overall[d]:.0f}"})
            k = e + 1
    out.sort(key=lambda f: (f["start_s"], f["dimension"]))
    return out


def time_observation(flags: list[dict[str, Any]]) -> str:
    if not flags:
        return ""
    worst = max(flags, key=lambda f: f["severity"])
    return f"Listen back to {worst['reason']}."   # the model's view: no score to name bars
