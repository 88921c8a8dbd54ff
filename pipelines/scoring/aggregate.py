"""Overlap aggregation: per-window predictions of one recording -> one score, sigma and attention curve.

Inference windows overlap (25 s windows, 50 % overlap by default), so most instants of a recording lie in
two windows. Each instant of the recording counts once, and within an overlap it goes mostly to the
window whose centre it is nearer: window k gives instant t the taper weight

    w_k(t) = max(1 - |t - c_k| / (L_k / 2), FLOOR)        (triangular, peak 1 at the centre c_k, L_k its length)

and instant t's unit of weight is shared among the windows that cover it in proportion to w_k(t). A
window's weight is its share integrated over time, W_k = integral of w_k(t) / sum_j w_j(t) dt (seconds;
the W_k sum to the covered duration). Then, per dimension,

    score  = sum_k W_k mu_k / sum_k W_k
    sigma^2 = sum_k W_k sigma_k^2 / sum_k W_k  +  sum_k W_k (mu_k - score)^2 / sum_k W_k

(the model's own per-window sigma, plus the spread between windows). The attention curve combines each
window's attention weights, binned on a grid of `hop_s` seconds over the recording, with the same shares
(a window's mass in a bin is scaled by L_k / hop_s, so uniform attention is 1 in every window), and is
normalised to sum to 1 over the recording. Everything is numpy on the (small) per-window outputs.
"""
from __future__ import annotations

import math

import numpy as np

FLOOR = 1e-3                 # taper weight at a window's very edge (so every covered instant has an owner)
GRID_S = 0.05                # integration step of the window weights, seconds


def _spans(starts_s, ends_s) -> tuple[np.ndarray, np.ndarray]:
    starts = np.asarray(starts_s, dtype=np.float64).reshape(-1)
    ends = np.asarray(ends_s, dtype=np.float64).reshape(-1)
    if starts.shape != ends.shape or len(starts) == 0:
        raise ValueError(f"need one (start, end) per window and at least one window, got {len(starts)} starts, "
                         f"{len(ends)} ends")
    if not (np.all(np.isfinite(starts)) and np.all(np.isfinite(ends)) and np.all(ends > starts)):
        raise ValueError("every window needs finite times with end > start")
    return starts, ends


def taper(t: np.ndarray, start: float, end: float) -> np.ndarray:
    """w(t) of the window [start, end): triangular, 1 at the centre, FLOOR at the edges, 0 outside."""
    half = (end - start) / 2.0
    w = np.maximum(1.0 - np.abs(t - (start + half)) / half, FLOOR)
    return np.where((t >= start) & (t < end), w, 0.0)


def _cells(t: np.ndarray, start: float, end: float) -> slice:
    """The indices of the sorted grid `t` that lie in [start, end)."""
    return slice(int(np.searchsorted(t, start, side="left")), int(np.searchsorted(t, end, side="left")))


def _total_taper(starts: np.ndarray, ends: np.ndarray, t: np.ndarray) -> np.ndarray:
    """sum_k w_k(t) on a sorted grid, adding each window over its own cells only: O(len(t)) memory."""
    total = np.zeros(len(t))
    for s, e in zip(starts, ends):
        cells = _cells(t, s, e)
        total[cells] += taper(t[cells], s, e)
    return total


def window_weights(starts_s, ends_s, grid_s: float = GRID_S) -> np.ndarray:
    """(W,) seconds of the recording each window speaks for (see the module docstring)."""
    starts, ends = _spans(starts_s, ends_s)
    lo, hi = float(starts.min()), float(ends.max())
    n = max(1, int(math.ceil((hi - lo) / grid_s)))
    step = (hi - lo) / n
    t = lo + (np.arange(n) + 0.5) * step                                 # midpoints of the grid cells
    total = _total_taper(starts, ends, t)
    weights = np.zeros(len(starts))
    for k, (s, e) in enumerate(zip(starts, ends)):
        cells = _cells(t, s, e)
        weights[k] = np.sum(taper(t[cells], s, e) / total[cells]) * step
    return weights


