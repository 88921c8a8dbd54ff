"""Helpers of the feature tests: generated performances with known inserted errors."""
from __future__ import annotations

import numpy as np

from benchmarks.bench_alignment import PerformanceStyle, add_errors, render_performance, synthetic_score


def generated(seed: int = 0, style: PerformanceStyle = PerformanceStyle(), errors=(0, 0, 0), n_bars: int = 12):
    """A synthetic score, a performance of it in `style`, and (missed, extra, wrong) inserted errors."""
    rng = np.random.default_rng(seed)
    sp = render_performance(synthetic_score(rng, n_bars=n_bars), style, rng)
    return add_errors(sp, rng, *errors)
