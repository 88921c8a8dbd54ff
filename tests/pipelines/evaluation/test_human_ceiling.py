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
