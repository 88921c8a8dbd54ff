"""Segmentation of a recording into overlapping time windows, and of its notes into those windows.

`windows` cuts [0, duration) into windows of `window_s` seconds advancing by `window_s * (1 - overlap)`;
the last window is shifted back so that it ends exactly at the recording's end (it then overlaps its
predecessor by at least `overlap`), and a recording no longer than one window gives a single window
(0, duration). `segment_alignment` assigns each alignment token to every window whose span holds its
performed (or, for missed notes, estimated) onset, and names the score bars each window covers;
`segment_performance` does the same over performed notes when there is no score.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from pipelines.constants import TRAIN_WINDOW_S, WINDOW_OVERLAP
from pipelines.io.notes import EXTRA, Performance, Score

WINDOW_EPS_S = 1e-9          # tolerance when deciding whether another window is needed


@dataclasses.dataclass
class Segment:
    """One window of a recording and the notes whose onsets fall inside it."""
    index: int
    start_s: float
    end_s: float
    token_mask: np.ndarray    # bool [n_tokens] (alignment tokens, or performed notes without a score)
    bar_start: int = -1       # first score bar covered (0-based); -1 without a score
    bar_end: int = -1         # last score bar covered (inclusive); -1 without a score

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def n_tokens(self) -> int:
        return int(self.token_mask.sum())


def windows(duration_s: float, window_s: float = TRAIN_WINDOW_S,
            overlap: float = WINDOW_OVERLAP) -> list[tuple[float, float]]:
    """(start_s, end_s) windows covering [0, duration_s], consecutive ones sharing >= `overlap` of a window.

    hop = window_s * (1 - overlap); starts are 0, hop, 2 hop, ... and the last window is
    (duration_s - window_s, duration_s). A recording of at most `window_s` gives [(0, duration_s)].
    """
    if window_s <= 0:
        raise ValueError(f"window length must be positive, got {window_s}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if duration_s < 0 or not math.isfinite(duration_s):
        raise ValueError(f"duration must be a finite non-negative number, got {duration_s}")
    if duration_s <= window_s + WINDOW_EPS_S:
        return [(0.0, float(duration_s))]
    hop = window_s * (1.0 - overlap)
    n = int(math.ceil((duration_s - window_s) / hop - WINDOW_EPS_S)) + 1
    starts = [k * hop for k in range(n - 1)] + [duration_s - window_s]
    return [(float(s), float(s + window_s)) for s in starts]


def onset_masks(onsets_s: np.ndarray, spans: list[tuple[float, float]]) -> list[np.ndarray]:
    """bool [n] per window: onsets in [start, end). Onsets before 0 go to the first window and onsets at
    or after the recording's end to the last, so every onset lies in at least one window."""
    onsets_s = np.asarray(onsets_s, dtype=np.float64)
    masks = []
    for k, (start, end) in enumerate(spans):
        lo = -np.inf if k == 0 else start
        hi = np.inf if k == len(spans) - 1 else end
        masks.append((onsets_s >= lo) & (onsets_s < hi))
    return masks


def segment_alignment(alignment, score: Score, duration_s: float, window_s: float = TRAIN_WINDOW_S,
                      overlap: float = WINDOW_OVERLAP) -> list[Segment]:
    """Windows of an aligned performance with their tokens and the score bars they cover.

    bar_start / bar_end are the lowest / highest score bar of the window's score tokens (matched or
    missed); a window without any is placed by the alignment's local tempo at its span.
    """
    spans = windows(duration_s, window_s, overlap)
    tokens = alignment.tokens
    segments = []
    for k, ((start, end), mask) in enumerate(zip(spans, onset_masks(tokens["perf_onset_s"], spans))):
        bar_start, bar_end = _bars_of_window(tokens[mask & (tokens["kind"] != EXTRA)], score, alignment,
                                             start, end)
        segments.append(Segment(k, start, end, mask, bar_start, bar_end))
    return segments


def _bars_of_window(score_tokens: np.ndarray, score: Score, alignment, start_s: float,
                    end_s: float) -> tuple[int, int]:
    if len(score_tokens):
        return int(score_tokens["bar"].min()), int(score_tokens["bar"].max())
    tempo = getattr(alignment, "tempo", None)
    if tempo is None or score.n_bars == 0:
        return -1, -1
    beats = tempo.beat_at(np.array([start_s, end_s]))
    bars = np.clip(np.searchsorted(score.bar_starts_beat, beats + 1e-9, side="right") - 1, 0, score.n_bars - 1)
    return int(bars[0]), int(bars[1])


def segment_performance(perf: Performance, duration_s: float, window_s: float = TRAIN_WINDOW_S,
                        overlap: float = WINDOW_OVERLAP) -> list[Segment]:
    """Windows of a score-less recording; `token_mask` selects performed notes, bars are -1."""
    spans = windows(duration_s, window_s, overlap)
    masks = onset_masks(perf.notes["onset_s"], spans)
    return [Segment(k, start, end, mask) for k, ((start, end), mask) in enumerate(zip(spans, masks))]
