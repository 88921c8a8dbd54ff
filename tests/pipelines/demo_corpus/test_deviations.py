"""Demo-corpus deviations: each family changes the notes as specified and lowers only its dimensions."""
from __future__ import annotations

import math

import numpy as np
import pytest

from model.schema import SEED10
from pipelines.demo_corpus.deviations import DeviationSpec, apply_deviations, sample_deviation_spec, take_severities
from pipelines.demo_corpus.pieces import CorpusGenerationError, build_score
from tests.pipelines.demo_corpus.conftest import TECHNICAL, one_line, tiny_arrays


def test_same_deviations_same_labels_and_notes(score):
    spec = DeviationSpec(wrong_rate=0.1, onset_jitter_ms=30, velocity_noise=10, pedal_blur=0.5, seed=9)
    a, b = apply_deviations(score, spec), apply_deviations(score, spec)
    assert a.labels == b.labels and np.array_equal(a.notes, b.notes) and np.array_equal(a.pedal, b.pedal)
    c = apply_deviations(score, DeviationSpec(**{**spec.to_dict(), "seed": 10}))
    assert not np.array_equal(a.notes, c.notes)


FAMILY_CASES = [
    ({"wrong_rate": 0.1}, {"note_accuracy"}),
    ({"missed_rate": 0.1}, {"note_accuracy"}),
    ({"extra_rate": 0.1}, {"note_accuracy"}),
    ({"onset_jitter_ms": 40.0}, {"rhythmic_precision"}),
    ({"tempo_drift": -0.3}, {"rhythmic_precision"}),
    ({"dynamics_flatten": 0.8}, {"dynamics_control"}),
    ({"velocity_noise": 15.0}, {"dynamics_control", "tone"}),
    ({"voicing_loss": 0.8}, {"tone"}),
    ({"harshness": 20.0}, {"tone"}),
    ({"duration_scale": 0.5}, {"articulation"}),
    ({"duration_jitter": 0.4}, {"articulation"}),
    ({"pedal_missing": 0.5}, {"pedaling"}),
    ({"pedal_blur": 0.5}, {"pedaling"}),
    ({"deadpan": 1.0}, set()),
]


@pytest.mark.parametrize("fields, touched", FAMILY_CASES)
def test_each_deviation_lowers_only_its_dimensions(score, fields, touched):
    labels = apply_deviations(score, DeviationSpec(seed=5, **fields)).labels
    for dim in TECHNICAL:
        if dim in touched:
            assert labels[dim] < 90.0, (dim, labels[dim])
        else:
            assert labels[dim] == 100.0, (dim, labels[dim])
    assert labels["overall"] < 100.0


def test_deviations_change_the_notes_as_specified(score):
    n_ref = len(score.notes)
    clean = apply_deviations(score, DeviationSpec(seed=1))
    missed = apply_deviations(score, DeviationSpec(missed_rate=0.2, seed=1))
    assert len(missed.notes) == n_ref - round(0.2 * n_ref) and missed.counts["n_missed"] == round(0.2 * n_ref)
    extra = apply_deviations(score, DeviationSpec(extra_rate=0.1, seed=1))
    assert len(extra.notes) == n_ref + round(0.1 * n_ref)
    wrong = apply_deviations(score, DeviationSpec(wrong_rate=0.25, seed=1))
    changed = np.sum(np.sort(wrong.notes["pitch"]) != np.sort(clean.notes["pitch"]))
    assert changed >= 1 and wrong.counts["n_wrong"] == round(0.25 * n_ref)
    assert wrong.measures["note_error_rate"] == pytest.approx(round(0.25 * n_ref) / n_ref)
    jitter = apply_deviations(score, DeviationSpec(onset_jitter_ms=40.0, seed=1))
    shift = jitter.notes["onset_s"][np.lexsort((jitter.notes["pitch"], jitter.notes["onset_s"]))]
    assert jitter.measures["onset_jitter_ms"] == pytest.approx(40.0, rel=0.3)
    assert np.sqrt(np.mean((np.sort(shift) - np.sort(clean.notes["onset_s"])) ** 2)) > 0.01
    flat = apply_deviations(score, DeviationSpec(dynamics_flatten=1.0, seed=1))
    assert flat.notes["velocity"].std() <= 0.6                         # one velocity (rounding)
    short = apply_deviations(score, DeviationSpec(duration_scale=0.5, seed=1))
    ratio = np.log((short.notes["offset_s"] - short.notes["onset_s"]).sum()
                   / (clean.notes["offset_s"] - clean.notes["onset_s"]).sum())
    assert ratio == pytest.approx(math.log(0.5), abs=0.05)
    faster = apply_deviations(score, DeviationSpec(tempo_drift=0.3, seed=1))
    assert faster.notes["onset_s"].max() < 0.93 * clean.notes["onset_s"].max()


