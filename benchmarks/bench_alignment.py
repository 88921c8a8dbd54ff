"""Alignment benchmark: note-match F-score on a real human performance, error detection on synthetic ones.

Run `python -m benchmarks.bench_alignment` (or call `main()`): it prints and returns a Markdown table of
- the note-match F-score on Mozart K265 var. 1 (parangonar's example: a real human performance with its
  ground-truth alignment),
- precision / recall of missed and extra notes on generated performances of generated scores with known
  inserted errors (deleted, inserted and wrong notes), under tempo rubato, drift and onset jitter,
- alignment time per performance.

The generator of scores and error-laden performances lives here too, because the unit tests of
`pipelines.features.align`, `.attributes`, `.octuple`, `.pseudo_labels` and `.segment` build their fixtures with it.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np

from pipelines.constants import CC_SUSTAIN, PIANO_MAX_PITCH, PIANO_MIN_PITCH
from pipelines.io.notes import (
    PEDAL_DTYPE,
    PERF_NOTE_DTYPE,
    SCORE_NOTE_DTYPE,
    Performance,
    Score,
)

MAJOR_SCALE = np.array([0, 2, 4, 5, 7, 9, 11])
PROGRESSION = ((0, 4, 7), (5, 9, 12), (7, 11, 14), (0, 4, 7))   # I IV V I, semitones above the tonic
BEAT_PATTERNS = ((1.0,), (0.5, 0.5), (0.25, 0.25, 0.25, 0.25), (0.75, 0.25), (0.5, 0.25, 0.25))
MIN_PERF_DURATION_S = 0.03


# --- generated scores ------------------------------------------------------------------------------
def synthetic_score(rng: np.random.Generator, n_bars: int = 16, qpm: float = 100.0,
                    tonic: int = 60) -> Score:
    """A two-hand 4/4 piano piece: a scalar right-hand melody over an Alberti or block-chord left hand.

    Returns a Score whose notes are sorted by (onset_beat, pitch); about 12-20 notes per bar.
    """
    rows: list[tuple[float, float, int, int]] = []   # onset_beat, duration_beat, pitch, voice
    degree = 7
    for bar in range(n_bars):
        chord = np.array(PROGRESSION[bar % len(PROGRESSION)])
        for beat in range(4):
            onset = bar * 4.0 + beat
            for dur in BEAT_PATTERNS[rng.integers(len(BEAT_PATTERNS))]:
                degree = int(np.clip(degree + rng.integers(-2, 3), 3, 13))
                pitch = tonic + 12 * (degree // 7) + MAJOR_SCALE[degree % 7]
                rows.append((onset, dur, int(pitch), 1))
                onset += dur
        bass = tonic - 24 + chord
        if rng.random() < 0.6:   # Alberti bass: root, fifth, third, fifth in eighths
            for k, idx in enumerate((0, 2, 1, 2) * 2):
                rows.append((bar * 4.0 + 0.5 * k, 0.5, int(bass[idx]), 2))
        else:                    # two half-note block chords
            for half in range(2):
                rows.extend((bar * 4.0 + 2.0 * half, 2.0, int(p), 2) for p in bass)
    return score_from_rows(rows, n_bars=n_bars, qpm=qpm)


def score_from_rows(rows: list[tuple[float, float, int, int]], n_bars: int, qpm: float,
                    ts: tuple[int, int] = (4, 4)) -> Score:
    """A Score from (onset_beat, duration_beat, pitch, voice) rows in a constant time signature."""
    bar_beats = ts[0] * 4.0 / ts[1]
    notes = np.zeros(len(rows), dtype=SCORE_NOTE_DTYPE)
    onset, duration, pitch, voice = (np.array(col) for col in zip(*rows))
    notes["onset_beat"], notes["duration_beat"] = onset, duration
    notes["onset_s"], notes["duration_s"] = onset * 60.0 / qpm, duration * 60.0 / qpm
    notes["pitch"], notes["voice"], notes["velocity"] = pitch, voice, 64
    notes["bar"] = np.floor(onset / bar_beats + 1e-9).astype(int)
    notes["position_beat"] = onset - notes["bar"] * bar_beats
    notes["ts_num"], notes["ts_den"] = ts
    notes = notes[np.lexsort((notes["pitch"], notes["onset_beat"]))]
    notes["id"] = np.arange(len(notes))
    return Score(notes=notes, bar_starts_beat=np.arange(n_bars) * bar_beats, tempo_qpm=qpm)


# --- generated performances ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PerformanceStyle:
    """How a synthetic pianist plays: tempo shape, timing noise, dynamics, articulation, pedal."""
    qpm: float = 100.0
    rubato: float = 0.10             # relative amplitude of the phrase-level tempo curve
    rubato_period_beats: float = 16.0
    drift: float = 0.0               # relative tempo change from start to end (0.2 = 20 % slower)
    jitter_s: float = 0.008          # onset noise std, seconds
    chord_spread_s: float = 0.006    # asynchrony of simultaneous notes, std in seconds
    dynamics_depth: float = 18.0     # amplitude of the phrase-level velocity curve, MIDI steps
    dynamics_period_beats: float = 16.0
    velocity_jitter: float = 4.0     # note-to-note velocity noise std, MIDI steps
    melody_boost: float = 8.0        # right-hand (voice 1) velocity lead, MIDI steps
    mean_velocity: float = 62.0
    articulation: float = 0.95       # performed / written duration (at the local tempo)
    articulation_jitter: float = 0.05  # std of log duration ratio
    pedal: str = "none"              # "none", "bar" (changed at each bar line), "held" (never lifted)


@dataclasses.dataclass
class SyntheticPerformance:
    """A generated performance with its ground truth: the score note each performed note plays."""
    score: Score
    perf: Performance
    perf_score_index: np.ndarray     # i8 [n_perf]: score index, -1 for an extra (inserted) note
    tempo_map: np.ndarray            # f8 [n_grid, 2]: (beat, seconds) of the generating tempo curve

    @property
    def truth_pairs(self) -> set[tuple[int, int]]:
        """(score_index, perf_index) of every correctly played note."""
        return {(int(s), int(p)) for p, s in enumerate(self.perf_score_index) if s >= 0}

    @property
    def missed(self) -> set[int]:
        return set(range(len(self.score.notes))) - {s for s, _ in self.truth_pairs}

    @property
    def extra(self) -> set[int]:
        return {int(p) for p in np.flatnonzero(self.perf_score_index < 0)}


def tempo_map(score: Score, style: PerformanceStyle, rng: np.random.Generator,
              step_beat: float = 1.0 / 48) -> np.ndarray:
    """(beat, seconds) samples of a smooth tempo curve: rubato sine with random phase plus linear drift.

    Returns f8 [n, 2] covering the score's span plus one bar.
    """
    end_beat = float((score.notes["onset_beat"] + score.notes["duration_beat"]).max()) + 4.0
    beats = np.arange(0.0, end_beat + step_beat, step_beat)
    phase = rng.uniform(0, 2 * np.pi)
    spb = 60.0 / style.qpm * (1.0 + style.rubato * np.sin(2 * np.pi * beats / style.rubato_period_beats + phase)
                              + style.drift * beats / end_beat)
    seconds = np.concatenate([[0.0], np.cumsum(spb[:-1] * step_beat)]) + 0.5
    return np.stack([beats, seconds], axis=1)


def render_performance(score: Score, style: PerformanceStyle, rng: np.random.Generator) -> SyntheticPerformance:
    """Play every score note once with `style`'s timing, dynamics, articulation and pedal."""
    tmap = tempo_map(score, style, rng)
    at = lambda beats: np.interp(beats, tmap[:, 0], tmap[:, 1])   # noqa: E731
    sn = score.notes
    n = len(sn)
    onset = at(sn["onset_beat"]) + rng.normal(0, style.jitter_s, n) + rng.normal(0, style.chord_spread_s, n)
    written_s = at(sn["onset_beat"] + sn["duration_beat"]) - at(sn["onset_beat"])
    duration = written_s * style.articulation * np.exp(rng.normal(0, style.articulation_jitter, n))
    phrase = np.sin(2 * np.pi * sn["onset_beat"] / style.dynamics_period_beats + rng.uniform(0, 2 * np.pi))
    velocity = (style.mean_velocity + style.dynamics_depth * phrase + rng.normal(0, style.velocity_jitter, n)
                + style.melody_boost * (sn["voice"] == 1))
    notes = np.zeros(n, dtype=PERF_NOTE_DTYPE)
    notes["onset_s"] = np.maximum(onset, 0.0)
    notes["offset_s"] = notes["onset_s"] + np.maximum(duration, MIN_PERF_DURATION_S)
    notes["pitch"], notes["velocity"] = sn["pitch"], np.clip(np.round(velocity), 1, 127)
    return _sorted(score, notes, np.arange(n), _pedal_events(score, style, at), tmap)


