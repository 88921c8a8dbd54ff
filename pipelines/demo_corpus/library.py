"""Takes whose errors are known bar by bar, for the demo's library and the per-bar feedback tests.

`inserted_errors` starts from a correct rendition (every performed note knows the written note it plays)
and makes exact, local changes: written notes left out, written notes struck a semitone off, and one bar
played slower (its onsets stretched about its downbeat, everything after shifted, so the bars around keep
their tempo). It returns the new performance and the truth: bar number -> the kinds of error in it, named
as the per-bar feedback names them (missed, wrong, dragging).
"""
from __future__ import annotations

import numpy as np

from pipelines.demo_corpus.renditions import Rendition
from pipelines.io.notes import Performance, Score


def _isolated(score: Score, i: int, reach_beats: float = 1.0) -> bool:
    """Written note i has no other note of its pitch (or a semitone either side) within reach_beats."""
    sn = score.notes
    near = (np.abs(sn["onset_beat"] - sn["onset_beat"][i]) <= reach_beats) & (np.abs(sn["pitch"].astype(int)
                                                                                    - int(sn["pitch"][i])) <= 1)
    return int(near.sum()) == 1


def _pick(score: Score, bar: int, k: int, taken: set[int]) -> list[int]:
    """Up to k written notes of `bar` that stand alone in pitch (a clear error), longest first."""
    sn = score.notes
    cands = [i for i in np.flatnonzero(sn["bar"] == bar) if i not in taken and _isolated(score, int(i))]
    cands.sort(key=lambda i: -float(sn["duration_beat"][i]))
    return [int(i) for i in cands[:k]]


def inserted_errors(score: Score, base: Rendition, *, missed_bars: list[int], wrong_bars: list[int],
                    dragged_bar: int | None = None, drag_factor: float = 1.35,
                    missed_per_bar: int = 2) -> tuple[Performance, dict[int, list[str]]]:
    """The rendition with errors in the given (0-based) bars; returns (performance, {bar number: kinds}).

    Bars where no written note stands alone in pitch get no error (and no truth entry)."""
    notes, pedal = base.notes.copy(), base.pedal.copy()
    index = base.score_index
    truth: dict[int, list[str]] = {}
    taken: set[int] = set()
    keep = np.ones(len(notes), bool)
    for bar in missed_bars:
        chosen = _pick(score, bar, missed_per_bar, taken)
        for i in chosen:
            keep[index == i] = False
            taken.add(i)
        if chosen:
            truth.setdefault(bar + 1, []).append("missed")
    for bar in wrong_bars:
        chosen = _pick(score, bar, 1, taken)
        for i in chosen:
            notes["pitch"][index == i] += 1 if score.notes["pitch"][i] < 100 else -1
            taken.add(i)
        if chosen:
            truth.setdefault(bar + 1, []).append("wrong")
    if dragged_bar is not None and 0 < dragged_bar < score.n_bars - 1:
        first = np.flatnonzero(np.isin(index, np.flatnonzero(score.notes["bar"] == dragged_bar)))
        after = np.flatnonzero(np.isin(index, np.flatnonzero(score.notes["bar"] == dragged_bar + 1)))
        if len(first) and len(after):
            a = float(notes["onset_s"][first].min()) - 1e-3
            b = float(notes["onset_s"][after].min()) - 1e-3
            for t in (notes["onset_s"], notes["offset_s"], pedal["time_s"]):
                inside, later = (t > a) & (t <= b), t > b
                t[inside] = a + (t[inside] - a) * drag_factor
                t[later] += (b - a) * (drag_factor - 1.0)
            truth.setdefault(dragged_bar + 1, []).append("dragging")
    notes = notes[keep]
    order = np.lexsort((notes["pitch"], notes["onset_s"]))
    return Performance(notes=notes[order], pedal=pedal[np.argsort(pedal["time_s"], kind="stable")]), truth


def demo_error_bars(n_bars: int) -> dict[str, object]:
    """Where the demo's take with errors has them: missed notes near a third of the way in, a wrong note
    near the middle, a dragged bar near two thirds (bars apart, none first or last)."""
    if n_bars < 6:
        return {"missed_bars": [1], "wrong_bars": [max(1, n_bars - 2)], "dragged_bar": None}
    return {"missed_bars": [n_bars // 3], "wrong_bars": [n_bars // 2], "dragged_bar": (2 * n_bars) // 3 + 1}
