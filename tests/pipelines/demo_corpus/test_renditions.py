"""Demo-corpus renditions: the natural rendition is expressive, and every expression of it is clean."""
from __future__ import annotations

import numpy as np

from model.schema import SEED10
from pipelines.demo_corpus.deviations import DeviationSpec, apply_deviations


def test_clean_take_is_expressive_and_scores_100(score):
    take = apply_deviations(score, DeviationSpec(seed=3))
    assert take.labels == {d: 100.0 for d in SEED10.names}
    assert sorted(take.notes["pitch"]) == sorted(score.notes["pitch"])
    assert take.notes["velocity"].std() > 4.0                          # dynamics shaped, not flat
    onsets = take.notes["onset_s"][np.lexsort((take.notes["pitch"], take.notes["onset_s"]))]
    beats = np.sort(score.notes["onset_beat"])
    residual = onsets - np.polyval(np.polyfit(beats, onsets, 1), beats)
    assert 0.01 < np.abs(residual).max() < 0.3                         # rubato, seconds
    assert np.any(take.pedal["value"] >= 64) and np.any(take.pedal["value"] < 64)


def test_other_expression_is_still_clean(score):
    a = apply_deviations(score, DeviationSpec(), expression_seed=1)
    b = apply_deviations(score, DeviationSpec(), expression_seed=2)
    assert not np.array_equal(a.notes, b.notes)
    assert a.labels == b.labels == {d: 100.0 for d in SEED10.names}
