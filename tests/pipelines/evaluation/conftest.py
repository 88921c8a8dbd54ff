"""Shared fixtures of the evaluation tests."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest


@pytest.fixture()
def labels_with_gaps(rng: np.random.Generator) -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """A maker of correlated labels/predictions [n, d] on 0-100, about 20 % of labels missing (NaN)."""
    def make(n: int = 200, d: int = 3) -> tuple[np.ndarray, np.ndarray]:
        y_true = rng.uniform(20, 90, size=(n, d))
        y_pred = np.clip(y_true + rng.normal(0, 12, size=(n, d)), 0, 100)
        y_true[rng.random((n, d)) < 0.2] = np.nan
        return y_true, y_pred
    return make
