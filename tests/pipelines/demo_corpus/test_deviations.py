"""Demo-corpus deviations: each family changes the notes as specified and lowers only its dimensions."""
from __future__ import annotations

import math

import numpy as np
import pytest

from model.schema import SEED10
from pipelines.demo_corpus.deviations import (
    DeviationSpec,
    Take,
    apply_deviations,
    bar_truth,
    sample_deviation_spec,
    take_severities,
)
from pipelines.demo_corpus.pieces import CorpusGenerationError, build_score
from pipelines.demo_corpus.renditions import natural_rendition
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


# --- the truth bar by bar: inserted errors as events, local tempo ------------------------------------


def _at(notes: np.ndarray, time_s: float, pitch: int) -> bool:
    return bool(np.any((np.abs(notes["onset_s"] - time_s) < 1e-9) & (notes["pitch"] == pitch)))


def test_note_error_events_match_the_counts_and_the_notes():
    score = build_score(tiny_arrays(12), 0, 12, 100.0)
    timing = {"onset_jitter_ms": 20.0, "tempo_drift": 0.2, "seed": 3}
    take = apply_deviations(score, DeviationSpec(wrong_rate=0.06, missed_rate=0.06, extra_rate=0.04, **timing))
    reference = apply_deviations(score, DeviationSpec(**timing))          # the same timing, no note errors
    by_kind = {k: [e for e in take.events if e["kind"] == k] for k in ("missed", "wrong", "extra")}
    assert {k: len(v) for k, v in by_kind.items()} == {
        "missed": take.counts["n_missed"], "wrong": take.counts["n_wrong"], "extra": take.counts["n_extra"]}
    assert all(len(v) >= 3 for v in by_kind.values()) and len(take.events) == sum(map(len, by_kind.values()))
    sn = score.notes
    for e in by_kind["missed"]:                       # the written note, where it would have been played
        i = e["score_index"]
        assert e["bar"] == sn["bar"][i] and e["pitch"] == sn["pitch"][i]
        assert _at(reference.notes, e["time_s"], e["pitch"]) and not _at(take.notes, e["time_s"], e["pitch"])
    for e in by_kind["wrong"]:                        # struck 1-2 semitones off at the written note's time
        i = e["score_index"]
        assert e["bar"] == sn["bar"][i] and 1 <= abs(e["pitch"] - int(sn["pitch"][i])) <= 2
        assert _at(reference.notes, e["time_s"], int(sn["pitch"][i])) and _at(take.notes, e["time_s"], e["pitch"])
    for e in by_kind["extra"]:                        # a slip near its anchor, in the anchor's bar
        assert e["score_index"] == -1 and e["bar"] == sn["bar"][e["anchor_index"]]
        assert _at(take.notes, e["time_s"], e["pitch"])
    assert [e["time_s"] for e in take.events] == sorted(e["time_s"] for e in take.events)
    assert apply_deviations(score, DeviationSpec(seed=3)).events == []


def _local_tempo_takes(pct: float = 20.0, seed: int = 5):
    score = build_score(tiny_arrays(12), 0, 12, 100.0)
    base = natural_rendition(score, 3)
    clean = apply_deviations(score, DeviationSpec(seed=seed), base=base)
    local = apply_deviations(score, DeviationSpec(local_tempo_bars=2, local_tempo_pct=pct, seed=seed), base=base)
    assert np.array_equal(clean.notes["onset_s"], base.notes["onset_s"])
    return score, score.notes["bar"][base.score_index], clean, local


