"""Plots of an evaluation: reliability diagram of the predicted intervals and prediction-vs-label scatters.

matplotlib with the Agg canvas and no pyplot state, so it is safe in Ray workers and threads. Inputs
follow `pipelines.evaluation.metrics`: [N, D] arrays on the 0-100 score scale, NaN where missing.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.evaluation.metrics import (
    DEFAULT_COVERAGE_LEVELS,
    SCORE_MAX,
    SCORE_MIN,
    as_matrix,
    check_same_shape,
    dimension_names,
    interval_coverage,
    pearson,
)


def _new_figure(width_in: float, height_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save_figure(fig, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def reliability_diagram(y_true: Any, y_pred: Any, sigma: Any, path: str | Path,
                        names: Sequence[str] | None = None,
                        levels: Sequence[float] = DEFAULT_COVERAGE_LEVELS) -> Path:
    """Write a PNG of observed vs nominal interval coverage: one thin line per dimension, the
    coverage pooled over all dimensions in bold, the diagonal for perfect calibration.

    y_true, y_pred, sigma: [N, D] (or [N]); path: a local file. Returns the path written.
    """
    t, p, s = as_matrix(y_true, "y_true"), as_matrix(y_pred, "y_pred"), as_matrix(sigma, "sigma")
    check_same_shape(t, p, "y_pred")
    check_same_shape(t, s, "sigma")
    dim_names = dimension_names(names, t.shape[1])
    lv = np.asarray(levels, dtype=np.float64)
    fig = _new_figure(5.5, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    eces = []
    for d, name in enumerate(dim_names):
        coverage = interval_coverage(t[:, d], p[:, d], s[:, d], lv)
        if not np.all(np.isnan(coverage)):
            eces.append(float(np.mean(np.abs(coverage - lv))))
            ax.plot(lv, coverage, linewidth=0.8, alpha=0.6, label=name if len(dim_names) <= 10 else None)
    pooled = interval_coverage(t.ravel(), p.ravel(), s.ravel(), lv)
    ax.plot(lv, pooled, color="black", linewidth=2.2, marker="o", markersize=3, label="all dimensions")
    mean_ece = f"{np.mean(eces):.3f}" if eces else "n/a"
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="nominal coverage of central interval",
           ylabel="observed coverage", title=f"Reliability (mean ECE {mean_ece})")
    ax.set_aspect("equal")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return _save_figure(fig, path)


def scatter_plot(y_true: Any, y_pred: Any, names: Sequence[str] | None, path: str | Path,
                 sigma: Any | None = None) -> Path:
    """Write a PNG grid with one prediction-vs-label scatter per dimension (0-100 axes, diagonal,
    Pearson r and n in each title; +-1 sigma bars when `sigma` is given).

    y_true, y_pred, sigma: [N, D] (or [N]); names: [D] or None; path: a local file.
    Returns the path written.
    """
    t, p = as_matrix(y_true, "y_true"), as_matrix(y_pred, "y_pred")
    check_same_shape(t, p, "y_pred")
    s = None if sigma is None else as_matrix(sigma, "sigma")
    if s is not None:
        check_same_shape(t, s, "sigma")
    dim_names = dimension_names(names, t.shape[1])
    n_cols = int(math.ceil(math.sqrt(len(dim_names))))
    n_rows = int(math.ceil(len(dim_names) / n_cols))
    fig = _new_figure(3.0 * n_cols, 3.0 * n_rows)
    for d, name in enumerate(dim_names):
        ax = fig.add_subplot(n_rows, n_cols, d + 1)
        mask = np.isfinite(t[:, d]) & np.isfinite(p[:, d])
        if s is not None:
            ax.errorbar(t[mask, d], p[mask, d], yerr=np.nan_to_num(s[mask, d]), fmt="none",
                        ecolor="tab:blue", alpha=0.2, linewidth=0.6)
        ax.scatter(t[mask, d], p[mask, d], s=6, alpha=0.6)
        ax.plot([SCORE_MIN, SCORE_MAX], [SCORE_MIN, SCORE_MAX], color="grey", linestyle="--", linewidth=1)
        r = pearson(t[mask, d], p[mask, d])
        r_text = "n/a" if math.isnan(r) else f"{r:.2f}"
        ax.set(xlim=(SCORE_MIN, SCORE_MAX), ylim=(SCORE_MIN, SCORE_MAX),
               title=f"{name}\nr={r_text}, n={int(mask.sum())}")
        ax.title.set_fontsize(8)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("label", fontsize=7)
        ax.set_ylabel("prediction", fontsize=7)
    fig.tight_layout()
    return _save_figure(fig, path)
