"""Evaluation suite: each metric against scipy / scikit-learn, ranking and ECE on constructed cases
with hand-computed answers, undefined cases as NaN without warnings, plots, baselines."""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from pipelines import constants as C
from pipelines.evaluation import metrics as E


def _labels_with_gaps(rng: np.random.Generator, n: int = 200, d: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Correlated labels/predictions [n, d] on 0-100, about 20 % of labels missing (NaN)."""
    y_true = rng.uniform(20, 90, size=(n, d))
    y_pred = np.clip(y_true + rng.normal(0, 12, size=(n, d)), 0, 100)
    y_true[rng.random((n, d)) < 0.2] = np.nan
    return y_true, y_pred


# --- point metrics against references -------------------------------------------------------------

def test_metrics_match_scipy_and_sklearn_with_nans_masked(rng):
    y_true, y_pred = _labels_with_gaps(rng)
    result = E.evaluate(y_true, y_pred, names=["a", "b", "c"])
    for d, name in enumerate(["a", "b", "c"]):
        mask = ~np.isnan(y_true[:, d])
        t, p = y_true[mask, d], y_pred[mask, d]
        got = result["per_dimension"][name]
        assert got["n"] == mask.sum()
        assert got["pearson"] == pytest.approx(stats.pearsonr(t, p).statistic, abs=1e-12)
        assert got["spearman"] == pytest.approx(stats.spearmanr(t, p).statistic, abs=1e-12)
        assert got["kendall"] == pytest.approx(stats.kendalltau(t, p).statistic, abs=1e-12)
        assert got["mae"] == pytest.approx(mean_absolute_error(t, p), rel=1e-12)
        assert got["rmse"] == pytest.approx(math.sqrt(mean_squared_error(t, p)), rel=1e-12)
        assert got["r2"] == pytest.approx(r2_score(t, p), rel=1e-12)
        assert got["ra@5"] == pytest.approx(np.mean(np.abs(p - t) <= 5))
        assert got["ra@10"] == pytest.approx(np.mean(np.abs(p - t) <= 10))


def test_rank_correlations_with_ties_match_scipy(rng):
    t = rng.integers(0, 5, size=60).astype(float) * 20          # heavy ties
    p = t + rng.integers(-1, 2, size=60) * 20.0
    assert E.spearman(t, p) == pytest.approx(stats.spearmanr(t, p).statistic, abs=1e-12)
    assert E.kendall(t, p) == pytest.approx(stats.kendalltau(t, p, variant="b").statistic, abs=1e-12)


def test_mean_row_averages_defined_dimensions_and_sums_counts(rng):
    y_true, y_pred = _labels_with_gaps(rng, n=50, d=2)
    y_true[:, 1] = 70.0                                           # constant labels: r, r2 undefined
    result = E.evaluate(y_true, y_pred)
    per = result["per_dimension"]
    assert math.isnan(per["dim_1"]["pearson"]) and math.isnan(per["dim_1"]["r2"])
    assert result["mean"]["pearson"] == pytest.approx(per["dim_0"]["pearson"])
    assert result["mean"]["mae"] == pytest.approx((per["dim_0"]["mae"] + per["dim_1"]["mae"]) / 2)
    assert result["mean"]["n"] == per["dim_0"]["n"] + per["dim_1"]["n"]
    assert result["n"] == 50
    assert all(isinstance(v, (int, float)) for v in result["mean"].values())   # formattable, e.g. :.3f
    assert "pairwise_accuracy" in result["mean"] and "n_pairs" in result["mean"]


def test_range_accuracy_counts_the_boundary():
    t = np.array([50.0, 50.0, 50.0, 50.0])
    p = np.array([50.0, 55.0, 55.5, 40.0])
    assert E.range_accuracy(t, p, 5) == pytest.approx(0.5)
    assert E.range_accuracy(t, p, 10) == pytest.approx(1.0)


# --- undefined metrics: NaN, no crash, no warnings -------------------------------------------------

@pytest.mark.parametrize("t, p", [
    (np.array([]), np.array([])),
    (np.array([40.0]), np.array([41.0])),
    (np.array([40.0, 40.0, 40.0]), np.array([1.0, 2.0, 3.0])),   # constant labels
    (np.array([1.0, 2.0, 3.0]), np.array([40.0, 40.0, 40.0])),   # constant predictions
    (np.array([np.nan, np.nan]), np.array([1.0, 2.0])),
])
def test_undefined_metrics_are_nan_without_warnings(t, p):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for fn in (E.pearson, E.spearman, E.kendall):
            assert math.isnan(fn(t, p))
        if t.size < 2 or np.all(np.isnan(t)) or np.all(t == t[0]):
            assert math.isnan(E.r2(t, p))
        acc, n_pairs = E.pairwise_ranking(t, p, None)
        assert n_pairs == 0 or not math.isnan(acc)


def test_evaluate_with_an_empty_dimension_gives_nan_and_strict_json():
    y_true = np.array([[10.0, np.nan], [20.0, np.nan], [30.0, np.nan]])
    y_pred = np.array([[12.0, 50.0], [18.0, 50.0], [33.0, 50.0]])
    sigma = np.full_like(y_pred, 5.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = E.evaluate(y_true, y_pred, sigma, groups=["x", "x", "y"], names=["ok", "empty"])
    empty = result["per_dimension"]["empty"]
    assert empty["n"] == 0 and all(math.isnan(empty[m]) for m in ("mae", "pearson", "ece", "sharpness"))
    json.dumps(result)                                            # plain Python numbers
    strict = json.loads(E.to_json(result))                        # strict JSON: NaN became null
    assert strict["per_dimension"]["empty"]["mae"] is None
    assert strict["per_dimension"]["ok"]["mae"] == pytest.approx(result["per_dimension"]["ok"]["mae"])
    assert result["mean"]["mae"] == pytest.approx(result["per_dimension"]["ok"]["mae"])


def test_evaluate_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        E.evaluate(np.zeros((4, 2)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="names"):
        E.evaluate(np.zeros((4, 2)), np.zeros((4, 2)), names=["only_one"])


# --- pairwise ranking ------------------------------------------------------------------------------

def test_pairwise_ranking_on_a_constructed_case():
    # group a: true 10, 20, 30 -> pairs (10,20) (10,30) (20,30); prediction swaps 20 and 30 -> 2 of 3
    # group b: true 50, 50.5 (within margin 1: no pair), 70 -> pairs (50,70) (50.5,70), both right
    # group c: a single row, no pairs; a NaN label drops one row of group b's would-be pairs
    t = np.array([10, 20, 30, 50, 50.5, 70, 40, np.nan])
    p = np.array([1, 9, 8, 60, 40, 80, 0, 100.0])
    g = np.array(["a", "a", "a", "b", "b", "b", "c", "b"])
    acc, n_pairs = E.pairwise_ranking(t, p, g, margin=1.0)
    assert n_pairs == 5
    assert acc == pytest.approx(4 / 5)


def test_pairwise_ranking_ties_count_half_and_groups_none_is_one_group():
    t = np.array([10.0, 20.0, 30.0])
    p = np.array([5.0, 5.0, 6.0])          # (10,20) tied -> 0.5; (10,30), (20,30) right
    acc, n_pairs = E.pairwise_ranking(t, p, None)
    assert n_pairs == 3 and acc == pytest.approx(2.5 / 3)
    # across groups nothing pairs up
    acc, n_pairs = E.pairwise_ranking(t, p, np.array([1, 2, 3]))
    assert n_pairs == 0 and math.isnan(acc)


# --- calibration -----------------------------------------------------------------------------------

def test_ece_on_a_tiny_case_by_hand():
    # |residual| / sigma = 0.5, 1, 2, 3. Levels 0.5 and 0.9: z = 0.6745 and 1.6449.
    # coverage(0.5) = 1/4, coverage(0.9) = 2/4 -> ECE = (|0.25 - 0.5| + |0.5 - 0.9|) / 2 = 0.325
    t = np.zeros(4)
    p = np.array([0.5, -1.0, 2.0, -3.0]) * 4.0
    s = np.full(4, 4.0)
    np.testing.assert_allclose(E.interval_coverage(t, p, s, levels=(0.5, 0.9)), [0.25, 0.5])
    assert E.expected_calibration_error(t, p, s, levels=(0.5, 0.9)) == pytest.approx(0.325)
    assert E.sharpness(t, p, s) == pytest.approx(4.0)


def test_ece_small_for_calibrated_gaussians_and_large_for_overconfident_sigma(rng):
    n = 20_000
    mu = rng.uniform(20, 80, n)
    sigma = rng.uniform(2, 10, n)
    y = mu + sigma * rng.standard_normal(n)
    assert E.expected_calibration_error(y, mu, sigma) < 0.015
    # sigma 10x too small: coverage(p) = 2 Phi(z_p / 10) - 1, far below p
    levels = np.asarray(E.DEFAULT_COVERAGE_LEVELS)
    z = stats.norm.ppf((1 + levels) / 2)
    expected = np.mean(np.abs(2 * stats.norm.cdf(z / 10) - 1 - levels))
    got = E.expected_calibration_error(y, mu, sigma / 10)
    assert expected > 0.4
    assert got == pytest.approx(expected, abs=0.01)


def test_evaluate_reports_calibration_only_with_sigma(rng):
    y_true, y_pred = _labels_with_gaps(rng, n=80, d=2)
    assert "ece" not in E.evaluate(y_true, y_pred)["mean"]
    with_sigma = E.evaluate(y_true, y_pred, np.full_like(y_pred, 12.0))
    assert 0.0 <= with_sigma["mean"]["ece"] <= 0.5
    assert with_sigma["mean"]["sharpness"] == pytest.approx(12.0)


# --- table and plots -------------------------------------------------------------------------------

def test_format_table_is_markdown_with_a_row_per_dimension_and_mean(rng):
    y_true, y_pred = _labels_with_gaps(rng, n=40, d=2)
    y_true[:, 1] = np.nan
    table = E.format_table(E.evaluate(y_true, y_pred, names=["tone", "pedaling"]))
    lines = table.strip().splitlines()
    assert lines[0].startswith("| dimension | pearson |") and lines[1].startswith("| --- |")
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["tone", "pedaling", "**mean**"]
    assert "n/a" in lines[3]
    assert all(line.count("|") == lines[0].count("|") for line in lines)


def test_plots_write_png_files(tmp_path, rng):
    y_true, y_pred = _labels_with_gaps(rng, n=60, d=5)
    sigma = np.full_like(y_pred, 10.0)
    names = [f"d{i}" for i in range(5)]
    for path in (E.reliability_diagram(y_true, y_pred, sigma, tmp_path / "rel" / "reliability.png", names),
                 E.scatter_plot(y_true, y_pred, names, tmp_path / "scatter.png", sigma=sigma)):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- baselines -------------------------------------------------------------------------------------

def test_mean_baseline_has_zero_r2_on_its_training_data(rng):
    y_train, _ = _labels_with_gaps(rng, n=100, d=3)
    pred = E.mean_baseline(y_train, len(y_train))
    assert pred.shape == (100, 3)
    result = E.evaluate(y_train, pred)
    for d in range(3):
        assert result["per_dimension"][f"dim_{d}"]["r2"] == pytest.approx(0.0, abs=1e-12)
        assert math.isnan(result["per_dimension"][f"dim_{d}"]["pearson"])   # constant prediction


def test_uniform_random_baseline_stays_in_the_training_range_and_is_seeded(rng):
    y_train = np.column_stack([rng.uniform(30, 60, 50), rng.uniform(70, 75, 50), np.full(50, np.nan)])
    pred = E.uniform_random_baseline(y_train, 1000, seed=3)
    assert pred.shape == (1000, 3)
    for d in range(2):
        assert np.nanmin(y_train[:, d]) <= pred[:, d].min() and pred[:, d].max() <= np.nanmax(y_train[:, d])
    assert np.all(np.isnan(pred[:, 2]))
    np.testing.assert_array_equal(pred, E.uniform_random_baseline(y_train, 1000, seed=3))


def test_linear_baseline_recovers_a_linear_relation(rng):
    X = rng.normal(size=(300, 4))
    Y = np.column_stack([50 + 8 * X[:, 0] - 5 * X[:, 2], 40 + 10 * X[:, 1]])
    Y_missing = Y.copy()
    Y_missing[rng.random(Y.shape) < 0.3] = np.nan                  # fit per dimension on labelled rows
    model = E.LinearFeatureBaseline(alpha=1e-3).fit(X, Y_missing)
    X_test = rng.normal(size=(50, 4))
    Y_test = np.column_stack([50 + 8 * X_test[:, 0] - 5 * X_test[:, 2], 40 + 10 * X_test[:, 1]])
    np.testing.assert_allclose(model.predict(X_test), Y_test, atol=0.05)


def test_linear_baseline_handles_a_dimension_without_labels_and_bad_input(rng):
    X = rng.normal(size=(20, 3))
    Y = np.column_stack([rng.uniform(0, 100, 20), np.full(20, np.nan)])
    pred = E.LinearFeatureBaseline().fit(X, Y).predict(X)
    assert pred.shape == (20, 2) and np.all(np.isnan(pred[:, 1])) and np.all((pred[:, 0] >= 0) & (pred[:, 0] <= 100))
    with pytest.raises(ValueError, match="NaN or inf"):
        E.LinearFeatureBaseline().fit(np.full((20, 3), np.nan), Y)
    with pytest.raises(RuntimeError, match="before fit"):
        E.LinearFeatureBaseline().predict(X)


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
    low = E.simple_audio_features(_log_cqt_with_notes(onsets, n_frames, bin_index=24))
    high = E.simple_audio_features(_log_cqt_with_notes(onsets, n_frames, bin_index=120))
    names = E.SIMPLE_FEATURE_NAMES
    assert low.shape == (len(names),) and np.all(np.isfinite(low))
    idx = {name: i for i, name in enumerate(names)}
    assert high[idx["centroid_mean"]] > low[idx["centroid_mean"]]     # higher notes, higher centroid
    assert low[idx["onset_rate_hz"]] == pytest.approx(len(onsets) / 4.0, rel=0.1)
    sparse = E.simple_audio_features(_log_cqt_with_notes(onsets[::2], n_frames, bin_index=24))
    assert sparse[idx["onset_rate_hz"]] < low[idx["onset_rate_hz"]]


def test_simple_audio_features_edge_cases():
    silent = np.full((1, C.CQT_N_BINS), np.log(C.CQT_LOG_EPS))
    feats = E.simple_audio_features(silent)
    assert np.all(np.isfinite(feats)) and feats[-1] == 0.0
    with pytest.raises(ValueError, match="frames, bins"):
        E.simple_audio_features(np.zeros(168))