def test_local_tempo_changes_only_inside_its_bars():
    score, bars, clean, local = _local_tempo_takes()
    events = local.events
    chosen = [e["bar"] for e in events]
    assert len(events) == 2 and {e["kind"] for e in events} <= {"rushing", "dragging"}
    assert all(0 < b < score.n_bars - 1 for b in chosen) and abs(chosen[0] - chosen[1]) > 1
    assert all(e["tempo_pct"] == (20.0 if e["kind"] == "rushing" else -20.0) for e in events)
    # the warp keeps the order of the notes, so clean and local notes correspond one to one
    a, b = clean.notes["onset_s"], local.notes["onset_s"]
    assert np.array_equal(clean.notes["pitch"], local.notes["pitch"])
    assert np.array_equal(clean.notes["velocity"], local.notes["velocity"])
    assert np.array_equal(clean.pedal["value"], local.pedal["value"])
    shift = b - a
    for k in range(score.n_bars):
        inside = bars == k
        if k in chosen:
            event = events[chosen.index(k)]
            factor = 1.0 / (1.0 + event["tempo_pct"] / 100.0)
            assert np.allclose(np.diff(b[inside]), factor * np.diff(a[inside]), atol=1e-9)
            length = [t[bars == k + 1].min() - t[inside].min() for t in (a, b)]   # downbeat to downbeat
            assert length[1] / length[0] == pytest.approx(factor, abs=0.005)
            assert event["time_s"] == pytest.approx(b[inside].min(), abs=0.002)
        else:                                         # the same tempo: one shift for the whole bar
            assert np.ptp(shift[inside]) < 1e-9, k
    # before the first changed bar nothing moves; between and after them every onset moves alike
    first, second = sorted(chosen)
    assert np.all(shift[bars < first] == 0.0)
    assert np.ptp(shift[(bars > first) & (bars < second)]) < 1e-9
    assert np.ptp(shift[bars > second]) < 1e-9
    assert bar_truth(local) == {e["bar"]: {e["kind"]} for e in events}


def test_local_tempo_has_its_own_draws():
    score = build_score(tiny_arrays(12), 0, 12, 100.0)
    notes = {"wrong_rate": 0.05, "missed_rate": 0.05, "extra_rate": 0.03, "seed": 2}
    plain = apply_deviations(score, DeviationSpec(**notes))
    both = apply_deviations(score, DeviationSpec(**notes, local_tempo_bars=3, local_tempo_pct=25.0))
    key = lambda take: sorted((e["kind"], e["bar"], e["score_index"], e["pitch"])          # noqa: E731
                              for e in take.events if e["kind"] in ("missed", "wrong", "extra"))
    assert key(plain) == key(both) and plain.counts == both.counts and plain.labels == both.labels
    timing = [e for e in both.events if e["kind"] in ("rushing", "dragging")]
    assert len(timing) == 3
    assert np.diff(sorted(e["bar"] for e in timing)).min() > 1                  # never adjacent
    other = apply_deviations(score, DeviationSpec(local_tempo_bars=3, local_tempo_pct=25.0, seed=2))
    assert [e["bar"] for e in other.events] == [e["bar"] for e in timing]      # the same bars for the seed


def test_local_tempo_spec_fields():
    with pytest.raises(CorpusGenerationError, match="local_tempo_pct"):
        DeviationSpec(local_tempo_pct=95.0)
    with pytest.raises(CorpusGenerationError, match="local_tempo_bars"):
        DeviationSpec(local_tempo_bars=-1)
    with pytest.raises(CorpusGenerationError, match="local_tempo_bars"):
        DeviationSpec(local_tempo_bars=1.5)
    assert "local_tempo_bars" not in DeviationSpec(wrong_rate=0.1).to_dict()   # older manifests unchanged
    spec = DeviationSpec(local_tempo_bars=2, local_tempo_pct=20.0, seed=1)
    assert DeviationSpec.from_dict(spec.to_dict()) == spec and not spec.is_clean
    half = spec.scaled(0.5)
    assert half.local_tempo_bars == 2 and half.local_tempo_pct == pytest.approx(10.0)


def test_default_spec_keeps_the_corpus():
    """Golden: deviations, labels and counts of planned takes as before events and local tempo existed."""
    import hashlib
    import json

    from pipelines.demo_corpus.generate import plan_piece
    from pipelines.demo_corpus.pieces import DEMO_PIECES

    rows = []
    for i in (0, 1):
        rows += [(t.spec.to_dict(), t.labels, t.counts) for t in plan_piece(DEMO_PIECES[i], i, 4, 0, 20.0).takes]
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()
    assert digest == "ea7b78ce43bcfe54b7b1da9da42d6b961880c1e5ce3889acea51212acef25030"


def test_bar_truth_gathers_kinds_per_bar():
    events = [{"kind": "missed", "bar": 3}, {"kind": "wrong", "bar": 3}, {"kind": "missed", "bar": 3},
              {"kind": "dragging", "bar": 1, "tempo_pct": -20.0}]
    take = Take(notes=np.zeros(0), pedal=np.zeros(0), spec=DeviationSpec(), measures={}, labels={}, counts={},
                events=events)
    assert bar_truth(take) == {1: {"dragging"}, 3: {"missed", "wrong"}}
    assert list(bar_truth(take)) == [1, 3]
