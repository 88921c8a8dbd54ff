"""Overlap aggregation on constructed window predictions: known weights, known sigma, one curve."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.features.segment import windows
from pipelines.scoring.aggregate import aggregate_windows, attention_curve, window_weights


def _spans(duration_s: float, window_s: float = 25.0, overlap: float = 0.5):
    spans = windows(duration_s, window_s, overlap)
    return np.array([a for a, _ in spans]), np.array([b for _, b in spans])


def test_each_instant_counts_once_and_overlaps_split_at_the_centres():
    starts, ends = _spans(100.0)                     # 7 windows, hop 12.5 s
    w = window_weights(starts, ends)
    # the first and last windows own their outer 12.5 s alone plus half of one overlap; the others
    # half of two overlaps (the tapers of two half-overlapping windows cross at the overlap's middle)
    np.testing.assert_allclose(w, [18.75, 12.5, 12.5, 12.5, 12.5, 12.5, 18.75], atol=0.05)
    assert w.sum() == pytest.approx(100.0, abs=1e-6)


def test_a_window_speaks_mostly_for_its_own_centre():
    starts, ends = _spans(100.0)
    scores = np.full((len(starts), 1), 50.0)
    scores[3, 0] = 90.0                              # one window (37.5-62.5 s) disagrees
    sigma = np.full_like(scores, 5.0)
    mean, _ = aggregate_windows(starts, ends, scores, sigma)
    # it speaks for 12.5 of the 100 s, not for its full 25 s
    assert mean[0] == pytest.approx(50.0 + 40.0 * 12.5 / 100.0, abs=0.1)


def test_sigma_combines_window_sigma_and_the_spread_between_windows():
    starts, ends = np.array([0.0, 10.0]), np.array([20.0, 30.0])     # symmetric: equal weights
    sigma = np.array([[3.0, 4.0], [3.0, 4.0]])
    same = np.array([[60.0, 20.0], [60.0, 20.0]])
    mean, sd = aggregate_windows(starts, ends, same, sigma)
    np.testing.assert_allclose(mean, [60.0, 20.0])
    np.testing.assert_allclose(sd, [3.0, 4.0], rtol=1e-9)
    apart = np.array([[50.0, 20.0], [70.0, 20.0]])
    mean, sd = aggregate_windows(starts, ends, apart, sigma)
    np.testing.assert_allclose(mean, [60.0, 20.0], atol=1e-9)
    np.testing.assert_allclose(sd, [np.sqrt(9.0 + 100.0), 4.0], rtol=1e-6)


def test_unequal_window_sigma_is_averaged_in_variance_by_weight():
    starts, ends = _spans(100.0)
    w = window_weights(starts, ends)
    sigma = np.linspace(2.0, 14.0, len(starts))[:, None]
    _, sd = aggregate_windows(starts, ends, np.full_like(sigma, 40.0), sigma)
    assert sd[0] == pytest.approx(np.sqrt(np.sum(w * sigma[:, 0] ** 2) / w.sum()))


def test_a_dimension_without_finite_predictions_stays_nan():
    starts, ends = np.array([0.0, 12.5]), np.array([25.0, 37.5])
    scores = np.array([[10.0, np.nan], [30.0, np.nan]])
    mean, sd = aggregate_windows(starts, ends, scores, np.ones_like(scores))
    assert np.isfinite(mean[0]) and np.isnan(mean[1]) and np.isnan(sd[1])


def test_single_window_recording_is_its_window():
    mean, sd = aggregate_windows([0.0], [7.0], [[42.0, 10.0]], [[5.0, 6.0]])
    np.testing.assert_allclose(mean, [42.0, 10.0])
    np.testing.assert_allclose(sd, [5.0, 6.0])


def test_bad_window_lists_are_refused():
    with pytest.raises(ValueError):
        aggregate_windows([0.0, 10.0], [20.0], [[1.0]], [[1.0]])
    with pytest.raises(ValueError):
        window_weights([5.0], [5.0])


def test_uniform_attention_gives_a_flat_curve_over_the_recording():
    starts, ends = _spans(100.0)
    times = [np.arange(0.0, 25.0, 0.04)] * len(starts)
    att = [np.full(len(t), 1.0 / len(t)) for t in times]
    bins, curve = attention_curve(starts, ends, times, att, 100.0, hop_s=1.0)
    assert len(bins) == len(curve) == 100
    assert curve.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(curve, 0.01, rtol=0.02)


def test_the_curve_peaks_where_the_windows_looked():
    starts, ends = _spans(100.0)
    times, att = [], []
    for a, b in zip(starts, ends):
        t = np.arange(0.0, 25.0, 0.04)
        if a <= 70.0 < b:                            # the windows that hear 70 s look there
            weights = np.exp(-0.5 * ((t + a - 70.0) / 0.5) ** 2)
        else:                                        # the others look everywhere alike
            weights = np.ones_like(t)
        times.append(t)
        att.append(weights / weights.sum())
    bins, curve = attention_curve(starts, ends, times, att, 100.0, hop_s=1.0)
    assert 68.0 <= bins[int(np.argmax(curve))] <= 71.0
    assert curve[68:72].sum() > 5 * curve[20:24].sum()
