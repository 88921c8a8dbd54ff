"""Baselines for score prediction: uniform random, training mean, and ridge regression or gradient boosting
on simple features: `simple_audio_features` (cheap descriptors of a log-magnitude CQT) and
`performance_features` (a dozen descriptors of performance MIDI, some against its score).

Predictions are [N, D] on the 0-100 score scale like `pipelines.evaluation.metrics` expects; training
labels are [N, D] with NaN where a dimension has no label.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from pipelines import constants as C
from pipelines.evaluation.metrics import SCORE_MAX, SCORE_MIN, as_matrix
# the performance features live with the per-recording transforms (preprocessing stores them)
from pipelines.features.descriptors import PERFORMANCE_FEATURE_NAMES, performance_features  # noqa: F401

Array = np.ndarray


# --- baselines ---------------------------------------------------------------------------------

def _label_range(y_train: Array) -> tuple[Array, Array]:
    """Per-dimension (min, max) of the finite training labels [D]; NaN for a dimension with none."""
    lo = np.full(y_train.shape[1], math.nan)
    hi = np.full(y_train.shape[1], math.nan)
    for d in range(y_train.shape[1]):
        column = y_train[np.isfinite(y_train[:, d]), d]
        if column.size:
            lo[d], hi[d] = column.min(), column.max()
    return lo, hi


def _label_mean(y_train: Array) -> Array:
    """Per-dimension mean of the finite training labels [D]; NaN for a dimension with none."""
    mean = np.full(y_train.shape[1], math.nan)
    for d in range(y_train.shape[1]):
        column = y_train[np.isfinite(y_train[:, d]), d]
        if column.size:
            mean[d] = column.mean()
    return mean


def uniform_random_baseline(y_train: Any, n: int, seed: int = 0) -> Array:
    """Predictions [n, D] drawn uniformly in each dimension's training label range [min, max].

    y_train: [N, D] (NaN = missing). A dimension without labels predicts NaN.
    """
    labels = as_matrix(y_train, "y_train")
    lo, hi = _label_range(labels)
    rng = np.random.default_rng(seed)
    draws = rng.random((n, labels.shape[1]))
    return lo[None, :] + draws * (hi - lo)[None, :]


def mean_baseline(y_train: Any, n: int) -> Array:
    """Predictions [n, D] equal to each dimension's training label mean (NaN without labels)."""
    labels = as_matrix(y_train, "y_train")
    return np.repeat(_label_mean(labels)[None, :], n, axis=0)


class LinearFeatureBaseline:
    """Ridge regression from simple per-sample features to each dimension's score.

    One standardise-then-Ridge model per dimension, fit on the rows where that dimension has a
    label. A dimension with fewer than 2 labels predicts its label mean (NaN without labels).
    Predictions are clipped to the 0-100 score range when `clip` is set.
    """

    def __init__(self, alpha: float = 1.0, clip: bool = True) -> None:
        self.alpha = alpha
        self.clip = clip
        self.models: list[Pipeline | float] = []
        self.n_features: int | None = None

    def fit(self, X: Any, Y: Any) -> "LinearFeatureBaseline":
        """X: [N, k] finite features; Y: [N, D] labels (NaN = missing). Returns self."""
        features = _finite_features(X)
        labels = as_matrix(Y, "Y")
        if labels.shape[0] != features.shape[0]:
            raise ValueError(f"X has {features.shape[0]} rows but Y has {labels.shape[0]}")
        self.n_features = features.shape[1]
        self.models = [self._fit_dimension(features, labels[:, d]) for d in range(labels.shape[1])]
        return self

    def _fit_dimension(self, features: Array, column: Array) -> Pipeline | float:
        has_label = np.isfinite(column)
        if has_label.sum() < 2:
            return float(column[has_label].mean()) if has_label.any() else math.nan
        model = make_pipeline(StandardScaler(), Ridge(alpha=self.alpha))
        return model.fit(features[has_label], column[has_label])

    def predict(self, X: Any) -> Array:
        """X: [M, k] -> predictions [M, D]."""
        if self.n_features is None:
            raise RuntimeError("LinearFeatureBaseline.predict called before fit")
        features = _finite_features(X)
        if features.shape[1] != self.n_features:
            raise ValueError(f"X has {features.shape[1]} features, the baseline was fit on {self.n_features}")
        columns = [np.full(features.shape[0], m) if isinstance(m, float) else m.predict(features)
                   for m in self.models]
        out = self._joint(np.stack(columns, axis=1))
        return np.clip(out, SCORE_MIN, SCORE_MAX) if self.clip else out

    def _joint(self, out: Array) -> Array:
        """The per-dimension predictions [M, D] adjusted together (subclasses); as they are here."""
        return out