def _pedal_events(score: Score, style: PerformanceStyle, at) -> np.ndarray:
    """Sustain pedal: lifted at each bar line and pressed again 80 ms later ("bar"), none, or always down."""
    if style.pedal == "none":
        return np.zeros(0, dtype=PEDAL_DTYPE)
    if style.pedal == "held":
        return np.array([(0.0, CC_SUSTAIN, 127)], dtype=PEDAL_DTYPE)
    bar_times = at(score.bar_starts_beat)
    events = [(t + 0.01, CC_SUSTAIN, 0) for t in bar_times[1:]] + [(t + 0.08, CC_SUSTAIN, 127) for t in bar_times]
    pedal = np.array(events, dtype=PEDAL_DTYPE)
    return pedal[np.argsort(pedal["time_s"], kind="stable")]


def _sorted(score: Score, notes: np.ndarray, score_index: np.ndarray, pedal: np.ndarray,
            tmap: np.ndarray) -> SyntheticPerformance:
    order = np.lexsort((notes["pitch"], notes["onset_s"]))
    return SyntheticPerformance(score, Performance(notes[order], pedal), score_index[order].astype(np.int64), tmap)


# --- inserted errors ---------------------------------------------------------------------------------
def add_errors(sp: SyntheticPerformance, rng: np.random.Generator, n_missed: int = 0, n_extra: int = 0,
               n_wrong: int = 0) -> SyntheticPerformance:
    """Delete `n_missed` played notes, insert `n_extra` notes, and shift `n_wrong` notes by 1-2 semitones.

    Inserted and wrong pitches avoid every score pitch within 2 beats of the note, so each error has one
    unambiguous ground truth (a wrong note counts as one missed score note plus one extra performed note).
    """
    notes, index = sp.perf.notes.copy(), sp.perf_score_index.copy()
    played = np.flatnonzero(index >= 0)
    chosen = rng.choice(played, size=n_missed + n_wrong, replace=False)
    wrong, missed = chosen[:n_wrong], chosen[n_wrong:]
    for p in wrong:
        notes["pitch"][p] = _free_pitch(sp.score, _beat_of(sp, notes["onset_s"][p]), int(notes["pitch"][p]), rng)
        index[p] = -1
    keep = np.setdiff1d(np.arange(len(notes)), missed)
    notes, index = notes[keep], index[keep]
    extra = _extra_notes(sp, rng, n_extra)
    notes = np.concatenate([notes, extra])
    index = np.concatenate([index, np.full(len(extra), -1)])
    return _sorted(sp.score, notes, index, sp.perf.pedal, sp.tempo_map)


