"""Per-bar feedback: inserted errors are found in their bars, a clean take gets no flag, the row contract."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.demo_corpus.deviations import DeviationSpec, apply_deviations
from pipelines.demo_corpus.generate import plan_piece
from pipelines.demo_corpus.library import inserted_errors
from pipelines.demo_corpus.pieces import DEMO_PIECES
from pipelines.demo_corpus.renditions import natural_rendition
from pipelines.scoring import feedback as F

NAMES = ["note_accuracy", "rhythmic_precision", "dynamics_control", "articulation", "pedaling", "tone"]


@pytest.fixture(scope="module")
def piece():
    spec = DEMO_PIECES[3]                                          # a music21 score, 12 bars
    score = plan_piece(spec, 3, 1, 0, 30.0).score
    base = natural_rendition(score, 4, spec.pedal_beats)
    return score, apply_deviations(score, DeviationSpec(seed=4), base=base), base


def _found(flags) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for f in flags:
        for bar in range(f["bar"], f["last_bar"] + 1):
            out.setdefault(bar, []).append(f["kind"])
    return out


def test_a_clean_take_gets_no_flag_and_every_bar_is_measured(piece):
    score, clean, _ = piece
    result = F.analyse(score, clean.performance(), NAMES)
    assert result["flags"] == [] and result["observation"] == ""
    bars = result["bars"]
    assert [b["bar"] for b in bars] == list(range(1, score.n_bars + 1))          # MIDI scores: bars from 1
    assert all(b["missed"] == b["wrong"] == b["extra"] == 0 for b in bars)
    assert sum(b["matched"] for b in bars) == len(score.notes)
    assert all(b["end_s"] > b["start_s"] for b in bars)
    assert all(abs(b["tempo_pct"]) < F.TEMPO_FLAG_PCT for b in bars if np.isfinite(b["tempo_pct"]))


def test_missed_wrong_and_dragged_bars_are_flagged_where_they_were_played(piece):
    score, _, base = piece
    perf, truth = inserted_errors(score, base, missed_bars=[2], wrong_bars=[6], dragged_bar=8)
    assert truth == {3: ["missed"], 7: ["wrong"], 9: ["dragging"]}
    result = F.analyse(score, perf, NAMES)
    assert _found(result["flags"]) == truth, result["flags"]
    by_kind = {f["kind"]: f for f in result["flags"]}
    assert by_kind["missed"]["reason"] == "bar 3: 2 missed notes"
    assert by_kind["missed"]["dimension"] == "note_accuracy"
    assert by_kind["wrong"]["reason"] == "bar 7: 1 wrong note"
    assert by_kind["dragging"]["dimension"] == "rhythmic_precision"
    assert by_kind["dragging"]["reason"].startswith("bar 9: dragging ") and "%" in by_kind["dragging"]["reason"]
    assert result["observation"].startswith(("Note accuracy: ", "Rhythmic precision: "))


def test_flags_use_the_scores_own_bar_numbers_and_the_schemas_names(piece):
    score, _, base = piece
    perf, _ = inserted_errors(score, base, missed_bars=[4], wrong_bars=[])
    score.bar_numbers = np.arange(score.n_bars) + 10                                 # as MusicXML numbers them
    try:
        flags = F.analyse(score, perf, ["timing", "pedal_clarity"])["flags"]
    finally:
        score.bar_numbers = None
    assert [(f["bar"], f["kind"], f["dimension"]) for f in flags] == [(14, "missed", "missed")]
    assert flags[0]["reason"].startswith("bar 14:")


def test_musicxml_scores_keep_their_measure_numbers():
    import music21

    from pipelines.io.notation import load_score
    path = str(music21.corpus.getWork("bwv269"))                  # a chorale that opens with a pickup bar 0
    score = load_score(path)
    assert score.bar_numbers is not None and list(score.bar_numbers[:3]) == [0, 1, 2]
    assert len(score.bar_numbers) == score.n_bars


def test_runs_of_bars_are_merged_into_one_flag():
    bars = [dict(bar=i + 1, index=i, start_s=2.0 * i, end_s=2.0 * i + 2, score_notes=8, matched=8, missed=0,
                 wrong=0, extra=0, unclear=0, onset_dev_ms=0.0, tempo_pct=0.0, unsteady_ms=5.0, velocity=64.0,
                 velocity_contrast=0.0, duration_ratio=0.9, pedal_down_pct=80.0, pedal_held_changes=0)
            for i in range(8)]
    for i in (3, 4, 5):
        bars[i]["missed"] = 1
    bars[5]["tempo_pct"] = 25.0
    flags = F.flag_bars(bars, NAMES)
    assert [(f["bar"], f["last_bar"], f["kind"]) for f in flags] == [(4, 6, "missed"), (6, 6, "rushing")]
    assert flags[0]["reason"] == "bars 4-6: 3 missed notes"
    assert flags[1]["reason"] == "bar 6: rushing 25 %"
    assert F.observation(flags, bars) == "Note accuracy: bars 4-6: 3 missed notes."


def test_transcribed_extra_notes_and_pedal_are_not_flagged_from_audio():
    bar = dict(bar=1, index=0, start_s=0.0, end_s=2.0, score_notes=8, matched=8, missed=0, wrong=0, extra=4,
               unclear=0, onset_dev_ms=0.0, tempo_pct=float("nan"), unsteady_ms=float("nan"), velocity=64.0,
               velocity_contrast=float("nan"), duration_ratio=0.1, pedal_down_pct=float("nan"),
               pedal_held_changes=0)
    assert F.bar_findings(bar, [bar], perf_source="transcription") == {}
    assert set(F.bar_findings(bar, [bar], perf_source="midi")) == {"extra", "articulation"}


def test_written_touch_is_flagged_against_its_marks_and_notated_lengths_against_their_own_norm():
    """Slurred notes played detached and staccato notes held are flagged as such; a bar's notes at 0.2x of
    their length are clipped against a score MIDI (played-back lengths) and normal against MusicXML's
    notated lengths, which human pianists play at 0.53x (median bar)."""
    nan = float("nan")
    bar = dict(bar=1, index=0, start_s=0.0, end_s=2.0, score_notes=8, matched=8, missed=0, wrong=0, extra=0,
               unclear=0, onset_dev_ms=0.0, tempo_pct=nan, unsteady_ms=nan, velocity=64.0, velocity_contrast=nan,
               duration_ratio=0.6, legato_ratio=0.9, staccato_ratio=0.25, pedal_down_pct=nan, pedal_held_changes=0)
    assert F.bar_findings(bar, [bar], perf_source="midi", notated=True) == {}
    detached = dict(bar, legato_ratio=0.2)
    assert F.bar_findings(detached, [detached], perf_source="midi", notated=True)["articulation"][1] == \
        "slurred notes detached (played 20% of their length)"
    held = dict(bar, staccato_ratio=1.3)
    assert "staccato notes held" in F.bar_findings(held, [held], perf_source="midi", notated=True)["articulation"][1]
    assert F.bar_findings(detached, [detached], perf_source="transcription", notated=True) == {}
    short = dict(bar, duration_ratio=0.2, legato_ratio=nan, staccato_ratio=nan)
    assert "clipped" in F.bar_findings(short, [short], perf_source="midi")["articulation"][1]
    assert F.bar_findings(short, [short], perf_source="midi", notated=True) == {}


def test_bars_measure_the_touch_their_score_writes():
    """measure_bars on a performance whose slurred bars are played legato and staccato bars short: each bar
    reports its own written touch, and nothing is flagged; the same performance with its slurred notes
    detached gets 'slurred notes detached' flags."""
    import dataclasses

    from benchmarks.bench_alignment import PerformanceStyle, render_performance, synthetic_score
    from pipelines.io.notes import MARK_LEGATO, MARK_STACCATO

    def run(legato: float):
        rng = np.random.default_rng(0)
        sp = render_performance(synthetic_score(rng, n_bars=8), PerformanceStyle(), rng)
        score = dataclasses.replace(sp.score, notes=sp.score.notes.copy(), source_format="musicxml")
        score.notes["mark"] = np.where(score.notes["bar"] % 2 == 0, MARK_LEGATO, MARK_STACCATO)
        notes = sp.perf.notes.copy()
        for i, k in enumerate(sp.perf_score_index):
            if k >= 0:
                target = legato if score.notes["mark"][k] == MARK_LEGATO else 0.25
                length = notes["offset_s"][i] - notes["onset_s"][i]
                notes["offset_s"][i] = notes["onset_s"][i] + length * target / 0.95
        return F.analyse(score, dataclasses.replace(sp.perf, notes=notes), NAMES)

    good = run(0.95)
    assert all(b["legato_ratio"] == pytest.approx(0.95, abs=0.1) for b in good["bars"][0::2])
    assert all(b["staccato_ratio"] == pytest.approx(0.25, abs=0.05) for b in good["bars"][1::2])
    assert not [f for f in good["flags"] if f["kind"] == "articulation"]
    bad = run(0.15)
    reasons = [f["reason"] for f in bad["flags"] if f["kind"] == "articulation"]
    assert len(reasons) == 4 and all("slurred notes detached (played 1" in r for r in reasons), reasons


def test_without_a_score_low_stretches_become_time_ranges():
    starts = np.arange(10) * 5.0
    ends = starts + 10.0
    scores = np.full((10, 2), 70.0)
    scores[4:6, 0] = 45.0                                         # 0:20-0:35 far below on the first dimension
    sigma = np.full((10, 2), 5.0)
    overall = np.array([66.0, 70.0])
    flags = F.time_flags(starts, ends, scores, sigma, overall, ["note_accuracy", "tone"], [False, False])
    assert [(f["start_s"], f["end_s"], f["dimension"]) for f in flags] == [(20.0, 35.0, "note_accuracy")]
    assert flags[0]["reason"] == "0:20-0:35: note accuracy 21 points below this recording's 66"
    assert F.time_observation(flags) == "Listen back to 0:20-0:35: note accuracy 21 points below this recording's 66."
    assert F.time_flags(starts, ends, scores, sigma, overall, ["note_accuracy", "tone"], [True, False]) == []
    wide = np.full((10, 2), 30.0)                                 # the model unsure about the windows: no flag
    assert F.time_flags(starts, ends, scores, wide, overall, ["note_accuracy", "tone"], [False, False]) == []


def test_model_attention_and_window_scores_are_pooled_onto_bars():
    bars = [dict(start_s=0.0, end_s=5.0, attention=np.nan, window_scores=[]),
            dict(start_s=5.0, end_s=10.0, attention=np.nan, window_scores=[])]
    curve = np.array([0.1] * 5 + [0.1] * 5)
    curve[:5] = 0.15
    curve[5:] = 0.05                                              # three times the attention in the first half
    F.add_model_to_bars(bars, curve=curve / curve.sum(), curve_hop_s=1.0, starts=np.array([0.0, 5.0]),
                        ends=np.array([5.0, 10.0]), scores=np.array([[80.0], [40.0]]), duration_s=10.0)
    assert bars[0]["attention"] == pytest.approx(1.5) and bars[1]["attention"] == pytest.approx(0.5)
    assert bars[0]["window_scores"] == [80.0] and bars[1]["window_scores"] == [40.0]
