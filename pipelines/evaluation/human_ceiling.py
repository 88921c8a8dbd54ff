"""How well people agree among themselves: the ceiling for any model of mean expert ratings.

From every rater's answers (PercePiano's `ratings_raw.csv`: one row per rater and segment, the 19
dimensions' answers on a 1..7 scale in label order, then an extra question), per dimension:

- **split-half agreement**: the raters of each segment are split at random into two halves; the Pearson
  correlation over segments between the halves' mean ratings, averaged over `repeats` random splits;
- **reliability of the mean rating** (Spearman-Brown corrected: 2r / (1 + r)): the correlation to expect
  between the panel's mean and another panel's of the same size. It is the share of the mean rating's
  variance that is not rater noise, so no model of the mean ratings can exceed it as R² (in expectation),
  nor its square root as Pearson r.

- **pairwise agreement** (`pairwise_agreement`): the same question for ranking performances of one passage,
  the project's pairwise accuracy. Half A's mean orders the pairs of half B's mean (`split_half`). Within a
  passage the rating differences of two independent panels correlate at r_h = sin(pi (p - 1/2)) when p is
  their sign agreement (bivariate normal differences), so the full panel's within-passage reliability is
  R = 2 r_h / (1 + r_h), and a model that knew every performance's true score would order the panel's pairs
  at 1/2 + arcsin(sqrt(R)) / pi (`perfect_model`): the ceiling for pairwise accuracy. A fresh panel of
  half the size would reach 1/2 + arcsin(sqrt(r_h R)) / pi against this one (`fresh_half_panel`).

Answers outside 1..7 and blanks are left out; a segment needs two raters with answers.
"""
from __future__ import annotations

import csv
import io
from collections import defaultdict
from typing import Any

import numpy as np

from pipelines.io import storage

SCALE = (1.0, 7.0)
SCORE_PER_ANSWER = 100.0 / 7.0         # percepiano19 labels: the mean answer / 7, as 0..100 scores


class RatingsError(ValueError):
    """The raw ratings cannot be read; the message names the file."""


def read_raw_ratings(uri: str, n_dims: int = 19) -> dict[str, np.ndarray]:
    """{segment name: (raters, n_dims) answers, NaN where blank or out of scale} from a ratings_raw.csv."""
    try:
        text = storage.read_bytes(uri, max_bytes=storage.MAX_SMALL_FILE_BYTES).decode("utf-8-sig")
    except (storage.StorageError, UnicodeDecodeError) as exc:
        raise RatingsError(f"{uri}: cannot read the raw ratings: {exc}") from None
    reader = csv.DictReader(io.StringIO(text))
    columns = [c for c in (reader.fieldnames or []) if c.startswith("Question")][:n_dims]
    if "filename" not in (reader.fieldnames or []) or len(columns) < n_dims:
        raise RatingsError(f"{uri}: expected a filename column and {n_dims} Question_* columns")
    by_segment: dict[str, list[list[float]]] = defaultdict(list)
    for row in reader:
        answers = []
        for column in columns:
            try:
                value = float(row[column])
            except (TypeError, ValueError):
                value = np.nan
            answers.append(value if SCALE[0] <= value <= SCALE[1] else np.nan)
        name = str(row["filename"]).strip().rsplit("/", 1)[-1]
        by_segment[name.rsplit(".", 1)[0] if "." in name else name].append(answers)
    return {k: np.asarray(v, dtype=np.float64) for k, v in by_segment.items()}


