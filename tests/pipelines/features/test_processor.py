"""The per-recording processor without Ray: rows per window, augmentation on train only, error rows."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines import constants as C
from pipelines.config import load_config
from pipelines.features.processor import RecordingProcessor
from pipelines.features.pseudo_labels import TECHNICAL_DIMENSIONS
from pipelines.features.rows import SEGMENT_SCHEMA, unpack_array


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    from pipelines.demo_corpus.generate import make_corpus
    from pipelines.preprocess import load_records

    out = str(tmp_path_factory.mktemp("c") / "corpus")
    make_corpus(out, pieces=1, takes=2, seed=0, max_seconds=14)
    return load_records(out, load_config("tiny"))


@pytest.fixture(scope="module")
def processor():
    return RecordingProcessor(load_config("tiny", ["data.augment.copies=1"]))


def test_rows_cover_the_recording_in_overlapping_windows(records, processor):
    record = dict(records[0], split="val")
    rows = processor(record)
    assert all(r["status"] == "ok" for r in rows) and set(rows[0]) == set(SEGMENT_SCHEMA.names)
    starts = [r["start_s"] for r in rows]
    assert starts[0] == 0.0 and all(0 < b - a <= 5.0 + 1e-6 for a, b in zip(starts, starts[1:]))   # >= 50 % overlap
    assert all(b - a == pytest.approx(5.0) for a, b in zip(starts[:-2], starts[1:-1]))   # the last one ends the take
    for r in rows:
        cqt = unpack_array(r["cqt"], "f2", (C.CQT_N_BINS,))
        assert len(cqt) == r["cqt_frames"] and abs(len(cqt) - (r["end_s"] - r["start_s"]) * C.CQT_FRAMES_PER_S) < 3
        assert r["audio_samples"] == pytest.approx((r["end_s"] - r["start_s"]) * C.MERT_SAMPLE_RATE_HZ, abs=2)
        tokens = unpack_array(r["notes"], "i2", (8,))
        times = unpack_array(r["note_times"], "f4")
        assert len(tokens) == len(times) == r["n_notes"] > 0
        assert times.min() >= -0.05 and times.max() <= r["end_s"] - r["start_s"]
        assert tokens[:, 1].min() >= C.OCTUPLE_N_SPECIAL          # bars relative to the window, no PAD
        assert r["has_score"] and r["bar_start"] <= r["bar_end"]
        assert set(json.loads(r["pseudo_json"])) <= set(TECHNICAL_DIMENSIONS)
        assert json.loads(r["labels_json"]) == pytest.approx(record["labels"])
    assert not any(r["augment"] for r in rows)                   # no augmentation outside the training split


def test_every_window_carries_its_whole_recordings_statistics(records, processor):
    """recording_stats: the same vector on each window of a recording, made from all its windows' notes, so a
    model with model.recording_statistics sees the whole performance from any window; another take differs."""
    from model.statistics import n_recording_statistics
    from pipelines.features.processor import recording_stats

    def context(record):
        rows = processor(dict(record, split="val"))
        stats = {r["recording_stats"] for r in rows}
        assert len(stats) == 1
        windows = [(unpack_array(r["notes"], "i2", (8,)), unpack_array(r["note_attrs"], "f4", (C.N_PERF_ATTRS,)),
                    unpack_array(r["note_times"], "f4")) for r in rows]
        vector = unpack_array(stats.pop(), "f4")
        np.testing.assert_array_equal(vector, recording_stats(windows))
        return vector

    first, second = context(records[0]), context(records[1])
    assert first.shape == (n_recording_statistics(C.N_PERF_ATTRS),) and np.abs(first[len(first) // 2:]).sum() > 0
    assert not np.allclose(first, second)


def test_training_split_gets_seeded_augmented_copies(records, processor):
    record = dict(records[1], split="train")
    rows = processor(record)
    augmented = [r for r in rows if r["augment"]]
    assert augmented and len(augmented) < len(rows)
    again = [r for r in processor(record) if r["augment"]]
    assert [r["augment"] for r in again] == [r["augment"] for r in augmented]          # seeded
    assert np.array_equal(unpack_array(again[0]["cqt"], "f2"), unpack_array(augmented[0]["cqt"], "f2"))


def test_a_corrupt_file_yields_one_error_row_naming_it(records, processor, tmp_path):
    bad = tmp_path / "broken.flac"
    bad.write_bytes(b"not audio at all" * 10)
    rows = processor(dict(records[0], audio_uri=str(bad)))
    assert len(rows) == 1 and rows[0]["status"] == "error" and rows[0]["segment_index"] == -1
    assert str(bad) in rows[0]["error"] and "\n" not in rows[0]["error"]
    rows = processor(dict(records[0], score_uri=str(tmp_path / "missing.mid")))
    assert rows[0]["status"] == "error" and "missing.mid" in rows[0]["error"]


def test_a_recording_too_long_to_align_is_an_error_row_not_a_long_wait(records):
    scored = next(r for r in records if r.get("score_uri"))
    bounded = RecordingProcessor(load_config("tiny", ["data.augment.copies=0", "data.max_alignment_cells=1000"]))
    rows = bounded(scored)
    assert len(rows) == 1 and rows[0]["status"] == "error"
    assert "too many notes to align" in rows[0]["error"] and "data.max_alignment_cells" in rows[0]["error"]
    assert "\n" not in rows[0]["error"]


def test_augmented_copies_carry_the_clean_segments_pseudo_labels(records, processor):
    rows = processor(dict(records[1], split="train"))
    clean = [r for r in rows if not r["augment"]]
    augmented = [r for r in rows if r["augment"]]
    assert augmented and any(json.loads(r["pseudo_json"]) for r in clean)
    for copy in {r["augment"] for r in augmented}:
        aug = [r for r in augmented if r["augment"] == copy]
        if len(aug) == len(clean):                      # same windows: the same labels, segment by segment
            assert [r["pseudo_json"] for r in aug] == [r["pseudo_json"] for r in clean]
        else:                                           # a time stretch: a clean segment's labels, or none
            assert all(r["pseudo_json"] in {c["pseudo_json"] for c in clean} | {"{}"} for r in aug)


def test_copy_clean_pseudo_labels_matches_by_bars_then_by_index():
    from pipelines.features.processor import copy_clean_pseudo_labels

    clean = [{"pseudo_json": f'{{"tone": {k}}}', "bar_start": 4 * k, "bar_end": 4 * k + 5} for k in range(3)]
    shifted = [{"pseudo_json": "{}", "bar_start": b, "bar_end": e} for b, e in ((6, 9), (0, 3), (8, 14))]
    copy_clean_pseudo_labels(clean, shifted)            # as many segments, but a stretch moved them over the bars
    assert [r["pseudo_json"] for r in shifted] == [clean[1]["pseudo_json"], clean[0]["pseudo_json"],
                                                  clean[2]["pseudo_json"]]
    stretched = [{"pseudo_json": "{}", "bar_start": b, "bar_end": e} for b, e in ((0, 3), (7, 13))]
    copy_clean_pseudo_labels(clean, stretched)
    assert [r["pseudo_json"] for r in stretched] == [clean[0]["pseudo_json"], clean[2]["pseudo_json"]]
    no_bars = [{"pseudo_json": f'{{"tone": {k}}}', "bar_start": -1, "bar_end": -1} for k in range(2)]
    copied = [{"pseudo_json": "{}", "bar_start": -1, "bar_end": -1} for _ in range(2)]
    copy_clean_pseudo_labels(no_bars, copied)            # no score: by index
    assert [r["pseudo_json"] for r in copied] == [r["pseudo_json"] for r in no_bars]
    scoreless = [{"pseudo_json": '{"tone": 3}', "bar_start": -1, "bar_end": -1}]
    copy_clean_pseudo_labels(clean, scoreless)
    assert scoreless[0]["pseudo_json"] == "{}"                 # nothing to match: no label rather than a wrong one


def test_a_recording_with_audio_trains_on_its_transcription_labelled_by_its_midi(records):
    """The default gives the model what the scoring job sees (audio is transcribed), while the pseudo-labels
    still come from the performance MIDI: the same labels, window by window, as when the MIDI is the notes."""
    record = dict(records[0], split="val")
    assert record["audio_uri"] and record["midi_uri"]
    auto = RecordingProcessor(load_config("tiny", ["data.augment.copies=0"]))(record)
    midi = RecordingProcessor(load_config("tiny", ["data.augment.copies=0",
                                                   "data.performance_source=prefer_midi"]))(record)
    assert {r["perf_source"] for r in auto} == {"transcription"} and {r["perf_source"] for r in midi} == {"midi"}
    assert [(r["start_s"], r["end_s"]) for r in auto] == [(r["start_s"], r["end_s"]) for r in midi]
    assert any(json.loads(r["pseudo_json"]) for r in auto)
    assert [r["pseudo_json"] for r in auto] == [r["pseudo_json"] for r in midi]
    scratch = RecordingProcessor(load_config("tiny", ["data.augment.copies=0", "data.performance_source=transcribe"]))
    assert scratch.label_performance(record, None) is None
    midi_only = dict(record, audio_uri=None)            # rendered from its MIDI: scored from the MIDI too
    assert auto and RecordingProcessor(load_config("tiny")).notes_source(midi_only) == "midi"
    assert scratch.notes_source(midi_only) == "transcription"


def test_augmented_copies_of_a_transcribed_recording_are_transcribed_again(records, monkeypatch):
    processor = RecordingProcessor(load_config("tiny", ["data.augment.copies=1"]))
    rows = processor(dict(records[1], split="train"))
    augmented = [r for r in rows if r["augment"]]
    assert augmented and {r["perf_source"] for r in rows} == {"transcription"}
    calls = []
    cls = type(processor.transcriber)
    real = cls.__call__
    monkeypatch.setattr(cls, "__call__", lambda self, y, sr: calls.append(len(y)) or real(self, y, sr))
    processor(dict(records[1], split="train"))
    assert len(calls) == 2                               # the recording and its one augmented copy
