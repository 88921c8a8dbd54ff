"""Listing a library or a manifest, content hashes, and what is counted rather than scored."""
from __future__ import annotations

import csv
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.scoring.inputs import InputError, hash_entries, list_inputs


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture()
def library(tmp_path: Path) -> Path:
    root = tmp_path / "lib"
    _touch(root / "a" / "take one.wav", b"audio-1")
    _touch(root / "a" / "take one.mid", b"midi-score")
    _touch(root / "a" / "take one.musicxml", b"xml-score")          # preferred over the MIDI
    _touch(root / "b" / "Étude ü.FLAC", b"audio-2")                 # any case, any script
    _touch(root / "b" / "voice.opus", b"audio-3")
    _touch(root / "c" / "orphan.mid", b"lonely score")
    _touch(root / "c" / "notes.txt", b"text")
    _touch(root / "out" / "old.wav", b"an output, not an input")
    return root


def test_prefix_listing_pairs_scores_and_counts_everything_else(library: Path):
    entries, others = list_inputs(str(library), exclude=[str(library / "out")])
    by_id = {e["recording_id"]: e for e in entries}
    assert sorted(by_id) == ["a/take one", "b/voice", "b/Étude ü"]
    assert by_id["a/take one"]["score_uri"].endswith("take one.musicxml")
    assert by_id["b/Étude ü"]["score_uri"] is None
    assert [Path(u).name for u in others["unmatched_scores"]] == ["orphan.mid"]
    assert [Path(u).name for u in others["other_files"]] == ["notes.txt"]
    # the unused MIDI of "take one" is neither scored nor lost: it is not listed as unmatched
    # because its stem has a recording (the MusicXML was chosen for it)


def test_hashes_follow_content_and_name_missing_files(library: Path):
    entries, _ = list_inputs(str(library), exclude=[str(library / "out")])
    first = {e["recording_id"]: e["content_hash"] for e in hash_entries(entries)}
    (library / "a" / "take one.musicxml").write_bytes(b"another score")
    second = {e["recording_id"]: e["content_hash"] for e in hash_entries(entries)}
    assert first["a/take one"] != second["a/take one"]              # the score is part of the content
    assert first["b/voice"] == second["b/voice"]
    (library / "b" / "voice.opus").unlink()
    gone = {e["recording_id"]: e for e in hash_entries(entries)}["b/voice"]
    assert "no such file" in gone["hash_error"] and "voice.opus" in gone["hash_error"]


def test_csv_manifest_with_relative_paths_and_midi_entries(tmp_path: Path):
    _touch(tmp_path / "audio" / "x.wav")
    _touch(tmp_path / "midi" / "y.mid")
    _touch(tmp_path / "scores" / "y.musicxml")
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["recording_id", "audio_uri", "performance_midi_uri", "score_uri"])
        w.writerow(["x", "audio/x.wav", "", ""])
        w.writerow(["y", "", "midi/y.mid", str(tmp_path / "scores" / "y.musicxml")])
    entries, others = list_inputs(str(manifest))
    by_id = {e["recording_id"]: e for e in entries}
    assert by_id["x"]["audio_uri"] == str(tmp_path / "audio" / "x.wav")
    assert by_id["y"]["audio_uri"] is None and by_id["y"]["midi_uri"].endswith("midi/y.mid")
    assert all("content_hash" in e for e in hash_entries(entries))
    assert others == {"unmatched_scores": [], "other_files": []}


def test_parquet_manifest(tmp_path: Path):
    _touch(tmp_path / "x.wav")
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"recording_id": ["x"], "audio_uri": ["x.wav"]}), path)
    entries, _ = list_inputs(str(path))
    assert entries[0]["audio_uri"] == str(tmp_path / "x.wav") and entries[0]["score_uri"] is None


@pytest.mark.parametrize("rows, message", [
    ([["id", "path"], ["x", "x.wav"]], "needs columns recording_id and audio_uri"),
    ([["recording_id", "audio_uri"], ["x", "a.wav"], ["x", "b.wav"]], "appears twice"),
    ([["recording_id", "audio_uri"]], "no rows"),
])
def test_malformed_manifests_fail_with_one_line(tmp_path: Path, rows, message):
    manifest = tmp_path / "bad.csv"
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    with pytest.raises(InputError, match=message) as info:
        list_inputs(str(manifest))
    assert "\n" not in str(info.value) and "bad.csv" in str(info.value)


def test_missing_input_is_one_line(tmp_path: Path):
    with pytest.raises(InputError, match="no such file or prefix"):
        list_inputs(str(tmp_path / "nowhere"))
