"""Baselines: the mean baseline has R^2 0 on its training data, the uniform one stays in the label
range, the ridge baseline recovers a linear relation and clips; simple audio features by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines import constants as C
from pipelines.evaluation import baselines as B
from pipelines.evaluation import metrics as E

# --- baselines -------------------------------------------------------------------------------------

def test_mean_baseline_has_zero_r2_on_its_training_data(labels_with_gaps):
    y_train, _ = labels_with_gaps(n=100, d=3)
    pred = B.mean_baseline(y_train, len(y_train))
    assert pred.shape == (100, 3)
    result = E.evaluate(y_train, pred)
    for d in range(3):
        assert result["per_dimension"][f"dim_{d}"]["r2"] == pytest.approx(0.0, abs=1e-12)
        assert math.isnan(result["per_dimension"][f"dim_{d}"]["pearson"])   # constant prediction


def test_uniform_random_baseline_stays_in_the_training_range_and_is_seeded(rng):
    y_train = np.column_stack([rng.uniform(30, 60, 50), rng.uniform(70, 75, 50), np.full(50, np.nan)])
    pred = B.uniform_random_baseline(y_train, 1000, seed=3)
    assert pred.shape == (1000, 3)
    for d in range(2):
        lo, hi = np.nanmin(y_train[:, d]), np.nanmax(y_train[:, d])
        assert lo <= pred[:, d].min() and pred[:, d].max() <= hi
        # uniform over [lo, hi]: 1000 draws reach within 1 % of both ends (fails with p ~ 1e-4)
        assert pred[:, d].min() < lo + 0.01 * (hi - lo) and pred[:, d].max() > hi - 0.01 * (hi - lo)
        assert pred[:, d].mean() == pytest.approx((lo + hi) / 2, abs=0.05 * (hi - lo))
    assert np.all(np.isnan(pred[:, 2]))
    np.testing.assert_array_equal(pred, B.uniform_random_baseline(y_train, 1000, seed=3))
    assert not np.array_equal(pred[:, :2], B.uniform_random_baseline(y_train, 1000, seed=4)[:, :2])


def test_linear_baseline_recovers_a_linear_relation(rng):
    X = rng.normal(size=(300, 4))
    Y = np.column_stack([50 + 8 * X[:, 0] - 5 * X[:, 2], 40 + 10 * X[:, 1]])
    Y_missing = Y.copy()
    Y_missing[rng.random(Y.shape) < 0.3] = np.nan                  # fit per dimension on labelled rows
    model = B.LinearFeatureBaseline(alpha=1e-3).fit(X, Y_missing)
    X_test = rng.normal(size=(50, 4))
    Y_test = np.column_stack([50 + 8 * X_test[:, 0] - 5 * X_test[:, 2], 40 + 10 * X_test[:, 1]])
    np.testing.assert_allclose(model.predict(X_test), Y_test, atol=0.05)


def test_linear_baseline_handles_dimensions_with_few_labels_and_bad_input(rng):
    X = rng.normal(size=(20, 3))
    one_label = np.full(20, np.nan)
    one_label[7] = 42.0
    Y = np.column_stack([rng.uniform(0, 100, 20), np.full(20, np.nan), one_label])
    pred = B.LinearFeatureBaseline().fit(X, Y).predict(X)
    assert pred.shape == (20, 3) and np.all(np.isnan(pred[:, 1]))
    np.testing.assert_array_equal(pred[:, 2], 42.0)                 # fewer than 2 labels: their mean
    with pytest.raises(ValueError, match="NaN or inf"):
        B.LinearFeatureBaseline().fit(np.full((20, 3), np.nan), Y)
    with pytest.raises(ValueError, match="features"):
        B.LinearFeatureBaseline().fit(X, Y).predict(X[:, :2])
    with pytest.raises(RuntimeError, match="before fit"):
        B.LinearFeatureBaseline().predict(X)


def test_linear_baseline_clips_to_the_score_range_only_when_asked():
    X = np.linspace(0.0, 1.0, 11)[:, None]
    Y = 20.0 + 70.0 * X                                           # 20 .. 90 score points
    X_far = np.array([[-1.0], [2.0]])                              # extrapolates to -50 and 160
    np.testing.assert_allclose(B.LinearFeatureBaseline(alpha=1e-9).fit(X, Y).predict(X_far), [[0.0], [100.0]])
    unclipped = B.LinearFeatureBaseline(alpha=1e-9, clip=False).fit(X, Y).predict(X_far)
    np.testing.assert_allclose(unclipped, [[-50.0], [160.0]], atol=1e-4)


# --- simple audio features -------------------------------------------------------------------------

def _log_cqt_with_notes(onset_frames: list[int], n_frames: int, bin_index: int) -> np.ndarray:
    """A log-magnitude CQT [n_frames, 168]: a quiet floor and decaying notes at one bin."""
    mag = np.full((n_frames, C.CQT_N_BINS), 1e-3)
    for onset in onset_frames:
        decay = np.exp(-np.arange(n_frames - onset) / 10.0)
        mag[onset:, bin_index] += decay
    return np.log(mag + C.CQT_LOG_EPS)


def test_simple_audio_features_shape_and_meaning():
    frames_per_s = C.CQT_FRAMES_PER_S
    n_frames = int(4 * frames_per_s)                               # 4 s
    onsets = list(range(10, n_frames - 5, int(frames_per_s / 2)))   # 2 notes per second
    low = B.simple_audio_features(_log_cqt_with_notes(onsets, n_frames, bin_index=24))
    high = B.simple_audio_features(_log_cqt_with_notes(onsets, n_frames, bin_index=120))
    names = B.SIMPLE_FEATURE_NAMES
    assert low.shape == (len(names),) and np.all(np.isfinite(low))
    idx = {name: i for i, name in enumerate(names)}
    assert high[idx["centroid_mean"]] > low[idx["centroid_mean"]]     # higher notes, higher centroid
    assert low[idx["onset_rate_hz"]] == pytest.approx(len(onsets) / 4.0, rel=0.1)
    sparse = B.simple_audio_features(_log_cqt_with_notes(onsets[::2], n_frames, bin_index=24))
    assert sparse[idx["onset_rate_hz"]] < low[idx["onset_rate_hz"]]


def test_simple_audio_features_edge_cases():
    silent = np.full((1, C.CQT_N_BINS), np.log(C.CQT_LOG_EPS))
    feats = B.simple_audio_features(silent)
    # one flat frame: uniform weights over the bins, so the centroid is the middle bin and the spread
    # the std of a discrete uniform over B bins, sqrt((B^2 - 1) / 12) bins; no onsets, no variation
    n_bins, bins_per_octave = C.CQT_N_BINS, C.CQT_BINS_PER_OCTAVE
    floor = np.log(C.CQT_LOG_EPS)
    expected = [floor, 0.0, floor, 0.0, 0.0, (n_bins - 1) / 2 / bins_per_octave, 0.0,
                math.sqrt((n_bins ** 2 - 1) / 12) / bins_per_octave, 0.0, 0.0, 0.0]
    np.testing.assert_allclose(feats, expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="frames, bins"):
        B.simple_audio_features(np.zeros(168))
    with pytest.raises(ValueError, match="NaN or inf"):
        B.simple_audio_features(np.full((2, 168), np.nan))


def test_simple_audio_features_of_two_flat_frames_by_hand():
    a, b = -3.0, 1.0                                               # log-magnitudes of the two frames
    cqt = np.array([np.full(C.CQT_N_BINS, a), np.full(C.CQT_N_BINS, b)])
    feats = dict(zip(B.SIMPLE_FEATURE_NAMES, B.simple_audio_features(cqt)))
    rise = b - a
    assert feats["log_mag_mean"] == pytest.approx((a + b) / 2) and feats["log_mag_std"] == pytest.approx(rise / 2)
    assert feats["loudness_mean"] == pytest.approx((a + b) / 2) and feats["loudness_std"] == pytest.approx(rise / 2)
    assert feats["loudness_range"] == pytest.approx(0.9 * rise)    # 95th - 5th percentile of two points
    assert feats["centroid_std"] == pytest.approx(0.0, abs=1e-12)  # both frames flat: same centroid
    assert feats["onset_strength_mean"] == pytest.approx(rise) and feats["onset_strength_std"] == 0.0
    assert feats["onset_rate_hz"] == 0.0                           # under 3 strength values: no peaks


# --- gradient boosting and performance features ------------------------------------------------------

def test_gradient_boosting_baseline_learns_a_nonlinear_relation_ridge_cannot(rng):
    X = rng.uniform(-1, 1, (400, 3))
    y = np.column_stack([50 + 40 * np.sign(X[:, 0]) * X[:, 1], np.full(400, np.nan)])
    y[:10, 1] = 60.0                                       # too few labels: the label mean
    train, test = slice(0, 300), slice(300, 400)
    gbm = B.GradientBoostingFeatureBaseline().fit(X[train], y[train]).predict(X[test])
    ridge = B.LinearFeatureBaseline().fit(X[train], y[train]).predict(X[test])
    assert E.r2(y[test, 0], gbm[:, 0]) > 0.7 > E.r2(y[test, 0], ridge[:, 0]) + 0.5
    assert np.all(gbm[:, 1] == 60.0) and np.all((gbm >= 0) & (gbm <= 100))


def _performance(notes, pedal=()):
    from pipelines.io.notes import PEDAL_DTYPE, PERF_NOTE_DTYPE, Performance

    return Performance(np.array(notes, dtype=PERF_NOTE_DTYPE), np.array(list(pedal), dtype=PEDAL_DTYPE))


def test_gradient_boosting_rank_shares_correlated_dimensions_and_is_off_where_it_cannot_fit(rng):
    """Twelve dimensions that are two underlying qualities plus rating noise: projecting the trees' predictions
    on two components recovers the qualities better than twelve separate sets of trees."""
    n, dims = 400, 12
    X = rng.normal(size=(n, 8))
    qualities = np.stack([np.tanh(X[:, 0] + X[:, 1] ** 2 / 2), np.sin(X[:, 2]) * X[:, 3]], axis=1)   # [n, 2]
    truth = 50 + 10 * qualities @ rng.normal(size=(2, dims))                                          # [n, 12]
    Y = truth + rng.normal(scale=8.0, size=truth.shape)                                               # noisy ratings
    train, test = slice(0, 300), slice(300, n)
    separate = B.GradientBoostingFeatureBaseline().fit(X[train], Y[train])
    joint = B.GradientBoostingFeatureBaseline(rank=2).fit(X[train], Y[train])
    assert separate.projection is None and joint.projection is not None
    error = {name: float(np.mean((m.predict(X[test]) - truth[test]) ** 2)) for name, m in
             (("separate", separate), ("joint", joint))}
    assert error["joint"] < 0.8 * error["separate"], error
    assert np.all((joint.predict(X[test]) >= E.SCORE_MIN) & (joint.predict(X[test]) <= E.SCORE_MAX))
    # trees pickled before the option (no projection attribute) predict as they did
    del separate.projection
    assert separate.predict(X[test]).shape == (100, dims)
    # no projection where it cannot be fitted: rank >= dimensions, too few fully labelled rows
    assert B.GradientBoostingFeatureBaseline(rank=dims).fit(X[train], Y[train]).projection is None
    gappy = Y[train].copy()
    gappy[np.arange(300) % 20 != 0, 0] = np.nan                          # 15 rows carry every label
    assert B.GradientBoostingFeatureBaseline(rank=2).fit(X[train], gappy).projection is None


def test_performance_features_by_hand():
    features = dict(zip(B.PERFORMANCE_FEATURE_NAMES, B.performance_features(_performance(
        [(0.0, 0.5, 60, 40), (0.0, 0.5, 72, 80), (1.0, 1.5, 62, 60), (2.0, 2.5, 64, 60)],
        [(0.0, 64, 127), (1.0, 64, 0)]))))
    assert len(B.PERFORMANCE_FEATURE_NAMES) == 13
    assert features["velocity_mean"] == pytest.approx(60.0)
    assert features["note_density"] == pytest.approx(4 / 2.5)
    assert features["duration_mean"] == pytest.approx(0.5) and features["duration_cv"] == pytest.approx(0.0)
    assert features["legato_ratio"] == pytest.approx(0.5)               # half of each 1 s gap is held
    assert features["pedal_share"] == pytest.approx(1.0 / 2.5)
    assert features["pedal_changes"] == pytest.approx(1 / 2.5)
    assert features["ioi_cv"] == pytest.approx(0.0)                     # steady onsets
    assert features["melody_velocity_gap"] == pytest.approx(40.0)       # the top of the chord 40 louder
    assert features["tempo_ratio"] == features["duration_ratio"] == 1.0  # no score
    assert np.all(B.performance_features(_performance([])) == 0)


def test_performance_features_against_the_score_see_tempo_and_articulation():
    from pipelines.io.notes import SCORE_NOTE_DTYPE, Score

    written = np.zeros(3, dtype=SCORE_NOTE_DTYPE)
    written["onset_s"], written["duration_s"], written["pitch"] = [0.0, 1.0, 2.0], [1.0, 1.0, 1.0], [60, 62, 64]
    score = Score(written, np.array([0.0]))
    slow_staccato = _performance([(0.0, 0.4, 60, 64), (2.0, 2.4, 62, 64), (4.0, 4.4, 64, 64)])
    features = dict(zip(B.PERFORMANCE_FEATURE_NAMES, B.performance_features(slow_staccato, score)))
    assert features["tempo_ratio"] == pytest.approx(4.4 / 3.0)
    assert features["duration_ratio"] == pytest.approx(0.4 / (1.0 * 4.4 / 3.0))
