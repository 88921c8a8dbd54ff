"""The aligned descriptors of the feature model: each one reads what its name says off the alignment's per-note
attributes, and changes when (and only when) that property of the performance changes."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.constants import N_PERF_ATTRS, PERF_ATTR_NAMES
from pipelines.features.descriptors import (ALIGNED_FEATURE_NAMES, DESCRIPTOR_NAMES, PERFORMANCE_FEATURE_NAMES,
                                            SCORE_FEATURE_NAMES, TECHNICAL_FEATURE_NAMES, aligned_features,
                                            recording_descriptors, score_features, technical_features)
from pipelines.io.notes import MARK_LEGATO, MARK_STACCATO, SCORE_NOTE_DTYPE, Score

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


def test_the_descriptor_names_are_the_baselines_thirteen_the_aligned_eighteen_the_scores_fifteen_then_sixteen():
    assert len(PERFORMANCE_FEATURE_NAMES) == 13 and len(ALIGNED_FEATURE_NAMES) == 18 and len(SCORE_FEATURE_NAMES) == 15
    assert len(TECHNICAL_FEATURE_NAMES) == 16
    assert DESCRIPTOR_NAMES == (PERFORMANCE_FEATURE_NAMES + ALIGNED_FEATURE_NAMES + SCORE_FEATURE_NAMES
                                + TECHNICAL_FEATURE_NAMES)
    assert len(set(DESCRIPTOR_NAMES)) == 62


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


def _score(n_bars=4, per_bar=4, chord=1, pitch=64, velocity=64, tempo_qpm=120.0, marks=None, pedal=None) -> Score:
    """4/4 bars of `per_bar` onsets a bar, `chord` notes at each (pitch, pitch + 4, ...)."""
    step = 4.0 / per_bar
    rows = [(bar * 4.0 + k * step, step, pitch + 4 * c, velocity, bar, k * step)
            for bar in range(n_bars) for k in range(per_bar) for c in range(chord)]
    notes = np.zeros(len(rows), dtype=SCORE_NOTE_DTYPE)
    for i, (onset, dur, p, v, bar, pos) in enumerate(rows):
        notes[i] = (onset, dur, onset * 60 / tempo_qpm, dur * 60 / tempo_qpm, p, v, bar, pos, 4, 4, 0, i, 0)
    if marks is not None:
        notes["mark"] = marks(len(notes))
    return Score(notes=notes, bar_starts_beat=np.arange(n_bars) * 4.0, tempo_qpm=tempo_qpm,
                 pedal_beats=None if pedal is None else np.asarray(pedal, np.float64))


def _score_named(score) -> dict[str, float]:
    return dict(zip(SCORE_FEATURE_NAMES, score_features(score)))


def test_the_score_descriptors_read_tempo_texture_register_and_marks_by_hand():
    plain = _score_named(_score())
    assert plain["score_bars"] == 4 and plain["score_tempo_qpm"] == 120.0
    assert plain["score_notes_per_beat"] == pytest.approx(1.0) and plain["score_notes_per_s"] == pytest.approx(2.0)
    assert plain["score_polyphony"] == pytest.approx(1.0) and plain["score_duration_beats"] == pytest.approx(1.0)
    assert plain["score_pedal_share"] == 0.0 and plain["score_staccato_share"] == plain["score_legato_share"] == 0.0
    assert plain["score_low_share"] == 0.0 and plain["score_velocity_std"] == 0.0

    # a faster written tempo: more notes a second, the same notes a beat
    fast = _score_named(_score(tempo_qpm=180.0))
    assert fast["score_notes_per_s"] == pytest.approx(3.0)
    assert fast["score_notes_per_beat"] == plain["score_notes_per_beat"]
    # chords: polyphony and density, nothing about tempo
    chords = _score_named(_score(chord=3))
    assert chords["score_polyphony"] == pytest.approx(3.0) and chords["score_notes_per_beat"] == pytest.approx(3.0)
    assert chords["score_tempo_qpm"] == 120.0 and chords["score_pitch_std"] > 0
    # the bass register, the written pedal over half the length, and the marks
    assert _score_named(_score(pitch=40))["score_low_share"] == 1.0
    assert _score_named(_score(pedal=[[0.0, 4.0], [8.0, 12.0]]))["score_pedal_share"] == pytest.approx(0.5)
    marked = _score_named(_score(marks=lambda n: np.where(np.arange(n) % 2, MARK_STACCATO, MARK_LEGATO)))
    assert marked["score_staccato_share"] == pytest.approx(0.5) and marked["score_legato_share"] == pytest.approx(0.5)


def test_an_empty_score_gives_zeros():
    empty = Score(notes=np.zeros(0, dtype=SCORE_NOTE_DTYPE), bar_starts_beat=np.zeros(0))
    assert np.array_equal(score_features(empty), np.zeros(len(SCORE_FEATURE_NAMES)))


def _technical(style, seed=0, pedal_marks=False):
    import dataclasses

    from benchmarks.bench_alignment import PerformanceStyle, render_performance, synthetic_score
    from pipelines.features.align import align
    from pipelines.features.attributes import note_attributes

    rng = np.random.default_rng(seed)
    sp = render_performance(synthetic_score(rng, n_bars=12), dataclasses.replace(PerformanceStyle(), **style), rng)
    if pedal_marks:
        bars = np.append(sp.score.bar_starts_beat, sp.score.notes["onset_beat"].max() + 4.0)
        sp.score.pedal_beats = np.stack([bars[:-1], bars[1:] - 1 / 64], axis=1)
    al = align(sp.score, sp.perf)
    attrs = note_attributes(sp.score, sp.perf, al)
    whole = recording_descriptors(sp.perf, sp.score, al, attrs)
    tech = technical_features(sp.score, sp.perf, al, attrs)
    assert np.allclose(whole[-len(TECHNICAL_FEATURE_NAMES):], tech.astype(np.float32))
    return dict(zip(TECHNICAL_FEATURE_NAMES, tech))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_the_technical_descriptors_grow_with_their_own_fault_and_fill_what_the_score_cannot_give():
    """The pseudo-labels' fault measures reach the trees: onset jitter grows the timing one, a drift grows the
    drift's size whichever way it goes, and the written-pedal ones read -1 unless the score marks the pedal."""
    timing = [_technical({"jitter_s": j})["tech_timing_rms_s"] for j in (0.005, 0.03, 0.08)]
    assert timing == sorted(timing) and timing[-1] > 3 * timing[0]
    steady = _technical({"drift": 0.0})["tech_tempo_drift"]
    rushing, dragging = _technical({"drift": -0.3})["tech_tempo_drift"], _technical({"drift": 0.3})["tech_tempo_drift"]
    assert rushing > steady + 0.1 and dragging > steady + 0.1
    unmarked = _technical({"pedal": "bar"})
    assert unmarked["tech_pedal_written_dry"] == -1.0 and unmarked["tech_pedal_written_held"] == -1.0
    marked, dry = _technical({"pedal": "bar"}, pedal_marks=True), _technical({"pedal": "none"}, pedal_marks=True)
    assert 0.0 <= marked["tech_pedal_written_dry"] < 0.1 < 0.9 < dry["tech_pedal_written_dry"] <= 1.0
    assert all(np.isfinite(v) for v in unmarked.values())


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_the_technical_descriptors_of_one_or_no_played_note_are_finite():
    import dataclasses

    from benchmarks.bench_alignment import PerformanceStyle, render_performance, synthetic_score
    from pipelines.features.align import align

    sp = render_performance(synthetic_score(np.random.default_rng(0), n_bars=2), PerformanceStyle(),
                            np.random.default_rng(0))
    for keep in (1, 0):
        perf = dataclasses.replace(sp.perf, notes=sp.perf.notes[:keep])
        out = technical_features(sp.score, perf, align(sp.score, perf))
        assert len(out) == len(TECHNICAL_FEATURE_NAMES) and np.all(np.isfinite(out))
