"""Corpus readers on generated MAESTRO, library and PercePiano layouts, locally and on S3."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
import soundfile as sf

from model.schema import PERCEPIANO19
from pipelines import constants as C
from pipelines.io import corpora, storage
from pipelines.io.corpora import CorpusError

SR = 8000
MAESTRO_ROWS = [
    {"canonical_composer": "Frédéric Chopin", "canonical_title": "Ballade No. 1 in G Minor, Op. 23", "split": "train",
     "year": "2004", "midi_filename": "2004/perf_a.midi", "audio_filename": "2004/perf_a.wav", "duration": "1.5"},
    {"canonical_composer": "Frédéric Chopin", "canonical_title": "Ballade No. 1 in G Minor, Op. 23", "split": "test",
     "year": "2006", "midi_filename": "2006/perf_b.midi", "audio_filename": "2006/perf_b.wav", "duration": "2.0"},
    {"canonical_composer": "Johann Sebastian Bach", "canonical_title": "Prelude and Fugue in C Major, WTC I",
     "split": "validation", "year": "2006", "midi_filename": "2006/perf_c.midi", "audio_filename": "2006/perf_c.wav",
     "duration": "0.75"},
]


def _wav(path: Path, seconds: float = 0.25) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(SR * seconds)) / SR
    sf.write(path, (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), SR)


def _midi(path: Path, pitches=(60, 64, 67)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pm = pretty_midi.PrettyMIDI()
    inst = pretty_midi.Instrument(0)
    for i, p in enumerate(pitches):
        inst.notes.append(pretty_midi.Note(80, p, 0.2 * i, 0.2 * i + 0.3))
    pm.instruments.append(inst)
    pm.write(str(path))


def _write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> None:
    columns = columns or list(rows[0])
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture()
def maestro_dir(tmp_path) -> Path:
    root = tmp_path / "maestro"
    for row in MAESTRO_ROWS:
        _wav(root / row["audio_filename"])
        _midi(root / row["midi_filename"])
    _write_csv(root / "maestro-v3.0.0.csv", MAESTRO_ROWS)
    return root


@pytest.fixture()
def library_dir(tmp_path) -> Path:
    root = tmp_path / "library"
    _wav(root / "a.wav")
    _midi(root / "a.mid")
    _wav(root / "sub" / "b.flac")
    (root / "sub" / "b.musicxml").write_text("<score-partwise/>")
    _midi(root / "sub" / "b.mid")
    _wav(root / "sub" / "deeper" / "c.ogg")
    (root / "notes.txt").write_text("not audio")
    return root


@pytest.fixture()
def tiny_percepiano(tmp_path) -> Path:
    root = tmp_path / "percepiano"
    names = ["Schubert_D960_mv2_8bars_1_01", "Schubert_D960_mv2_8bars_3_01", "Schubert_D960_mv2_8bars_1_02",
             "Schubert_D960_mv2_8bars_Score_02"]
    for name in names:
        _midi(root / "performances" / f"{name}.mid")
    for seg in ("01", "02"):
        _midi(root / "scores_midi" / f"Schubert_D960_mv2_8bars_Score_{seg}.mid")
        (root / "scores_xml").mkdir(exist_ok=True)
        (root / "scores_xml" / f"Schubert_D960_mv2_8bars_Score_{seg}.musicxml").write_text("<score-partwise/>")
    ratings = np.linspace(0.1, 0.9, 19).tolist()
    labels = {names[0]: ratings + [0], names[1]: ratings[::-1] + [8], names[3]: ratings + [5]}
    (root / "labels_mean.json").write_text(json.dumps(labels))
    return root


# --- MAESTRO ---------------------------------------------------------------------------------

def test_maestro_reads_ids_pieces_splits(maestro_dir):
    recs = corpora.read_maestro(str(maestro_dir))
    assert [r.recording_id for r in recs] == ["2004/perf_a", "2006/perf_b", "2006/perf_c"]
    a, b, c = recs
    assert a.piece_id == b.piece_id == "frederic-chopin-ballade-no-1-in-g-minor-op-23"
    assert c.piece_id != a.piece_id
    assert a.performer_id == a.recording_id and b.performer_id != a.performer_id   # unknown performers
    assert [r.split for r in recs] == ["train", "test", "validation"]
    assert a.duration_s == pytest.approx(1.5)
    assert Path(a.audio_uri).is_file() and Path(a.midi_uri).is_file()
    assert a.score_uri is None and all(r.labels is None for r in recs)
    assert a.extra["year"] == "2004"


def test_maestro_labels_table_blanks_are_missing(maestro_dir):
    _write_csv(maestro_dir / "labels.csv", [
        {"recording_id": "2004/perf_a", "note_accuracy": "80", "tone": ""},
        {"recording_id": "2006/perf_b", "note_accuracy": "", "tone": ""},
    ])
    recs = {r.recording_id: r for r in corpora.read_corpus(str(maestro_dir))}
    assert recs["2004/perf_a"].labels == {"note_accuracy": 80.0}
    assert recs["2006/perf_b"].labels is None            # every dimension blank
    assert recs["2006/perf_c"].labels is None            # no row


def test_maestro_json_table(maestro_dir):
    (maestro_dir / "maestro-v3.0.0.csv").unlink()
    columns = {col: {str(i): row[col] for i, row in enumerate(MAESTRO_ROWS)} for col in MAESTRO_ROWS[0]}
    columns["duration"] = {k: float(v) for k, v in columns["duration"].items()}
    columns["year"] = {k: int(v) for k, v in columns["year"].items()}
    (maestro_dir / "maestro-v3.0.0.json").write_text(json.dumps(columns))
    recs = corpora.read_corpus(str(maestro_dir))
    assert [r.recording_id for r in recs] == ["2004/perf_a", "2006/perf_b", "2006/perf_c"]
    assert recs[2].duration_s == pytest.approx(0.75)


def test_maestro_generator_columns_override(maestro_dir):
    rows = [dict(r, recording_id=f"rec{i}", piece_id="p", performer_id=f"pianist{i % 2}",
                 score_filename="score.mid") for i, r in enumerate(MAESTRO_ROWS)]
    _write_csv(maestro_dir / "maestro-v3.0.0.csv", rows)
    recs = corpora.read_maestro(str(maestro_dir / "maestro-v3.0.0.csv"))   # the table itself
    assert [(r.recording_id, r.piece_id, r.performer_id) for r in recs] == [
        ("rec0", "p", "pianist0"), ("rec1", "p", "pianist1"), ("rec2", "p", "pianist0")]
    assert recs[0].score_uri.endswith("/maestro/score.mid")


def test_maestro_missing_column_is_one_line_error(maestro_dir):
    columns = [c for c in MAESTRO_ROWS[0] if c != "audio_filename"]
    _write_csv(maestro_dir / "maestro-v3.0.0.csv", MAESTRO_ROWS, columns)
    with pytest.raises(CorpusError) as err:
        corpora.read_corpus(str(maestro_dir))
    message = str(err.value)
    assert "\n" not in message and "maestro-v3.0.0.csv" in message and "audio_filename" in message


@pytest.mark.parametrize("rows, needle", [
    ([{"recording_id": "nope", "tone": "50"}], "unknown recording id"),
    ([{"recording_id": "2004/perf_a", "tone": "150"}], "outside 0..100"),
    ([{"recording_id": "2004/perf_a", "tone": "good"}], "not a number"),
    ([{"recording_id": "2004/perf_a", "tone": "1"}, {"recording_id": "2004/perf_a", "tone": "2"}], "appears twice"),
])
def test_maestro_bad_labels_raise(maestro_dir, rows, needle):
    _write_csv(maestro_dir / "labels.csv", rows)
    with pytest.raises(CorpusError, match=needle) as err:
        corpora.read_maestro(str(maestro_dir))
    assert "\n" not in str(err.value) and "labels.csv" in str(err.value)


def test_maestro_duplicate_ids_raise(maestro_dir):
    _write_csv(maestro_dir / "maestro-v3.0.0.csv", MAESTRO_ROWS + [MAESTRO_ROWS[0]])
    with pytest.raises(CorpusError, match="duplicate recording id '2004/perf_a'"):
        corpora.read_maestro(str(maestro_dir))


@pytest.mark.parametrize("field, value", [
    ("audio_filename", "../outside.wav"),
    ("audio_filename", "2004/../../outside.wav"),
    ("midi_filename", "..\\outside.midi"),
    ("midi_filename", "{abs}/outside.midi"),
    ("audio_filename", "file://{abs}/outside.wav"),
    ("score_filename", "../outside.midi"),
])
def test_maestro_entry_outside_the_root_is_refused_on_its_own(maestro_dir, field, value):
    """A table entry naming a file outside the corpus root keeps no URI (nothing of it is read) and says why;
    the other entries are untouched."""
    _wav(maestro_dir.parent / "outside.wav")
    _midi(maestro_dir.parent / "outside.midi")
    value = value.format(abs=maestro_dir.parent)
    rows = [dict(r) for r in MAESTRO_ROWS]
    rows[1][field] = value
    _write_csv(maestro_dir / "maestro-v3.0.0.csv", rows, list(MAESTRO_ROWS[0]) + ["score_filename"])
    recs = corpora.read_maestro(str(maestro_dir))
    assert [r.recording_id for r in recs][0::2] == ["2004/perf_a", "2006/perf_c"]
    bad = recs[1]
    assert bad.audio_uri is None and bad.midi_uri is None and bad.score_uri is None
    error = bad.extra["error"]
    assert "\n" not in error and "maestro-v3.0.0.csv line 3" in error and field in error and repr(value) in error
    assert "outside the corpus root" in error
    for good in (recs[0], recs[2]):
        assert "error" not in good.extra and Path(good.audio_uri).is_file()
        assert Path(good.audio_uri).resolve().is_relative_to(maestro_dir.resolve())


def test_refused_maestro_entry_becomes_its_error_row_without_reading(maestro_dir, monkeypatch):
    from pipelines.config import load_config
    from pipelines.features import processor as P
    from pipelines.preprocess import load_records

    _wav(maestro_dir.parent / "outside.wav")
    rows = [dict(r) for r in MAESTRO_ROWS]
    rows[0]["audio_filename"] = "../outside.wav"
    _write_csv(maestro_dir / "maestro-v3.0.0.csv", rows)
    records = load_records(str(maestro_dir), load_config("tiny"))
    read = []
    monkeypatch.setattr(P.storage, "content_hash", lambda uri: read.append(uri) or "x")
    proc = P.RecordingProcessor.__new__(P.RecordingProcessor)      # no CQT/transcriber set-up needed here
    out = proc(records[0])
    assert read == [] and len(out) == 1 and out[0]["status"] == "error"
    assert "../outside.wav" in out[0]["error"] and "outside the corpus root" in out[0]["error"]


@pytest.mark.parametrize("name, outside", [
    ("2004/a.wav", False), ("a..b.wav", False), ("./x/a.wav", False), ("..", True), ("a/../../b", True),
    ("/etc/passwd", True), ("C:\\x.wav", True), ("s3://other/x.wav", True), ("x\\..\\..\\y", True),
])
def test_leaves_root(name, outside):
    assert corpora.leaves_root(name) is outside


# --- library ---------------------------------------------------------------------------------

def test_library_audio_with_sidecars(library_dir):
    recs = {r.recording_id: r for r in corpora.read_corpus(str(library_dir))}
    assert set(recs) == {"a", "sub/b", "sub/deeper/c"}
    assert recs["a"].score_uri.endswith("/a.mid")
    assert recs["sub/b"].score_uri.endswith("/sub/b.musicxml")          # MusicXML preferred over MIDI
    assert recs["sub/deeper/c"].score_uri is None
    assert recs["sub/b"].piece_id == "b" and recs["sub/b"].performer_id == "unknown"
    assert all(r.labels is None and r.midi_uri is None for r in recs.values())
    assert recs["sub/deeper/c"].audio_uri.endswith("sub/deeper/c.ogg")


def test_library_lists_every_audio_suffix_in_any_case(tmp_path):
    for i, suffix in enumerate(C.AUDIO_EXTENSIONS):
        (tmp_path / f"take{i}{suffix.upper() if i % 2 else suffix}").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not audio")
    recs = corpora.read_library(str(tmp_path))
    assert sorted(r.recording_id for r in recs) == sorted(f"take{i}" for i in range(len(C.AUDIO_EXTENSIONS)))


def test_library_duplicate_stem_raises(library_dir):
    _wav(library_dir / "a.flac")
    with pytest.raises(CorpusError, match="duplicate recording id 'a'"):
        corpora.read_library(str(library_dir))


def test_library_without_audio_raises(tmp_path):
    (tmp_path / "only.txt").write_text("x")
    with pytest.raises(CorpusError, match="no audio files"):
        corpora.read_library(str(tmp_path))


def test_nonexistent_path_is_one_line_error(tmp_path):
    missing = str(tmp_path / "missing")
    for read in (corpora.read_corpus, corpora.read_maestro, corpora.read_library, corpora.read_percepiano):
        with pytest.raises(CorpusError) as err:
            read(missing)
        assert "\n" not in str(err.value) and missing in str(err.value) and "does not exist" in str(err.value)


def test_unknown_layout_raises(library_dir):
    with pytest.raises(CorpusError, match="unknown corpus layout 'midi'"):
        corpora.read_corpus(str(library_dir), layout="midi")


# --- PercePiano ------------------------------------------------------------------------------

def test_tiny_percepiano_layout(tiny_percepiano):
    assert corpora.detect_layout(str(tiny_percepiano)) == "percepiano"
    recs = {r.recording_id: r for r in corpora.read_corpus(str(tiny_percepiano))}
    assert set(recs) == {"Schubert_D960_mv2_8bars_1_01", "Schubert_D960_mv2_8bars_3_01",
                         "Schubert_D960_mv2_8bars_1_02", "Schubert_D960_mv2_8bars_Score_02"}
    rated = recs["Schubert_D960_mv2_8bars_1_01"]
    assert list(rated.labels) == PERCEPIANO19.names
    assert rated.labels["timing"] == pytest.approx(10.0) and rated.labels["interpretation"] == pytest.approx(90.0)
    assert rated.audio_uri is None and rated.midi_uri.endswith("performances/Schubert_D960_mv2_8bars_1_01.mid")
    assert rated.score_uri.endswith("scores_midi/Schubert_D960_mv2_8bars_Score_01.mid")
    assert rated.piece_id == recs["Schubert_D960_mv2_8bars_3_01"].piece_id == "Schubert_D960_mv2_8bars_01"
    unrated = recs["Schubert_D960_mv2_8bars_1_02"]
    assert unrated.labels is None
    assert unrated.performer_id == rated.performer_id == "percepiano-p0"   # player token -> index
    assert recs["Schubert_D960_mv2_8bars_3_01"].performer_id == "percepiano-p8"
    assert rated.extra["composition"] == "Schubert_D960" and rated.extra["movement"] == "Schubert_D960_mv2"
    xml = corpora.read_percepiano(str(tiny_percepiano), use_xml_scores=True)
    assert all(r.score_uri.endswith(".musicxml") for r in xml)


def test_percepiano_orphan_ratings_raise(tiny_percepiano):
    (tiny_percepiano / "performances" / "Schubert_D960_mv2_8bars_3_01.mid").unlink()
    with pytest.raises(CorpusError, match="without a performance"):
        corpora.read_percepiano(str(tiny_percepiano))


def test_percepiano_real_copy(percepiano_dir):
    recs = corpora.read_corpus(str(percepiano_dir))
    assert len(recs) == 1085
    assert len({r.recording_id for r in recs}) == len(recs)
    rated = [r for r in recs if r.labels is not None]
    assert len(rated) == 1073
    values = np.array([[r.labels[n] for n in PERCEPIANO19.names] for r in rated])
    assert values.min() >= 0.0 and values.max() <= 100.0 and values.std() > 5.0
    assert all(r.score_uri is not None and Path(r.score_uri).is_file() for r in recs[:50])
    by_piece: dict[str, set[str]] = {}
    for r in recs:
        by_piece.setdefault(r.piece_id, set()).add(r.performer_id)
    assert all(len(players) > 1 for players in by_piece.values())        # passages shared by players
    assert {r.extra["composition"] for r in recs} == {"Beethoven_WoO80", "Schubert_D960"}


# --- S3 --------------------------------------------------------------------------------------

def _comparable(recs, root: str) -> list[tuple]:
    strip = lambda uri: None if uri is None else uri[len(root):]   # noqa: E731
    return [(r.recording_id, strip(r.audio_uri), strip(r.midi_uri), strip(r.score_uri), r.piece_id,
             r.performer_id, r.labels, r.split) for r in recs]


def test_readers_on_s3(s3_bucket, maestro_dir, library_dir, tiny_percepiano):
    _write_csv(maestro_dir / "labels.csv", [{"recording_id": "2006/perf_b", "tone": "42.5"}])
    for name, local in (("maestro", maestro_dir), ("library", library_dir), ("percepiano", tiny_percepiano)):
        uri = f"{s3_bucket}/corpora/{name}"
        storage.upload_dir(str(local), uri)
        assert corpora.detect_layout(uri) == name
        remote = corpora.read_corpus(uri)
        local_recs = corpora.read_corpus(str(local))
        assert _comparable(remote, uri) == _comparable(local_recs, str(local)), name
        assert all(storage.exists(r.audio_uri or r.midi_uri) for r in remote)
    with pytest.raises(CorpusError, match="does not exist"):
        corpora.read_corpus(f"{s3_bucket}/corpora/nothing-here")


def test_recording_dict_roundtrip(maestro_dir):
    rec = corpora.read_maestro(str(maestro_dir))[0]
    assert corpora.Recording.from_dict(json.loads(json.dumps(rec.to_dict()))) == rec
