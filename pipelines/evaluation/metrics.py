"""Metrics of score predictions per dimension, calibration, and the report formats (JSON, Markdown).

Plain numpy / scipy, so the scorer, the training loop and `jobs/evaluate.py` can all call it without
Ray. Plots live in `pipelines.evaluation.plots`, baselines in `pipelines.evaluation.baselines`.

Inputs, for N performances (or segments) and D dimensions, on the 0-100 score scale:
- `y_true` [N, D]: labels; NaN where a dimension has no label for a row.
- `y_pred` [N, D]: predictions.
- `sigma`  [N, D]: predicted standard deviation (Gaussian), or None when the model gives none.
- `groups` [N]:    piece / passage ids; ranking pairs are formed only within a group.

Each metric of a dimension uses the rows where both the label and the prediction are finite (and,
for ECE and sharpness, sigma too). A metric that is undefined (fewer than 2 rows, constant input,
no valid pairs) is NaN, never an exception or a warning. `evaluate`'s result holds plain Python
numbers (NaN included, which `json.dumps` writes as `NaN`); `to_json` writes strict JSON (NaN -> null).

Metrics (keys of the result):
- `pearson`, `spearman`, `kendall` (tau-b): correlation of prediction with label.
- `mae`, `rmse`: absolute / root-mean-square error in score points.
- `r2`: 1 - SS_res / SS_tot (undefined when the labels are constant).
- `ra@A`: range accuracy, fraction of rows with |pred - true| <= A score points.
- `pairwise_accuracy`: pairwise ranking accuracy. Over pairs (i, j) in the same group with
  |true_i - true_j| > `rank_margin`, the fraction with sign(pred_i - pred_j) = sign(true_i - true_j);
  a tied prediction counts one half.
- `ece`: expected calibration error of the central Gaussian prediction intervals. For each level p
  of a grid (default 0.05, 0.10, ..., 0.95), the interval pred +- z_p * sigma with
  z_p = Phi^-1((1 + p) / 2) should hold the label in a fraction p of the rows; with observed
  coverage c(p), ECE = mean over the grid of |c(p) - p|. 0 is perfect, the maximum is about 0.5.
- `sharpness`: mean predicted sigma (score points) over the evaluated rows; smaller is sharper,
  and only meaningful beside a small ECE.
The result's `mean` averages each metric over the dimensions where it is defined.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

DEFAULT_ALPHAS: tuple[float, ...] = (5.0, 10.0)                 # range-accuracy tolerances, score points
DEFAULT_RANK_MARGIN = 1.0                                         # score points a pair must differ by
DEFAULT_COVERAGE_LEVELS: tuple[float, ...] = tuple(np.round(np.arange(1, 20) * 0.05, 2))  # 0.05 .. 0.95
SCORE_MIN, SCORE_MAX = 0.0, 100.0

CORRELATION_METRICS = ("pearson", "spearman", "kendall")
ERROR_METRICS = ("mae", "rmse", "r2")
CALIBRATION_METRICS = ("ece", "sharpness")

Array = np.ndarray


# --- input handling ----------------------------------------------------------------------------

def as_matrix(values: Any, name: str) -> Array:
    """A float64 [N, D] copy of `values`; a 1-D array becomes one column [N, 1]."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"{name} must be [N] or [N, D], got shape {array.shape}")
    return array


def check_same_shape(reference: Array, other: Array, name: str) -> None:
    """Raise ValueError unless `other` has the shape of `reference` (y_true)."""
    if other.shape != reference.shape:
        raise ValueError(f"{name} has shape {other.shape}, expected {reference.shape} like y_true")


def dimension_names(names: Sequence[str] | None, n_dims: int) -> list[str]:
    """`names` as strings, checked for length and repeats; dim_0, dim_1, ... when None."""
    if names is None:
        return [f"dim_{d}" for d in range(n_dims)]
    names = [str(n) for n in names]
    if len(names) != n_dims:
        raise ValueError(f"got {len(names)} dimension names for {n_dims} dimensions")
    if len(set(names)) != len(names):
        raise ValueError("dimension names repeat")
    return names