def test_pedal_deviations(score):
    clean = apply_deviations(score, DeviationSpec(seed=2))
    presses = clean.counts["n_pedal_presses"]
    assert presses == score.n_bars                                    # one press per bar by default
    dry = apply_deviations(score, DeviationSpec(pedal_missing=1.0, seed=2))
    assert not np.any(dry.pedal["value"] >= 64) and dry.labels["pedaling"] == pytest.approx(100 * 2 ** -2.5, abs=0.01)
    blurred = apply_deviations(score, DeviationSpec(pedal_blur=1.0, seed=2))
    down = blurred.pedal["value"] >= 64
    assert down[0] and np.sum(np.diff(down.astype(int)) == -1) == 1    # held through every change
    assert np.array_equal(blurred.notes, clean.notes)


def test_more_severe_deviations_give_lower_labels():
    score = build_score(tiny_arrays(16), 0, 16, 100.0)
    spec = DeviationSpec(wrong_rate=0.06, missed_rate=0.06, extra_rate=0.04, onset_jitter_ms=50.0,
                         tempo_drift=0.3, dynamics_flatten=0.8, velocity_noise=16.0, voicing_loss=0.8,
                         harshness=25.0, duration_scale=0.5, duration_jitter=0.4, pedal_missing=0.5,
                         pedal_blur=0.5, deadpan=0.8, seed=4)
    rows = [apply_deviations(score, spec.scaled(f)).labels for f in (0.0, 0.25, 0.5, 1.0)]
    for dim in SEED10.names:
        values = [r[dim] for r in rows]
        assert values[0] == 100.0
        assert all(a > b for a, b in zip(values, values[1:])), (dim, values)


def test_deviation_spec_validation():
    with pytest.raises(CorpusGenerationError) as err:
        DeviationSpec(wrong_rate=1.5)
    assert one_line(err.value) and "wrong_rate" in str(err.value)
    with pytest.raises(CorpusGenerationError, match="tempo_drift"):
        DeviationSpec(tempo_drift=1.0)
    with pytest.raises(CorpusGenerationError, match="unknown deviation field 'speed'"):
        DeviationSpec.from_dict({"speed": 1.0})
    spec = DeviationSpec(pedal_blur=0.3, seed=2)
    assert DeviationSpec.from_dict(spec.to_dict()) == spec and not spec.is_clean and DeviationSpec(seed=4).is_clean


def test_sampled_specs_span_severities():
    rng = np.random.default_rng(0)
    severities = take_severities(6, rng)
    assert severities[0] == 0.0 and all(0.1 <= s <= 1.0 for s in severities[1:])
    assert np.all(np.diff(severities[1:]) > 0)                        # one per stratum
    specs = [sample_deviation_spec(np.random.default_rng(i), 0.8, seed=i) for i in range(20)]
    assert not any(s.is_clean for s in specs)
    assert sample_deviation_spec(np.random.default_rng(3), 0.8, 3) == specs[3]
