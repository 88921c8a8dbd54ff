"""Per-token performance attributes: shape and ranges, known timing deviations, pedal states, grace notes."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from benchmarks.bench_alignment import (
    PerformanceStyle,
    score_from_rows,
)
from pipelines.constants import CC_SOFT, CC_SUSTAIN, N_PERF_ATTRS, PERF_ATTR_NAMES
from pipelines.features.align import align, score_note_array
from pipelines.features.attributes import ATTR_INDEX, note_attributes
from pipelines.io.notes import MATCHED, MISSED, PEDAL_DTYPE, Performance, make_perf_notes
from tests.pipelines.features.conftest import generated

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


# --- attributes of generated performances ----------------------------------------------------------
def attributes_of(sp):
    al = align(sp.score, sp.perf)
    return al, note_attributes(sp.score, sp.perf, al)


def test_attributes_shape_order_and_ranges():
    sp = generated(6, PerformanceStyle(pedal="bar"), errors=(3, 3, 3))
    al, attrs = attributes_of(sp)
    assert attrs.shape == (al.n_tokens, N_PERF_ATTRS) and attrs.dtype == np.float32
    assert list(ATTR_INDEX) == list(PERF_ATTR_NAMES)
    one_hot = attrs[:, [ATTR_INDEX[k] for k in ("played", "missed", "extra")]]
    np.testing.assert_array_equal(one_hot.sum(1), 1)
    np.testing.assert_array_equal(one_hot.argmax(1), al.tokens["kind"])
    assert np.all((attrs[:, ATTR_INDEX["velocity"]] >= 0) & (attrs[:, ATTR_INDEX["velocity"]] <= 1))
    for name, bound in (("onset_dev", 2), ("log_ioi_ratio", 2), ("log_duration_ratio", 3)):
        assert np.all(np.abs(attrs[:, ATTR_INDEX[name]]) <= bound)
    missed = al.tokens["kind"] == MISSED
    assert np.all(attrs[missed][:, [ATTR_INDEX[k] for k in ("velocity", "onset_dev", "log_ioi_ratio",
                                                              "log_duration_ratio")]] == 0)
    for name in ("sustain", "soft", "sostenuto"):
        assert set(np.unique(attrs[:, ATTR_INDEX[name]])) <= {0.0, 1.0}
    assert attrs[:, ATTR_INDEX["sustain"]].mean() > 0.5      # the "bar" pedal is down most of the time
    matched = al.tokens["kind"] == MATCHED
    np.testing.assert_allclose(attrs[matched, ATTR_INDEX["velocity"]] * 127,
                               sp.perf.notes["velocity"][al.tokens["perf_index"][matched]], atol=1e-3)


def test_timing_attributes_measure_known_deviations():
    style = PerformanceStyle(rubato=0.0, jitter_s=0.0, chord_spread_s=0.0, articulation=0.5, articulation_jitter=0.0)
    sp = generated(7, style)
    late = int(np.flatnonzero(sp.score.notes["onset_beat"] == 17.0)[0])   # delay one note by 0.1 beat
    p = int(np.flatnonzero(sp.perf_score_index == late)[0])
    spb = 60.0 / style.qpm
    sp.perf.notes["onset_s"][p] += 0.1 * spb
    sp.perf.notes["offset_s"][p] += 0.1 * spb
    al, attrs = attributes_of(sp)
    row = int(np.flatnonzero(al.tokens["score_index"] == late)[0])
    assert attrs[row, ATTR_INDEX["onset_dev"]] == pytest.approx(0.1, abs=0.02)
    others = (al.tokens["kind"] == MATCHED) & (al.tokens["score_index"] != late)
    assert np.median(np.abs(attrs[others, ATTR_INDEX["onset_dev"]])) < 0.01
    np.testing.assert_allclose(np.median(attrs[others, ATTR_INDEX["log_duration_ratio"]]), np.log(0.5), atol=0.03)
    assert np.median(np.abs(attrs[others, ATTR_INDEX["log_ioi_ratio"]])) < 0.02


def test_pedal_columns_follow_the_controllers():
    sp = generated(8)
    t0 = sp.perf.notes["onset_s"][10] - 0.01
    pedal = np.array([(t0, CC_SUSTAIN, 127), (t0, CC_SOFT, 100)], dtype=PEDAL_DTYPE)
    perf = dataclasses.replace(sp.perf, pedal=pedal)
    al = align(sp.score, perf)
    attrs = note_attributes(sp.score, perf, al)
    after = al.tokens["perf_onset_s"] >= t0
    np.testing.assert_array_equal(attrs[:, ATTR_INDEX["sustain"]], after)
    np.testing.assert_array_equal(attrs[:, ATTR_INDEX["soft"]], after)
    assert not attrs[:, ATTR_INDEX["sostenuto"]].any()



# --- grace notes -----------------------------------------------------------------------------------
def test_grace_notes_are_matched_and_left_out_of_tempo_and_durations():
    rows = [(float(b), 1.0, p, 1) for b, p in enumerate([60, 62, 64, 65, 67, 69, 71, 72])]
    rows += [(2.0, 0.0, 66, 1), (5.0, 0.0, 70, 1)]      # grace notes: written duration 0, on the main beat
    score = score_from_rows(rows, n_bars=2, qpm=60.0)
    grace = score.notes["duration_beat"] == 0
    onset = score.notes["onset_beat"] + 1.0 - 0.08 * grace      # played 80 ms ahead of their beat
    offset = onset + np.where(grace, 0.06, 0.9)
    perf = Performance(make_perf_notes(onset, offset, score.notes["pitch"], [64] * len(onset)),
                       np.zeros(0, PEDAL_DTYPE))
    assert score_note_array(score)["is_grace"].sum() == 2
    al = align(score, perf)
    assert (al.n_matched, al.n_missed, al.n_extra) == (10, 0, 0)
    attrs = note_attributes(score, perf, al)
    is_grace_token = grace[al.tokens["score_index"]]
    np.testing.assert_allclose(attrs[~is_grace_token, ATTR_INDEX["onset_dev"]], 0.0, atol=1e-3)
    np.testing.assert_allclose(attrs[is_grace_token, ATTR_INDEX["onset_dev"]], -0.08, atol=1e-3)
    assert np.all(attrs[is_grace_token, ATTR_INDEX["log_duration_ratio"]] == 0.0)
