"""Shared helpers of the demo-corpus tests: a tiny written piece, its score, the technical dimensions."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.demo_corpus.pieces import build_score
from pipelines.features.pseudo_labels import TECHNICAL_DIMENSIONS

TECHNICAL = list(TECHNICAL_DIMENSIONS)


def tiny_arrays(n_bars: int = 4) -> dict[str, np.ndarray]:
    """n_bars of 4/4: a quarter-note melody over half-note chords."""
    onset, dur, pitch, voice = [], [], [], []
    for bar in range(n_bars):
        for beat in range(4):
            onset.append(bar * 4 + beat), dur.append(1.0), pitch.append(72 + (bar + beat) % 5), voice.append(1)
        for half in (0, 2):
            for p in (48, 55, 64):
                onset.append(bar * 4 + half), dur.append(2.0), pitch.append(p), voice.append(2)
    n = len(onset)
    return {"onset_q": np.array(onset, float), "duration_q": np.array(dur), "pitch": np.array(pitch),
            "voice": np.array(voice), "velocity": np.full(n, 64), "bar_start_q": np.arange(n_bars) * 4.0,
            "bar_len_q": np.full(n_bars, 4.0), "ts_num": np.full(n_bars, 4), "ts_den": np.full(n_bars, 4)}


@pytest.fixture(scope="module")
def score():
    return build_score(tiny_arrays(), 0, 4, 100.0)


def one_line(exc: BaseException) -> bool:
    return "\n" not in str(exc) and len(str(exc)) > 10
