"""The aligned descriptors of the feature model: each one reads what its name says off the alignment's per-note
attributes, and changes when (and only when) that property of the performance changes."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.constants import N_PERF_ATTRS, PERF_ATTR_NAMES
from pipelines.features.descriptors import (ALIGNED_FEATURE_NAMES, DESCRIPTOR_NAMES, PERFORMANCE_FEATURE_NAMES,
                                            aligned_features)

COL = {n: i for i, n in enumerate(PERF_ATTR_NAMES)}


def _played(n=60, seconds=30.0, velocity=0.5, duration=0.0, ioi=None, sustain=0.0):
    """n matched notes evenly over `seconds`: attrs [n, A] and onsets."""
    attrs = np.zeros((n, N_PERF_ATTRS), np.float32)
    attrs[:, COL["played"]] = 1
    attrs[:, COL["velocity"]] = velocity
    attrs[:, COL["log_duration_ratio"]] = duration
    attrs[:, COL["log_ioi_ratio"]] = 0.0 if ioi is None else ioi
    attrs[:, COL["sustain"]] = sustain
    return attrs, np.linspace(0.0, seconds, n)


def _named(attrs, onsets) -> dict[str, float]:
    return dict(zip(ALIGNED_FEATURE_NAMES, aligned_features(attrs, onsets)))


def test_the_descriptor_names_are_the_baselines_thirteen_then_the_aligned_eighteen():
    assert len(PERFORMANCE_FEATURE_NAMES) == 13 and len(ALIGNED_FEATURE_NAMES) == 18
    assert DESCRIPTOR_NAMES == PERFORMANCE_FEATURE_NAMES + ALIGNED_FEATURE_NAMES
    assert len(set(DESCRIPTOR_NAMES)) == 31


def test_an_even_performance_has_no_contrast_and_its_shares_by_hand():
    attrs, onsets = _played(sustain=1.0)
    missed = np.zeros((20, N_PERF_ATTRS), np.float32)
    missed[:, COL["missed"]] = 1
    extra = np.zeros((20, N_PERF_ATTRS), np.float32)
    extra[:, COL["extra"]] = 1
    extra[:, COL["velocity"]] = 0.9
    f = _named(np.concatenate([attrs, missed, extra]), np.concatenate([onsets, onsets[:20], onsets[:20]]))
    assert f["missed_share"] == pytest.approx(0.2) and f["extra_share"] == pytest.approx(0.2)
    assert f["sustain_share"] == 1.0 and f["soft_share"] == 0.0
    # extra and missed notes do not enter the matched notes' statistics
    assert f["dynamic_contrast_std"] == 0.0 and f["dynamic_contrast_range"] == 0.0
    assert f["duration_ratio_mean"] == 0.0 and f["timing_instability"] == 0.0


def test_a_crescendo_raises_dynamic_contrast_and_nothing_about_timing_or_articulation():
    flat, onsets = _played(velocity=0.5)
    crescendo = flat.copy()
    crescendo[:, COL["velocity"]] = np.linspace(0.2, 0.9, len(flat))
    before, after = _named(flat, onsets), _named(crescendo, onsets)
    assert after["dynamic_contrast_range"] > 0.4 and after["dynamic_contrast_std"] > 0.1
    for name in ("duration_ratio_mean", "duration_ratio_std", "ioi_ratio_std", "timing_instability",
                 "onset_dev_abs", "articulation_contrast"):
        assert after[name] == before[name]


def test_staccato_and_its_contrast_with_legato_show_in_the_articulation_descriptors():
    legato, onsets = _played(duration=0.0)
    staccato, _ = _played(duration=-1.0)
    mixed = staccato.copy()
    mixed[len(mixed) // 2:, COL["log_duration_ratio"]] = 0.0        # staccato first half, legato second
    f_leg, f_sta, f_mix = _named(legato, onsets), _named(staccato, onsets), _named(mixed, onsets)
    assert f_sta["duration_ratio_mean"] == pytest.approx(-1.0) and f_leg["duration_ratio_mean"] == 0.0
    assert f_sta["duration_ratio_p10"] == pytest.approx(-1.0) and f_mix["duration_ratio_p90"] == 0.0
    assert f_mix["articulation_contrast"] > 0.3 > f_sta["articulation_contrast"] == 0.0
    assert f_mix["dynamic_contrast_range"] == 0.0


def test_unsteady_timing_grows_the_timing_descriptors_monotonically():
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 1, 60)
    values = []
    for scale in (0.0, 0.05, 0.2, 0.5):
        attrs, onsets = _played(ioi=scale * noise)
        attrs[:, COL["onset_dev"]] = scale * noise
        f = _named(attrs, onsets)
        values.append((f["ioi_ratio_std"], f["timing_instability"], f["onset_dev_abs"], f["ioi_ratio_spread"]))
    values = np.array(values)
    assert np.all(np.diff(values, axis=0) > 0)
    assert values[0].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_a_short_or_empty_performance_gives_finite_numbers():
    assert aligned_features(np.zeros((0, N_PERF_ATTRS)), np.zeros(0)).tolist() == [0.0] * 18
    attrs, onsets = _played(n=2, seconds=0.5)
    out = aligned_features(attrs, onsets)
    assert np.all(np.isfinite(out)) and len(out) == 18
