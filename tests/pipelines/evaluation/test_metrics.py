"""Metrics: each metric against scipy / scikit-learn, ranking and ECE on constructed cases with
hand-computed answers, undefined cases as NaN without warnings, the JSON and Markdown reports."""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from pipelines.evaluation import metrics as E

# --- point metrics against references -------------------------------------------------------------

def test_metrics_match_scipy_and_sklearn_with_nans_masked(labels_with_gaps):
    y_true, y_pred = labels_with_gaps()
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


def test_mean_row_averages_defined_dimensions_and_sums_counts(labels_with_gaps):
    y_true, y_pred = labels_with_gaps(n=50, d=2)
    y_true[:, 1] = 70.0                                           # constant labels: r, r2 undefined
    result = E.evaluate(y_true, y_pred)
    per = result["per_dimension"]
    assert math.isnan(per["dim_1"]["pearson"]) and math.isnan(per["dim_1"]["r2"])
    assert result["mean"]["pearson"] == pytest.approx(per["dim_0"]["pearson"])
    assert result["mean"]["mae"] == pytest.approx((per["dim_0"]["mae"] + per["dim_1"]["mae"]) / 2)
    assert result["mean"]["n"] == per["dim_0"]["n"] + per["dim_1"]["n"]
    assert result["n"] == 50
    assert all(type(v) in (int, float) for v in result["mean"].values())   # plain Python, not numpy
    assert "pairwise_accuracy" in result["mean"] and "n_pairs" in result["mean"]


def test_range_accuracy_counts_the_boundary():
    t = np.array([50.0, 50.0, 50.0, 50.0])
    p = np.array([50.0, 55.0, 55.5, 40.0])
    assert E.range_accuracy(t, p, 5) == pytest.approx(0.5)
    assert E.range_accuracy(t, p, 10) == pytest.approx(1.0)


# --- undefined metrics: NaN, no crash, no warnings -------------------------------------------------

# r2 of the constant prediction 40 for labels 1, 2, 3: 1 - (39^2 + 38^2 + 37^2) / 2 = -2166.
# Its one ranking pair is (1, 3) (|1 - 2| and |2 - 3| are not above the margin 1), a tie: 0.5.
@pytest.mark.parametrize("t, p, expected_r2, expected_pairs, expected_acc", [
    (np.array([]), np.array([]), math.nan, 0, math.nan),
    (np.array([40.0]), np.array([41.0]), math.nan, 0, math.nan),
    (np.array([40.0, 40.0, 40.0]), np.array([1.0, 2.0, 3.0]), math.nan, 0, math.nan),    # constant labels
    (np.array([1.0, 2.0, 3.0]), np.array([40.0, 40.0, 40.0]), -2166.0, 1, 0.5),         # constant predictions
    (np.array([np.nan, np.nan]), np.array([1.0, 2.0]), math.nan, 0, math.nan),
])
def test_undefined_metrics_are_nan_without_warnings(t, p, expected_r2, expected_pairs, expected_acc):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for fn in (E.pearson, E.spearman, E.kendall):
            assert math.isnan(fn(t, p))
        assert E.r2(t, p) == pytest.approx(expected_r2, nan_ok=True)
        acc, n_pairs = E.pairwise_ranking(t, p, None)
        assert n_pairs == expected_pairs
        assert acc == pytest.approx(expected_acc, nan_ok=True)


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


def test_evaluate_reports_calibration_only_with_sigma(labels_with_gaps):
    y_true, y_pred = labels_with_gaps(n=80, d=2)
    without = E.evaluate(y_true, y_pred)
    assert not {"ece", "sharpness"} & (set(without["mean"]) | set(without["per_dimension"]["dim_0"]))
    with_sigma = E.evaluate(y_true, y_pred, np.full_like(y_pred, 12.0))
    # by hand: the interval at level p holds the label when |residual| <= Phi^-1((1 + p) / 2) * 12
    levels = np.asarray(E.DEFAULT_COVERAGE_LEVELS)
    z = stats.norm.ppf((1 + levels) / 2)
    eces = []
    for d in range(2):
        mask = ~np.isnan(y_true[:, d])
        residual = np.abs(y_pred[mask, d] - y_true[mask, d])
        coverage = np.array([np.mean(residual <= zl * 12.0) for zl in z])
        eces.append(np.mean(np.abs(coverage - levels)))
        assert with_sigma["per_dimension"][f"dim_{d}"]["ece"] == pytest.approx(eces[-1], abs=1e-12)
    assert with_sigma["mean"]["ece"] == pytest.approx(np.mean(eces), abs=1e-12)
    assert with_sigma["mean"]["sharpness"] == pytest.approx(12.0)


# --- table ----------------------------------------------------------------------------------------

def test_format_table_is_markdown_with_a_row_per_dimension_and_mean(labels_with_gaps):
    y_true, y_pred = labels_with_gaps(n=40, d=2)
    y_true[:, 1] = np.nan
    table = E.format_table(E.evaluate(y_true, y_pred, names=["tone", "pedaling"]))
    lines = table.strip().splitlines()
    assert lines[0].startswith("| dimension | pearson |") and lines[1].startswith("| --- |")
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["tone", "pedaling", "**mean**"]
    assert "n/a" in lines[3]
    assert all(line.count("|") == lines[0].count("|") for line in lines)
