"""The human ceiling: split-half rater agreement and the Spearman-Brown reliability of the mean rating."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from pipelines.evaluation.human_ceiling import RatingsError, read_raw_ratings, split_half_agreement


def _write(path, rng, n_segments=300, raters=12, noise=1.0, dims=19):
    truth = rng.normal(4.0, 1.0, (n_segments, dims))
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["user", "dataID", "filename", *[f"Question_{d}_1" for d in range(dims + 1)], "message"])
        for s in range(n_segments):
            for r in range(raters):
                answers = np.clip(np.round(truth[s] + rng.normal(0, noise, dims)), 1, 7)
                writer.writerow([r, s, f"seg_{s}.wav", *answers, "", ""])
        writer.writerow([99, 0, "seg_0.wav", *(["9"] * dims), "", ""])      # out of scale: left out
    return truth


def test_reliability_follows_the_rater_noise(tmp_path, rng):
    low, high = tmp_path / "low.csv", tmp_path / "high.csv"
    _write(low, rng, noise=0.5)
    _write(high, rng, noise=3.0)
    ratings = read_raw_ratings(str(low))
    assert len(ratings) == 300 and ratings["seg_0"].shape == (13, 19)
    assert np.all(np.isnan(ratings["seg_0"][-1]))
    clean, noisy = split_half_agreement(ratings, repeats=5), split_half_agreement(read_raw_ratings(str(high)),
                                                                                  repeats=5)
    assert clean["r2_ceiling_mean"] > 0.9 > noisy["r2_ceiling_mean"] > 0.3
    r = np.asarray(noisy["split_half_r"])
    assert np.allclose(noisy["reliability"], 2 * r / (1 + r))            # Spearman-Brown
    assert noisy["raters_median"] == 12


def test_unreadable_ratings_are_one_line(tmp_path):
    bad = tmp_path / "ratings raw.csv"
    bad.write_text("user,filename,Question_1\n1,a.wav,3\n")
    with pytest.raises(RatingsError, match="ratings raw.csv"):
        read_raw_ratings(str(bad))
    with pytest.raises(RatingsError, match="cannot read"):
        read_raw_ratings(str(tmp_path / "missing.csv"))


def test_the_pairwise_ceiling_is_what_a_model_knowing_the_true_scores_reaches(rng):
    """From the raters' answers alone, the estimate finds the pairwise accuracy that the performances' true
    scores reach against the panel's mean, and what a fresh panel of half the size reaches; the raw
    split-half agreement sits well below both."""
    from pipelines.evaluation.human_ceiling import SCORE_PER_ANSWER, pairwise_agreement
    from pipelines.evaluation.metrics import pairwise_ranking

    n_groups, per_group, raters, dims = 60, 8, 12, 3
    passage_level = rng.normal(4.0, 0.5, (n_groups, 1, dims))
    truth = (passage_level + rng.normal(0.0, 0.45, (n_groups, per_group, dims))).reshape(-1, dims)
    groups = np.repeat(np.arange(n_groups), per_group)

    def panel(size):
        return truth[:, None, :] + rng.normal(0.0, 1.6, (len(truth), size, dims))

    answers = panel(raters)
    ratings = {f"seg_{i}": answers[i] for i in range(len(truth))}
    found = pairwise_agreement(ratings, {f"seg_{i}": str(g) for i, g in enumerate(groups)}, repeats=10)
    means = answers.mean(axis=1) * SCORE_PER_ANSWER
    fresh = panel(raters // 2).mean(axis=1) * SCORE_PER_ANSWER
    true_acc = np.mean([pairwise_ranking(means[:, d], truth[:, d] * SCORE_PER_ANSWER, groups)[0] for d in range(dims)])
    fresh_acc = np.mean([pairwise_ranking(means[:, d], fresh[:, d], groups)[0] for d in range(dims)])
    assert found["segments"] == len(truth) and found["groups"] == n_groups
    assert found["split_half_mean"] < true_acc - 0.08
    assert abs(found["perfect_model_mean"] - true_acc) < 0.03
    assert abs(found["fresh_half_panel_mean"] - fresh_acc) < 0.03
    assert found["split_half_mean"] < found["fresh_half_panel_mean"] < found["perfect_model_mean"]


def test_pairwise_agreement_needs_grouped_segments(rng):
    from pipelines.evaluation.human_ceiling import pairwise_agreement

    ratings = {f"seg_{i}": rng.normal(4, 1, (5, 19)) for i in range(10)}
    with pytest.raises(RatingsError, match="grouped segments"):
        pairwise_agreement(ratings, {"seg_0": "a", "other": "b"})