def _beat_of(sp: SyntheticPerformance, time_s: float) -> float:
    return float(np.interp(time_s, sp.tempo_map[:, 1], sp.tempo_map[:, 0]))


def _free_pitch(score: Score, beat: float, pitch: int, rng: np.random.Generator) -> int:
    """A pitch 1-2 semitones from `pitch` (random direction first) that no score note near `beat` has."""
    near = np.abs(score.notes["onset_beat"] - beat) <= 2.0
    used = set(score.notes["pitch"][near].tolist())
    for step in rng.permutation([1, -1, 2, -2]).tolist() + [3, -3, 4, -4, 5, -5, 6, -6]:
        candidate = pitch + step
        if candidate not in used and PIANO_MIN_PITCH <= candidate <= PIANO_MAX_PITCH:
            return candidate
    raise ValueError(f"no free pitch near {pitch} at beat {beat}")


def _extra_notes(sp: SyntheticPerformance, rng: np.random.Generator, n: int) -> np.ndarray:
    """`n` inserted notes at random times inside the performance, near the local register."""
    extra = np.zeros(n, dtype=PERF_NOTE_DTYPE)
    span = sp.perf.notes["onset_s"]
    for k in range(n):
        t = rng.uniform(span.min() + 0.2, span.max() - 0.2)
        nearest = int(np.argmin(np.abs(span - t)))
        pitch = _free_pitch(sp.score, _beat_of(sp, t), int(sp.perf.notes["pitch"][nearest]), rng)
        extra[k] = (t, t + rng.uniform(0.1, 0.4), pitch, int(rng.integers(40, 90)))
    return extra


# --- benchmark ----------------------------------------------------------------------------------------
ERROR_CASES = (
    ("clean, rubato 10 %", PerformanceStyle(), (0, 0, 0)),
    ("5 missed / 5 extra / 5 wrong", PerformanceStyle(), (5, 5, 5)),
    ("15 / 15 / 15, drift 25 %, jitter 20 ms", PerformanceStyle(drift=0.25, jitter_s=0.02), (15, 15, 15)),
    ("10 / 10 / 10, rubato 25 %", PerformanceStyle(rubato=0.25), (10, 10, 10)),
    ("30 / 30 / 30, rubato 20 %, drift 40 %, jitter 30 ms",
     PerformanceStyle(rubato=0.2, drift=0.4, jitter_s=0.03), (30, 30, 30)),
)
HEADER = ["case", "perf notes", "match F1", "missed P", "missed R", "extra P", "extra R", "align s"]