def finite_pairs(y_true: Array, y_pred: Array, *others: Array | None) -> tuple[Array, ...]:
    """Entries of 1-D arrays where every given array is finite: (t [n], p [n], *others [n])."""
    arrays = [np.asarray(a, dtype=np.float64) for a in (y_true, y_pred, *[o for o in others if o is not None])]
    mask = np.logical_and.reduce([np.isfinite(a) for a in arrays])
    return tuple(a[mask] for a in arrays)


def _is_constant(x: Array) -> bool:
    return x.size == 0 or bool(np.all(x == x[0]))


# --- point metrics (1-D, already masked) -------------------------------------------------------

def pearson(y_true: Array, y_pred: Array) -> float:
    """Pearson correlation of two 1-D arrays [n]; NaN for n < 2 or constant input."""
    t, p = finite_pairs(y_true, y_pred)
    if t.size < 2 or _is_constant(t) or _is_constant(p):
        return math.nan
    tc, pc = t - t.mean(), p - p.mean()
    r = float(np.dot(tc, pc) / math.sqrt(float(np.dot(tc, tc)) * float(np.dot(pc, pc))))
    return float(np.clip(r, -1.0, 1.0))


def spearman(y_true: Array, y_pred: Array) -> float:
    """Spearman rank correlation [n]: Pearson on average ranks; NaN for n < 2 or constant input."""
    t, p = finite_pairs(y_true, y_pred)
    if t.size < 2 or _is_constant(t) or _is_constant(p):
        return math.nan
    return pearson(stats.rankdata(t), stats.rankdata(p))


def kendall(y_true: Array, y_pred: Array) -> float:
    """Kendall tau-b [n] (ties handled, O(n log n) via scipy); NaN for n < 2 or constant input."""
    t, p = finite_pairs(y_true, y_pred)
    if t.size < 2 or _is_constant(t) or _is_constant(p):
        return math.nan
    return float(stats.kendalltau(t, p).statistic)


def mae(y_true: Array, y_pred: Array) -> float:
    """Mean absolute error [n] in score points; NaN when empty."""
    t, p = finite_pairs(y_true, y_pred)
    return float(np.mean(np.abs(p - t))) if t.size else math.nan


def rmse(y_true: Array, y_pred: Array) -> float:
    """Root-mean-square error [n] in score points; NaN when empty."""
    t, p = finite_pairs(y_true, y_pred)
    return float(math.sqrt(np.mean((p - t) ** 2))) if t.size else math.nan


def r2(y_true: Array, y_pred: Array) -> float:
    """Coefficient of determination 1 - SS_res/SS_tot [n]; NaN for n < 2 or constant labels."""
    t, p = finite_pairs(y_true, y_pred)
    if t.size < 2 or _is_constant(t):
        return math.nan
    ss_res = float(np.sum((t - p) ** 2))
    ss_tot = float(np.sum((t - t.mean()) ** 2))
    return 1.0 - ss_res / ss_tot


def range_accuracy(y_true: Array, y_pred: Array, alpha: float) -> float:
    """Fraction of rows [n] with |pred - true| <= alpha score points; NaN when empty."""
    t, p = finite_pairs(y_true, y_pred)
    return float(np.mean(np.abs(p - t) <= alpha)) if t.size else math.nan


# --- ranking -----------------------------------------------------------------------------------

def _group_indices(groups: Array | None, n: int) -> list[Array]:
    """Row indices of each group with at least 2 rows; `None` puts every row in one group."""
    if groups is None:
        return [np.arange(n)] if n >= 2 else []
    keys = np.asarray(groups).astype(str)
    if keys.shape != (n,):
        raise ValueError(f"groups must have shape ({n},), got {keys.shape}")
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    splits = np.split(order, np.cumsum(counts)[:-1])
    return [idx for idx in splits if idx.size >= 2]


def _pair_scores(t: Array, p: Array, margin: float) -> tuple[float, int]:
    """(sum of pair credits, number of pairs) over all pairs of one group with |dt| > margin."""
    i, j = np.triu_indices(t.size, k=1)
    dt, dp = t[i] - t[j], p[i] - p[j]
    keep = np.abs(dt) > margin
    dt, dp = dt[keep], dp[keep]
    credit = np.where(dp == 0.0, 0.5, (np.sign(dt) == np.sign(dp)).astype(np.float64))
    return float(credit.sum()), int(keep.sum())


