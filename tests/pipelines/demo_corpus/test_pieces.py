"""Demo-corpus pieces: written scores built from whole-piece arrays, excerpts cut on bar lines."""
from __future__ import annotations

import numpy as np

from pipelines.demo_corpus.pieces import excerpt_bars
from tests.pipelines.demo_corpus.conftest import tiny_arrays


def test_build_score_fields(score):
    n = score.notes
    assert len(n) == 4 * (4 + 6) and score.n_bars == 4
    assert np.all(np.diff(n["onset_beat"]) >= 0)
    assert np.array_equal(n["bar"], (n["onset_beat"] // 4).astype(int))
    assert np.allclose(n["position_beat"], n["onset_beat"] % 4)
    assert np.allclose(n["onset_s"], n["onset_beat"] * 0.6)          # 100 qpm
    assert np.all(n["ts_num"] == 4) and np.array_equal(n["id"], np.arange(len(n)))


def test_excerpt_skips_pickup_and_fits_max_seconds():
    arrays = tiny_arrays(8)
    arrays["bar_start_q"] = np.concatenate([[0.0], arrays["bar_start_q"][1:] - 3.0])   # 1-beat pickup
    arrays["bar_len_q"][0] = 1.0
    first, last = excerpt_bars(arrays, tempo_qpm=60.0, max_seconds=10.0)
    assert first == 1 and last == 3                                   # two 4-s bars fit in 10 s