def split_half_agreement(ratings: dict[str, np.ndarray], repeats: int = 50, seed: int = 0) -> dict[str, Any]:
    """Per dimension: split-half r and the Spearman-Brown reliability of the mean rating (see module doc)."""
    rng = np.random.default_rng(seed)
    segments = [a for a in ratings.values() if len(a) >= 2]
    if len(segments) < 3:
        raise RatingsError("fewer than 3 segments with two or more raters")
    n_dims = segments[0].shape[1]
    rs = np.full((repeats, n_dims), np.nan)
    for rep in range(repeats):
        halves = np.stack([np.stack(_half_means(answers, rng)) for answers in segments])    # (S, 2, D)
        for d in range(n_dims):
            a, b = halves[:, 0, d], halves[:, 1, d]
            ok = np.isfinite(a) & np.isfinite(b)
            if ok.sum() >= 3 and np.std(a[ok]) > 0 and np.std(b[ok]) > 0:
                rs[rep, d] = np.corrcoef(a[ok], b[ok])[0, 1]
    r = np.nanmean(rs, axis=0)
    reliability = 2 * r / (1 + r)
    raters = [len(a) for a in segments]
    return {"split_half_r": r.tolist(), "reliability": reliability.tolist(),
            "r2_ceiling_mean": float(np.nanmean(np.clip(reliability, 0, 1))),
            "r_ceiling_mean": float(np.nanmean(np.sqrt(np.clip(reliability, 0, 1)))),
            "segments": len(segments), "raters_median": float(np.median(raters)), "repeats": repeats}


def _half_means(answers: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A segment's (raters, D) answers split at random into two halves: each half's mean per dimension
    (NaN where a half has no answer)."""
    order = rng.permutation(len(answers))
    cut = len(answers) // 2
    out = []
    for rows in (order[:cut], order[cut:]):
        part = answers[rows]
        counts = np.sum(np.isfinite(part), axis=0)
        out.append(np.where(counts > 0, np.nansum(part, axis=0) / np.maximum(counts, 1), np.nan))
    return out[0], out[1]


def pairwise_agreement(ratings: dict[str, np.ndarray], groups: dict[str, str], repeats: int = 20, seed: int = 0,
                       margin: float | None = None) -> dict[str, Any]:
    """Per dimension: split-half pairwise agreement within each group (passage) and the pairwise ceilings it
    implies (see module doc), on the 0..100 score scale with the project's pair margin.

    groups: {segment name: group id}; segments without a group or with fewer than two raters are left out.
    """
    from pipelines.evaluation.metrics import DEFAULT_RANK_MARGIN, pairwise_ranking

    margin = DEFAULT_RANK_MARGIN if margin is None else margin
    names = [k for k, a in ratings.items() if k in groups and len(a) >= 2]
    if len(names) < 3:
        raise RatingsError("fewer than 3 grouped segments with two or more raters")
    rng = np.random.default_rng(seed)
    group_ids = np.asarray([groups[k] for k in names], dtype=object)
    n_dims = ratings[names[0]].shape[1]
    accuracy = np.full((repeats, n_dims), np.nan)
    for rep in range(repeats):
        halves = [_half_means(ratings[k] * SCORE_PER_ANSWER, rng) for k in names]
        a, b = np.stack([h[0] for h in halves]), np.stack([h[1] for h in halves])
        for d in range(n_dims):
            accuracy[rep, d] = pairwise_ranking(b[:, d], a[:, d], group_ids, margin)[0]
    split = np.nanmean(accuracy, axis=0)
    r_half = np.clip(np.sin(np.pi * (split - 0.5)), 0.0, 1.0)
    reliability = 2 * r_half / (1 + r_half)
    perfect = 0.5 + np.arcsin(np.sqrt(reliability)) / np.pi
    fresh = 0.5 + np.arcsin(np.sqrt(r_half * reliability)) / np.pi
    return {"split_half": split.tolist(), "within_reliability": reliability.tolist(),
            "perfect_model": perfect.tolist(), "fresh_half_panel": fresh.tolist(),
            "split_half_mean": float(np.nanmean(split)), "perfect_model_mean": float(np.nanmean(perfect)),
            "fresh_half_panel_mean": float(np.nanmean(fresh)), "segments": len(names),
            "groups": len(set(group_ids.tolist())), "repeats": repeats}