def pairwise_ranking(y_true: Array, y_pred: Array, groups: Array | None = None,
                     margin: float = DEFAULT_RANK_MARGIN) -> tuple[float, int]:
    """Pairwise ranking accuracy of one dimension and its number of pairs.

    y_true, y_pred: [N] (NaN rows are skipped); groups: [N] ids or None (all rows one group).
    Pairs are taken within each group, where the labels differ by more than `margin`; a pair is
    correct when the prediction orders it the same way, and a tied prediction counts 0.5.
    Memory is O(m^2) for a group of m rows. Returns (accuracy, n_pairs); NaN when n_pairs is 0.
    """
    t = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    valid = np.isfinite(t) & np.isfinite(p)
    credit, n_pairs = 0.0, 0
    for idx in _group_indices(groups, t.size):
        idx = idx[valid[idx]]
        if idx.size >= 2:
            c, k = _pair_scores(t[idx], p[idx], margin)
            credit, n_pairs = credit + c, n_pairs + k
    return (credit / n_pairs if n_pairs else math.nan), n_pairs


# --- calibration -------------------------------------------------------------------------------

def interval_coverage(y_true: Array, y_pred: Array, sigma: Array,
                      levels: Sequence[float] = DEFAULT_COVERAGE_LEVELS) -> Array:
    """Observed coverage of central Gaussian intervals, one value per level.

    y_true, y_pred, sigma: [n] (non-finite rows skipped); levels: [L] in (0, 1).
    coverage[l] = fraction of rows with |true - pred| <= z_l * sigma, z_l = Phi^-1((1 + level_l) / 2).
    Returns [L]; all NaN when no row is left.
    """
    t, p, s = finite_pairs(y_true, y_pred, sigma)
    levels_arr = np.asarray(levels, dtype=np.float64)
    if np.any((levels_arr <= 0) | (levels_arr >= 1)):
        raise ValueError(f"coverage levels must lie in (0, 1), got {levels_arr.tolist()}")
    if t.size == 0:
        return np.full(levels_arr.shape, math.nan)
    z = stats.norm.ppf((1.0 + levels_arr) / 2.0)                       # [L]
    inside = np.abs(t - p)[None, :] <= z[:, None] * np.maximum(s, 0.0)[None, :]   # [L, n]
    return inside.mean(axis=1)


def expected_calibration_error(y_true: Array, y_pred: Array, sigma: Array,
                               levels: Sequence[float] = DEFAULT_COVERAGE_LEVELS) -> float:
    """ECE = mean over levels p of |observed coverage(p) - p| (see the module docstring); NaN if empty."""
    coverage = interval_coverage(y_true, y_pred, sigma, levels)
    if np.all(np.isnan(coverage)):
        return math.nan
    return float(np.mean(np.abs(coverage - np.asarray(levels, dtype=np.float64))))


def sharpness(y_true: Array, y_pred: Array, sigma: Array) -> float:
    """Mean predicted sigma [n] over the rows with a finite label, prediction and sigma; NaN if none."""
    _, _, s = finite_pairs(y_true, y_pred, sigma)
    return float(np.mean(s)) if s.size else math.nan


# --- the whole suite ---------------------------------------------------------------------------

def alpha_key(alpha: float) -> str:
    """Result key of range accuracy at `alpha` score points, e.g. 'ra@5'."""
    return f"ra@{alpha:g}"


def dimension_metrics(y_true: Array, y_pred: Array, sigma: Array | None, groups: Array | None,
                      alphas: Sequence[float] = DEFAULT_ALPHAS, rank_margin: float = DEFAULT_RANK_MARGIN,
                      levels: Sequence[float] = DEFAULT_COVERAGE_LEVELS) -> dict[str, float]:
    """Every metric of one dimension from 1-D arrays [N]; NaN where undefined.

    Includes the counts `n` (rows with a finite label and prediction) and `n_pairs` (ranking pairs).
    Calibration metrics are present only when `sigma` is given.
    """
    t, p = finite_pairs(y_true, y_pred)
    out: dict[str, float] = {"n": int(t.size)}
    out.update(pearson=pearson(t, p), spearman=spearman(t, p), kendall=kendall(t, p),
               mae=mae(t, p), rmse=rmse(t, p), r2=r2(t, p))
    for alpha in alphas:
        out[alpha_key(alpha)] = range_accuracy(t, p, alpha)
    out["pairwise_accuracy"], out["n_pairs"] = pairwise_ranking(y_true, y_pred, groups, rank_margin)
    if sigma is not None:
        out["ece"] = expected_calibration_error(y_true, y_pred, sigma, levels)
        out["sharpness"] = sharpness(y_true, y_pred, sigma)
    return out


