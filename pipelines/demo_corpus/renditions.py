"""Correct performances of a written score: the clean takes, and the base that deviations act on.

Take 0 of every piece is clean: for K265 the human performance itself (`human_rendition`); for the
others a *natural rendition* of the score (`natural_rendition`): phrase-level rubato and final
ritardandi, dynamic arches, downbeat accents, melody voicing and lead, slight legato, legato pedalling
(a change every `pedal_beats` quarters, `pedal_change_beats`), with small seeded variation
(`_expression_params`), so expressive but correct playing is clean. `beat_time_map` maps score
quarters to performed seconds; `onset_groups` and `top_of_chord` find chords by their written onset.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from pipelines import constants as C
from pipelines.demo_corpus.pieces import CorpusGenerationError, score_end_beat
from pipelines.io.notes import PEDAL_DTYPE, PERF_NOTE_DTYPE, Score

LEAD_IN_S = 0.5                         # silence before the first note of a natural rendition
PHRASE_BARS = 4                         # bars per phrase for rubato and dynamic arches
TIME_GRID_BEATS = 1.0 / 48.0            # resolution of the beat -> seconds map, quarter notes
MIN_NOTE_S = 0.03                       # shortest sounding note
PEDAL_PRESS_DELAY_S = 0.09              # legato pedalling: re-press after the change's attack
PEDAL_RELEASE_DELAY_S = 0.03            # ... and release just after it
FINAL_PEDAL_HOLD_S = 0.4                # last release after the end of the excerpt


@dataclasses.dataclass
class Rendition:
    """A correct performance of a score, the base that deviations act on.

    notes: PERF_NOTE_DTYPE [n] sorted by onset; score_index: i8 [n], the score note each performed note
    plays (-1 for a note the score lacks); pedal: PEDAL_DTYPE [m] sorted by time.
    """
    notes: np.ndarray
    score_index: np.ndarray
    pedal: np.ndarray


def _sort_rendition(notes: np.ndarray, score_index: np.ndarray, pedal: np.ndarray) -> Rendition:
    order = np.lexsort((notes["pitch"], notes["onset_s"]))
    pedal = pedal[np.argsort(pedal["time_s"], kind="stable")]
    return Rendition(notes=notes[order], score_index=score_index[order].astype(np.int64), pedal=pedal)


def _expression_params(seed: int) -> dict[str, float]:
    rng = np.random.default_rng([seed, 7])
    return {"tempo_factor": rng.uniform(0.95, 1.05), "rubato": rng.uniform(0.02, 0.05),
            "ritardando": rng.uniform(0.06, 0.12), "arch": rng.uniform(6.0, 12.0),
            "accent": rng.uniform(3.0, 6.0), "melody": rng.uniform(8.0, 14.0),
            "melody_lead_s": rng.uniform(0.005, 0.015), "legato": rng.uniform(0.88, 0.96)}


def _phrase_position(beats: np.ndarray, phrase_starts: np.ndarray) -> np.ndarray:
    """Position in [0, 1) of each beat within its phrase."""
    idx = np.clip(np.searchsorted(phrase_starts, beats, side="right") - 1, 0, len(phrase_starts) - 2)
    span = phrase_starts[idx + 1] - phrase_starts[idx]
    return np.clip((beats - phrase_starts[idx]) / span, 0.0, 1.0 - 1e-9)


def _phrase_starts(score: Score) -> np.ndarray:
    end = score_end_beat(score)
    starts = score.bar_starts_beat[::PHRASE_BARS]
    return np.append(starts, max(end, starts[-1] + 1e-3))


def beat_time_map(score: Score, expression_seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """Score quarters -> performed seconds with phrase rubato (faster mid-phrase, ritardando at its end)."""
    p = _expression_params(expression_seed)
    phrases = _phrase_starts(score)
    grid = np.arange(0.0, score_end_beat(score) + 16.0, TIME_GRID_BEATS)
    x = _phrase_position(grid, phrases)
    rate = 1.0 + p["rubato"] * np.sin(np.pi * x) - p["ritardando"] * np.clip((x - 0.75) / 0.25, 0, 1) ** 2
    sec_per_beat = 60.0 / (score.tempo_qpm * p["tempo_factor"] * rate)
    times = LEAD_IN_S + np.concatenate([[0.0], np.cumsum(sec_per_beat[:-1] * TIME_GRID_BEATS)])
    return lambda beats: np.interp(beats, grid, times)


def onset_groups(beats: np.ndarray) -> np.ndarray:
    """Group index per note: notes with the same score onset share one (NaN beats get their own)."""
    keys = np.where(np.isnan(beats), np.arange(len(beats)) + 1e9, np.round(beats, 6))
    _, inverse = np.unique(keys, return_inverse=True)
    return inverse


def top_of_chord(pitch: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """True for the highest note of each onset group that has two or more notes."""
    top = np.zeros(len(pitch), dtype=bool)
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        if len(members) >= 2:
            top[members[np.argmax(pitch[members])]] = True
    return top


def pedal_change_beats(score: Score, pedal_beats: float | None) -> np.ndarray:
    """Score quarters at which the sustain pedal changes: every bar start, and every `pedal_beats` within."""
    end = score_end_beat(score)
    bounds = np.append(score.bar_starts_beat, end)
    changes = []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        step = pedal_beats if pedal_beats else stop - start
        changes.extend(np.arange(start, stop - 1e-6, step))
    return np.asarray(changes + [end])


def written_pedal(score: Score, pedal_beats: float | None) -> np.ndarray:
    """f8 [k, 2]: the pedal marks ('Ped.' at each change, '*' at the next) that `natural_rendition` follows."""
    changes = pedal_change_beats(score, pedal_beats)
    return np.stack([changes[:-1], changes[1:]], axis=1).astype(np.float64)


def natural_rendition(score: Score, expression_seed: int = 0, pedal_beats: float | None = None) -> Rendition:
    """A correct, expressive performance of `score`: rubato, dynamic arches, accents, voicing, pedalling.

    Deterministic for (score, expression_seed). Times in seconds from a LEAD_IN_S lead-in.
    """
    if not len(score.notes):
        raise CorpusGenerationError("cannot render a score without notes")
    p = _expression_params(expression_seed)
    rng = np.random.default_rng([expression_seed, 11])
    sn = score.notes
    to_time = beat_time_map(score, expression_seed)
    groups = onset_groups(sn["onset_beat"].astype(float))
    top = top_of_chord(sn["pitch"], groups)
    onset = to_time(sn["onset_beat"]) + rng.normal(0.0, 0.004, len(sn)) - p["melody_lead_s"] * top
    offset = to_time(sn["onset_beat"] + sn["duration_beat"] * p["legato"])
    offset = np.maximum(offset, onset + MIN_NOTE_S)
    x = _phrase_position(sn["onset_beat"], _phrase_starts(score))
    velocity = (sn["velocity"] + p["arch"] * (np.sin(np.pi * x) - 0.5) + p["accent"] * (sn["position_beat"] == 0)
                + p["melody"] * top + 3.0 * (sn["voice"] == 1) + rng.normal(0.0, 2.5, len(sn)))
    notes = np.zeros(len(sn), dtype=PERF_NOTE_DTYPE)
    notes["onset_s"], notes["offset_s"], notes["pitch"] = np.maximum(onset, 0.0), offset, sn["pitch"]
    notes["velocity"] = np.clip(np.round(velocity), 20, 115)
    changes = to_time(pedal_change_beats(score, pedal_beats))
    press = changes[:-1] + PEDAL_PRESS_DELAY_S
    release = np.append(changes[1:-1] + PEDAL_RELEASE_DELAY_S, max(changes[-1], offset.max()) + FINAL_PEDAL_HOLD_S)
    pedal = np.zeros(2 * len(press), dtype=PEDAL_DTYPE)
    pedal["time_s"] = np.stack([press, release], axis=1).ravel()
    pedal["controller"] = C.CC_SUSTAIN
    pedal["value"] = np.tile([127, 0], len(press))
    return _sort_rendition(notes, np.arange(len(sn)), pedal)


def human_rendition(arrays: dict[str, np.ndarray], first: int, last: int, score: Score) -> Rendition:
    """The recorded performance cut to bars [first, last) of the excerpt `score` (from `build_score`).

    Nothing is invented: notes the recording adds stay (score_index -1), unplayed score notes stay
    unplayed; pedal events after the cut are dropped and the pedals released.
    """
    origin = arrays["bar_start_q"][first]
    end_q = arrays["bar_start_q"][last - 1] + arrays["bar_len_q"][last - 1]
    onset_q = arrays["onset_q"]
    in_excerpt = (onset_q >= origin - 1e-9) & (onset_q < end_q - 1e-9)
    excerpt_key = {(round(float(b), 6), int(p)): i
                   for i, (b, p) in enumerate(zip(score.notes["onset_beat"], score.notes["pitch"]))}
    position = {i: excerpt_key.get((round(float(onset_q[i] - origin), 6), int(arrays["pitch"][i])), -1)
                for i in np.flatnonzero(in_excerpt)}
    ps = arrays["perf_score_index"]
    matched_in = np.array([i >= 0 and bool(in_excerpt[i]) for i in ps])
    after = np.array([i >= 0 and onset_q[i] >= end_q - 1e-9 for i in ps])
    cut_s = float(arrays["perf_onset_s"][after].min()) if after.any() else float("inf")
    keep = matched_in | ((ps < 0) & (arrays["perf_onset_s"] < cut_s))
    notes = np.zeros(int(keep.sum()), dtype=PERF_NOTE_DTYPE)
    notes["onset_s"] = arrays["perf_onset_s"][keep]
    notes["offset_s"] = np.minimum(arrays["perf_offset_s"][keep], cut_s)
    notes["pitch"] = arrays["perf_pitch"][keep]
    notes["velocity"] = arrays["perf_velocity"][keep]
    score_index = np.array([position.get(int(i), -1) if i >= 0 else -1 for i in ps[keep]])
    ped_keep = arrays["pedal_time_s"] < cut_s
    pedal = np.zeros(int(ped_keep.sum()), dtype=PEDAL_DTYPE)
    pedal["time_s"] = arrays["pedal_time_s"][ped_keep]
    pedal["controller"] = arrays["pedal_controller"][ped_keep]
    pedal["value"] = arrays["pedal_value"][ped_keep]
    if np.isfinite(cut_s):
        release = np.zeros(3, dtype=PEDAL_DTYPE)
        release["time_s"] = notes["offset_s"].max() + FINAL_PEDAL_HOLD_S
        release["controller"] = (C.CC_SUSTAIN, C.CC_SOSTENUTO, C.CC_SOFT)
        pedal = np.concatenate([pedal, release])
    return _sort_rendition(notes, score_index, pedal)
