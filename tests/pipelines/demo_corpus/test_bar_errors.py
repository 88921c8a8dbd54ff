"""Evaluation takes for per-bar feedback: real pieces with errors known bar by bar, their truth files, and
the matching of flagged bars against the truth."""
from __future__ import annotations

import json

import numpy as np
import pretty_midi
import pytest
import soundfile as sf

from pipelines.demo_corpus import bar_errors as B
from pipelines.demo_corpus.deviations import NOTE_ERROR_KINDS, TIMING_KINDS, bar_truth
from pipelines.demo_corpus.pieces import CorpusGenerationError


@pytest.fixture(scope="module")
def takes():
    return B.bar_error_takes(seed=0, n_pieces=3)


def _kinds(take) -> set[str]:
    return {e["kind"] for e in take.events}


def test_four_takes_per_piece_with_the_errors_of_their_variant(takes):
    assert [t.name.split("/")[1] for t in takes] == list(B.VARIANTS) * 3
    assert takes[0].name == "mozart_k265_var1/clean"
    for piece in range(3):
        clean, notes, timing, both = (t.take for t in takes[4 * piece: 4 * piece + 4])
        assert clean.events == [] and clean.spec.is_clean
        assert _kinds(notes) <= set(NOTE_ERROR_KINDS) and {"missed", "wrong"} <= _kinds(notes)
        assert _kinds(timing) <= set(TIMING_KINDS) and 2 <= len(timing.events) <= 3
        assert all(15.0 <= abs(e["tempo_pct"]) <= 25.0 for e in timing.events)
        # both = the notes take's notes and the timing take's bars (one deviation seed per piece)
        note_key = lambda take: [(e["kind"], e["score_index"], e["pitch"]) for e in take.events   # noqa: E731
                                 if e["kind"] in NOTE_ERROR_KINDS]
        assert sorted(note_key(both)) == sorted(note_key(notes))
        assert [e["bar"] for e in both.events if e["kind"] in TIMING_KINDS] == [e["bar"] for e in timing.events]
        # one natural rendition under all four: the timing take keeps the clean take's notes
        assert np.array_equal(np.sort(clean.notes["pitch"]), np.sort(timing.notes["pitch"]))
        n_played = notes.counts["n_score_notes_played"]
        assert notes.counts["n_missed"] == round(0.04 * n_played) and notes.counts["n_extra"] == round(0.02 * n_played)


def test_takes_are_deterministic(takes):
    again = B.bar_error_takes(seed=0, n_pieces=3)
    assert all(np.array_equal(a.take.notes, b.take.notes) and a.take.events == b.take.events
               for a, b in zip(takes, again))
    other = B.bar_error_takes(seed=1, n_pieces=1)
    assert other[1].take.events != takes[1].take.events
    with pytest.raises(CorpusGenerationError, match="n_pieces 0"):
        B.bar_error_takes(n_pieces=0)
    with pytest.raises(CorpusGenerationError, match="variant 'sloppy'"):
        B.bar_error_takes(variants=("sloppy",))


def test_truth_record_numbers_bars_as_the_score_does(takes):
    score, take = takes[3].score, takes[3].take                   # K265, notes and timing
    record = B.truth_record(score, take)
    assert record["bars"] == {str(b + 1): sorted(k) for b, k in bar_truth(take).items()}
    assert all(e["bar_number"] == e["bar"] + 1 for e in record["events"])
    json.dumps(record)                                            # JSON-ready: plain ints, floats, strings
    score.bar_numbers = np.arange(score.n_bars) + 10              # as a MusicXML score prints them
    try:
        renumbered = B.truth_record(score, take)
    finally:
        score.bar_numbers = None
    assert set(renumbered["bars"]) == {str(b + 10) for b in bar_truth(take)}


def test_writer_saves_score_performance_audio_and_truth(takes, tmp_path):
    chosen = takes[8:12]                                          # Bach's prelude: 8 short bars
    index = B.write_bar_error_takes(str(tmp_path), chosen[2:], audio=True)
    assert [e["name"] for e in index["takes"]] == [t.name for t in chosen[2:]]
    for entry, t in zip(index["takes"], chosen[2:]):
        truth = json.loads((tmp_path / entry["truth"]).read_text())
        assert truth == json.loads(json.dumps(B.truth_record(t.score, t.take)))
        midi = pretty_midi.PrettyMIDI(str(tmp_path / entry["midi"]))
        assert len(midi.instruments[0].notes) == len(t.take.notes)
        audio, sr = sf.read(tmp_path / entry["audio"])
        assert len(audio) / sr > t.take.notes["offset_s"].max() - 0.5
    score_midi = pretty_midi.PrettyMIDI(str(tmp_path / index["takes"][0]["score"]))
    assert len(score_midi.instruments[0].notes) == len(chosen[0].score.notes)
    assert json.loads((tmp_path / B.INDEX_FILE).read_text()) == json.loads(json.dumps(index))
    dry = B.write_bar_error_takes(str(tmp_path / "dry"), chosen[:1], audio=False)
    assert dry["takes"][0]["audio"] is None and not list((tmp_path / "dry").rglob("*.flac"))


def test_flagged_bars_and_hits():
    bars = [{"bar": 10 + i, "index": i} for i in range(6)]        # the score numbers its bars from 10
    flags = [{"bar": 11, "last_bar": 13, "kind": "missed"}, {"bar": 12, "last_bar": 12, "kind": "rushing"},
             {"bar": 15, "last_bar": 15, "kind": "dragging"}, {"bar": 10, "last_bar": 10, "kind": "dynamics"}]
    flagged = B.flagged_bars({"bars": bars, "flags": flags})
    assert flagged == {0: {"dynamics"}, 1: {"missed"}, 2: {"missed", "rushing"}, 3: {"missed"}, 5: {"dragging"}}
    truth = {1: {"missed"}, 2: {"dragging", "wrong"}, 4: {"extra"}}
    hits = B.bar_hits(truth, flagged)
    assert hits["missed"] == {"truth": 1, "flagged": 3, "hits": 1}
    assert hits["timing"] == {"truth": 1, "flagged": 2, "hits": 1}        # rushing or dragging: timing
    assert hits["wrong"] == {"truth": 1, "flagged": 0, "hits": 0}
    assert hits["extra"] == {"truth": 1, "flagged": 0, "hits": 0}