def error_detection(sp: SyntheticPerformance, alignment) -> dict[str, float]:
    """Match F-score and precision/recall of detected missed and extra notes against the ground truth."""
    from pipelines.features.align import match_fscore
    from pipelines.io.notes import EXTRA, MISSED

    tokens = alignment.tokens
    found_missed = set(tokens["score_index"][tokens["kind"] == MISSED].tolist())
    found_extra = set(tokens["perf_index"][tokens["kind"] == EXTRA].tolist())
    out = {"match_f1": match_fscore(alignment.matched_pairs, sp.truth_pairs)["f1"]}
    for name, found, truth in (("missed", found_missed, sp.missed), ("extra", found_extra, sp.extra)):
        hit = len(found & truth)
        out[f"{name}_precision"] = hit / len(found) if found else float(not truth)
        out[f"{name}_recall"] = hit / len(truth) if truth else 1.0
    return out


def _timed_align(score: Score, perf: Performance, matcher: str, refine: bool = True):
    from pipelines.features.align import align

    started = time.perf_counter()
    alignment = align(score, perf, matcher=matcher, refine=refine)
    return alignment, time.perf_counter() - started


def synthetic_case(style: PerformanceStyle, errors: tuple[int, int, int], seeds: tuple[int, ...], n_bars: int,
                   matcher: str, refine: bool = True) -> dict[str, float]:
    """Mean error-detection figures and alignment time over generated pieces, one per seed."""
    rows, times, n_notes = [], [], []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        sp = add_errors(render_performance(synthetic_score(rng, n_bars=n_bars), style, rng), rng, *errors)
        alignment, elapsed = _timed_align(sp.score, sp.perf, matcher, refine)
        rows.append(error_detection(sp, alignment))
        times.append(elapsed)
        n_notes.append(len(sp.perf.notes))
    out = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    out.update(align_s=float(np.mean(times)), perf_notes=int(np.mean(n_notes)))
    return out


# (label, parangonar matcher, tempo-based refinement); the first also runs the long piece
VARIANTS = (("dualdtw + refine", "dualdtw", True), ("dualdtw", "dualdtw", False),
            ("automatic + refine", "automatic", True))


def main(seeds: tuple[int, ...] = (0, 1, 2, 3), n_bars: int = 24, long_bars: int = 200,
         variants: tuple[tuple[str, str, bool], ...] = VARIANTS) -> dict:
    """Run the benchmark; print a Markdown table and return {"markdown": ..., "rows": [...]}.

    AutomaticNoteMatcher takes about a minute on the long piece, so only the first variant runs it.
    """
    import warnings

    from benchmarks.common import markdown_table
    from pipelines.demo_corpus.k265 import k265_example
    from pipelines.features.align import match_fscore

    warnings.filterwarnings("ignore", category=RuntimeWarning)
    score, perf, truth = k265_example()
    _timed_align(score, perf, variants[0][1])                 # warm-up: imports and numba compilation
    table_rows, figures = [], []
    for k, (label, matcher, refine) in enumerate(variants):
        alignment, elapsed = _timed_align(score, perf, matcher, refine)
        f1 = match_fscore(alignment.matched_pairs, truth)["f1"]
        figures.append({"variant": label, "case": "k265", "match_f1": f1, "align_s": elapsed})
        table_rows.append([f"{label}: Mozart K265 var. 1 (human)", len(perf.notes), f"{f1:.3f}",
                           "-", "-", "-", "-", f"{elapsed:.2f}"])
        cases = [(name, style, errors, n_bars, seeds) for name, style, errors in ERROR_CASES]
        if k == 0:
            cases.append((f"{long_bars} bars, 40 / 40 / 40", PerformanceStyle(), (40, 40, 40), long_bars, seeds[:1]))
        for name, style, errors, bars, case_seeds in cases:
            r = synthetic_case(style, errors, case_seeds, bars, matcher, refine)
            figures.append({"variant": label, "case": name, **r})
            table_rows.append([f"{label}: {name} (x{len(case_seeds)})", r["perf_notes"], f"{r['match_f1']:.3f}",
                               f"{r['missed_precision']:.3f}", f"{r['missed_recall']:.3f}",
                               f"{r['extra_precision']:.3f}", f"{r['extra_recall']:.3f}", f"{r['align_s']:.2f}"])
    table = markdown_table(HEADER, table_rows)
    print(table)
    return {"markdown": table, "rows": figures}


if __name__ == "__main__":
    main()