def aggregate_windows(starts_s, ends_s, scores, sigma, weights: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Window predictions (W, D) on 0..100 with their sigma (W, D) -> recording score (D,) and sigma (D,).

    `weights`: `window_weights(starts_s, ends_s)` when the caller has them already. NaN predictions (a
    dimension a window could not assess) are left out of that dimension; a dimension with no finite
    window prediction stays NaN."""
    scores = np.asarray(scores, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    if scores.ndim != 2 or sigma.shape != scores.shape:
        raise ValueError(f"scores and sigma must both be (windows, dimensions), got {scores.shape} and {sigma.shape}")
    weights = window_weights(starts_s, ends_s) if weights is None else np.asarray(weights, np.float64)   # (W,)
    if len(weights) != scores.shape[0]:
        raise ValueError(f"{len(weights)} windows but {scores.shape[0]} rows of scores")
    valid = np.isfinite(scores) & np.isfinite(sigma)
    w = np.where(valid, weights[:, None], 0.0)                           # (W, D)
    total = w.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (w * np.where(valid, scores, 0.0)).sum(0) / total
        aleatoric = (w * np.where(valid, sigma, 0.0) ** 2).sum(0) / total
        spread = (w * (np.where(valid, scores, 0.0) - mean) ** 2).sum(0) / total
    out_sigma = np.sqrt(aleatoric + spread)
    empty = total <= 0
    return np.where(empty, np.nan, mean), np.where(empty, np.nan, out_sigma)


def attention_curve(starts_s, ends_s, window_times: list[np.ndarray], window_attention: list[np.ndarray],
                    duration_s: float, hop_s: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """One attention curve over the recording -> (bin start times (B,), curve (B,) summing to 1).

    window_times[k] are the times (seconds from window k's start) of its attention steps and
    window_attention[k] their weights (summing to 1 over the window). Bins are [i * hop_s, (i+1) * hop_s).
    """
    starts, ends = _spans(starts_s, ends_s)
    if len(window_times) != len(starts) or len(window_attention) != len(starts):
        raise ValueError("need one attention vector (and its times) per window")
    if hop_s <= 0:
        raise ValueError(f"hop_s must be positive, got {hop_s}")
    n_bins = max(1, int(math.ceil(max(duration_s, float(ends.max())) / hop_s - 1e-9)))
    edges = np.arange(n_bins + 1) * hop_s
    centres = edges[:-1] + hop_s / 2
    total = _total_taper(starts, ends, centres)                           # (B,)
    curve = np.zeros(n_bins)
    for k, (start, end) in enumerate(zip(starts, ends)):
        times = np.asarray(window_times[k], dtype=np.float64) + start
        att = np.asarray(window_attention[k], dtype=np.float64)
        if att.size == 0 or not np.isfinite(att).all() or att.sum() <= 0:
            continue
        att = att / att.sum()
        b0 = int(np.clip(math.floor(start / hop_s), 0, n_bins - 1))      # the bins this window touches
        b1 = int(np.clip(math.ceil(end / hop_s), b0 + 1, n_bins))
        idx = np.clip((times // hop_s).astype(np.int64), b0, b1 - 1) - b0
        mass = np.bincount(idx, weights=att, minlength=b1 - b0)          # this window's attention per bin
        lo_edge, hi_edge = edges[b0:b1], edges[b0 + 1:b1 + 1]
        covered = np.clip(np.minimum(hi_edge, end) - np.maximum(lo_edge, start), 0.0, None)
        density = np.divide(mass * (end - start), covered, out=np.zeros(b1 - b0), where=covered > 1e-9)
        w = taper(centres[b0:b1], start, end)
        share = np.divide(w, total[b0:b1], out=np.zeros(b1 - b0), where=total[b0:b1] > 0)
        curve[b0:b1] += share * density * (covered / hop_s)
    total = curve.sum()
    return edges[:-1], (curve / total if total > 0 else curve)