class GradientBoostingFeatureBaseline(LinearFeatureBaseline):
    """Gradient-boosted trees (scikit-learn's histogram GBM) per dimension, same interface and clipping as
    `LinearFeatureBaseline`; small trees, shrinkage and L2 for a few hundred rows.

    rank k > 0 (fewer than the dimensions): the D predictions of a recording are projected onto the k leading
    principal components of the training labels (each dimension standardised), so that correlated dimensions
    (PercePiano's 19) share what their trees found instead of each keeping its own noise. Fitted only when
    every dimension has trees and at least 20 training rows carry every label; otherwise left off
    (`projection` None)."""

    def __init__(self, clip: bool = True, seed: int = 0, max_iter: int = 200, learning_rate: float = 0.05,
                 rank: int = 0) -> None:
        super().__init__(clip=clip)
        self.seed, self.max_iter, self.learning_rate, self.rank = seed, max_iter, learning_rate, rank
        self.projection: tuple[Array, Array, Array] | None = None

    def fit(self, X: Any, Y: Any) -> "GradientBoostingFeatureBaseline":
        super().fit(X, Y)
        self.projection = None
        labels = as_matrix(Y, "Y")
        complete = labels[np.all(np.isfinite(labels), axis=1)]
        if 0 < self.rank < labels.shape[1] and len(complete) >= max(20, self.rank + 1) and \
                not any(isinstance(m, float) for m in self.models):
            centre, scale = complete.mean(axis=0), complete.std(axis=0)
            scale = np.where(scale > 1e-9, scale, 1.0)
            _, _, components = np.linalg.svd((complete - centre) / scale, full_matrices=False)
            self.projection = (centre, scale, components[:self.rank])
        return self

    def _joint(self, out: Array) -> Array:
        projection = getattr(self, "projection", None)        # None in trees pickled before the option
        if projection is None:
            return out
        centre, scale, components = projection
        return ((out - centre) / scale) @ components.T @ components * scale + centre

    def _fit_dimension(self, features: Array, column: Array):
        from sklearn.ensemble import HistGradientBoostingRegressor

        has_label = np.isfinite(column)
        if has_label.sum() < 20:
            return float(column[has_label].mean()) if has_label.any() else math.nan
        model = HistGradientBoostingRegressor(max_iter=self.max_iter, learning_rate=self.learning_rate,
                                              max_leaf_nodes=15, min_samples_leaf=10, l2_regularization=1.0,
                                              random_state=self.seed)
        return model.fit(features[has_label], column[has_label])


def _finite_features(X: Any) -> Array:
    features = as_matrix(X, "X")
    if not np.all(np.isfinite(features)):
        raise ValueError("features X contain NaN or inf; impute or drop those rows first")
    return features


# --- simple audio features ---------------------------------------------------------------------

SIMPLE_FEATURE_NAMES: tuple[str, ...] = (
    "log_mag_mean",          # mean log-magnitude over all frames and bins
    "log_mag_std",           # its standard deviation
    "loudness_mean",         # per-frame log of the mean linear magnitude, averaged over frames
    "loudness_std",          # ... its standard deviation over frames (dynamics variation)
    "loudness_range",        # 95th - 5th percentile of per-frame loudness (dynamic range)
    "centroid_mean",         # magnitude-weighted mean bin per frame, in octaves above C1, averaged
    "centroid_std",          # ... its standard deviation over frames
    "spread_mean",           # magnitude-weighted std of the bin per frame, in octaves, averaged
    "onset_strength_mean",   # mean over frames of the mean positive log-magnitude increase per bin
    "onset_strength_std",    # ... its standard deviation
    "onset_rate_hz",         # peaks of onset strength above mean + 1 std, per second
)


def _frame_loudness(cqt: Array) -> Array:
    """Per-frame log of the mean linear magnitude [F] from a log-magnitude CQT [F, B]."""
    peak = cqt.max(axis=1, keepdims=True)                              # [F, 1], for stability
    return peak[:, 0] + np.log(np.mean(np.exp(cqt - peak), axis=1))


def _frame_centroid_spread(cqt: Array) -> tuple[Array, Array]:
    """Magnitude-weighted mean and std of the bin index per frame, in octaves: ([F], [F])."""
    weights = np.exp(cqt - cqt.max(axis=1, keepdims=True))           # [F, B], linear magnitude / peak
    weights /= weights.sum(axis=1, keepdims=True)
    octaves = np.arange(cqt.shape[1]) / C.CQT_BINS_PER_OCTAVE        # [B]
    centroid = weights @ octaves                                       # [F]
    spread = np.sqrt(np.maximum(weights @ octaves ** 2 - centroid ** 2, 0.0))
    return centroid, spread


def _onset_strength(cqt: Array) -> Array:
    """Mean positive log-magnitude increase per bin between consecutive frames [F - 1]."""
    return np.maximum(np.diff(cqt, axis=0), 0.0).mean(axis=1)


def _peak_rate_hz(strength: Array, frames_per_s: float) -> float:
    """Local maxima of an onset-strength curve above mean + 1 std, per second."""
    if strength.size < 3:
        return 0.0
    threshold = strength.mean() + strength.std()
    mid = strength[1:-1]
    peaks = (mid > strength[:-2]) & (mid >= strength[2:]) & (mid > threshold)
    return float(peaks.sum() / (strength.size / frames_per_s))


def simple_audio_features(cqt: Any, frames_per_s: float = C.CQT_FRAMES_PER_S) -> Array:
    """A handful of cheap descriptors of a log-magnitude CQT, for the linear baseline.

    cqt: [F, B] log-magnitude (B = 168 in this project), F >= 1 frames at `frames_per_s`.
    Returns float64 [len(SIMPLE_FEATURE_NAMES)] = [11] in the order of SIMPLE_FEATURE_NAMES.
    With a single frame the onset features are 0.
    """
    x = np.asarray(cqt, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"cqt must be [frames, bins] with at least one of each, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("cqt contains NaN or inf")
    loudness = _frame_loudness(x)
    centroid, spread = _frame_centroid_spread(x)
    strength = _onset_strength(x) if x.shape[0] >= 2 else np.zeros(1)
    p05, p95 = np.percentile(loudness, [5, 95])
    return np.array([
        x.mean(), x.std(),
        loudness.mean(), loudness.std(), p95 - p05,
        centroid.mean(), centroid.std(), spread.mean(),
        strength.mean(), strength.std(), _peak_rate_hz(strength, frames_per_s),
    ], dtype=np.float64)