def _plain_number(value: float | int) -> float | int:
    """A Python int or float (NaN kept) from a numpy or Python number."""
    return int(value) if isinstance(value, (int, np.integer)) else float(value)


def _mean_over_dimensions(per_dim: dict[str, dict[str, float]]) -> dict[str, float]:
    """Average of each metric over the dimensions where it is defined (counts are summed); NaN if none."""
    metrics = next(iter(per_dim.values())).keys()
    out: dict[str, float] = {}
    for metric in metrics:
        values = np.array([per_dim[d][metric] for d in per_dim], dtype=np.float64)
        if metric in ("n", "n_pairs"):
            out[metric] = int(values.sum())
            continue
        finite = values[np.isfinite(values)]
        out[metric] = float(finite.mean()) if finite.size else math.nan
    return out


def evaluate(y_true: Any, y_pred: Any, sigma: Any | None = None, groups: Any | None = None,
             names: Sequence[str] | None = None, *, alphas: Sequence[float] = DEFAULT_ALPHAS,
             rank_margin: float = DEFAULT_RANK_MARGIN,
             levels: Sequence[float] = DEFAULT_COVERAGE_LEVELS) -> dict[str, Any]:
    """The evaluation suite over every dimension.

    y_true [N, D] (NaN = no label), y_pred [N, D], sigma [N, D] or None, groups [N] or None (one
    group), names [D] or None (dim_0, ...). 1-D inputs are one dimension.
    Returns a dict of plain Python values (undefined metrics are NaN; `to_json` for strict JSON):
      {"per_dimension": {name: {metric: value}}, "mean": {metric: value}, "n": N,
       "dimensions": [names], "settings": {"alphas", "rank_margin", "coverage_levels"}}
    where `mean` averages over dimensions and sums the counts `n` and `n_pairs`.
    """
    t = as_matrix(y_true, "y_true")
    p = as_matrix(y_pred, "y_pred")
    check_same_shape(t, p, "y_pred")
    s = None
    if sigma is not None:
        s = as_matrix(sigma, "sigma")
        check_same_shape(t, s, "sigma")
    dim_names = dimension_names(names, t.shape[1])
    group_ids = None if groups is None else np.asarray(groups)
    per_dim = {
        name: dimension_metrics(t[:, d], p[:, d], None if s is None else s[:, d], group_ids,
                                alphas, rank_margin, levels)
        for d, name in enumerate(dim_names)
    }
    return {
        "per_dimension": {name: {k: _plain_number(v) for k, v in m.items()} for name, m in per_dim.items()},
        "mean": _mean_over_dimensions(per_dim),
        "n": int(t.shape[0]),
        "dimensions": dim_names,
        "settings": {"alphas": [float(a) for a in alphas], "rank_margin": float(rank_margin),
                     "coverage_levels": [float(x) for x in levels]},
    }


def _strict(value: Any) -> Any:
    """A copy of nested dicts/lists with non-finite floats replaced by None."""
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_json(result: dict[str, Any], indent: int | None = 2) -> str:
    """Strict JSON text of `evaluate`'s result: NaN (undefined metrics) becomes null."""
    return json.dumps(_strict(result), indent=indent, allow_nan=False)


def _format_value(metric: str, value: float | int | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if metric in ("n", "n_pairs"):
        return str(int(value))
    if metric in ("mae", "rmse", "sharpness"):
        return f"{value:.2f}"
    return f"{value:.3f}"


def format_table(result: dict[str, Any]) -> str:
    """A Markdown table of `evaluate`'s result: one row per dimension, then the mean row."""
    per_dim = result["per_dimension"]
    metrics = [m for m in result["mean"] if m not in ("n", "n_pairs")] + ["n", "n_pairs"]
    lines = ["| dimension | " + " | ".join(metrics) + " |",
             "| --- | " + " | ".join("---:" for _ in metrics) + " |"]
    rows = [(name, per_dim[name]) for name in per_dim] + [("**mean**", result["mean"])]
    for name, values in rows:
        cells = [_format_value(m, values.get(m)) for m in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
