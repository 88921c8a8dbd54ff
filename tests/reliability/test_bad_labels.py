"""Bad label tables (issue 14): NaN, out-of-range, non-numeric, duplicate and unknown ids, broken files and odd
file names. The reader used by training (`--labels`) and by the corpus readers gives a table or one error line
naming the file."""
from __future__ import annotations

import csv
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.io.corpora import CorpusError, read_maestro
from pipelines.io.labels_table import LabelsTableError, read_labels_table
from pipelines.training.run import _labels_lookup
from tests.reliability.conftest import assert_one_line_error

HEADER = ["recording_id", "tone", "pedaling"]

# name -> (rows after the header, expected fragment of the error or a dict result)
CSV_CASES = {
    "nan.csv": ([["a", "nan", "10"]], "outside 0..100"),
    "NaN-capital.csv": ([["a", "NaN", "10"]], "outside 0..100"),
    "inf.csv": ([["a", "inf", "10"]], "outside 0..100"),
    "negative.csv": ([["a", "-0.5", "10"]], "outside 0..100"),
    "above-100.csv": ([["a", "100.01", "10"]], "outside 0..100"),
    "huge.csv": ([["a", "1e308", "10"]], "outside 0..100"),
    "not-a-number.csv": ([["a", "good", "10"]], "not a number"),
    "duplicate-id.csv": ([["a", "1", "2"], ["a", "3", "4"]], "appears twice"),
    "duplicate-id-spaces.csv": ([["a", "1", "2"], [" a ", "3", "4"]], "appears twice"),
    "blank-id.csv": ([["", "1", "2"]], "has no recording_id"),
    "short-row.csv": ([["a", "5"]], {"a": {"tone": 5.0}}),
    "blank-values.csv": ([["a", "", " "]], {"a": None}),
    "edges.csv": ([["a", "0", "100"]], {"a": {"tone": 0.0, "pedaling": 100.0}}),
}


def _write_csv(path, header, rows) -> str:
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])
    return str(path)


@pytest.mark.parametrize("name", sorted(CSV_CASES))
def test_csv_tables(tmp_path, name):
    rows, expected = CSV_CASES[name]
    uri = _write_csv(tmp_path / name, HEADER, rows)
    if isinstance(expected, dict):
        assert read_labels_table(uri) == expected
    else:
        with pytest.raises(Exception) as err:
            read_labels_table(uri)
        assert expected in assert_one_line_error(err, name, (LabelsTableError,))


@pytest.mark.parametrize("name, content", [
    ("zero-byte.csv", b""),
    ("binary.csv", b"\xff\xfe\x00\x01garbage\x00" * 40),
    ("no-id-column.csv", b"id,tone\na,1\n"),
    ("zero-byte.parquet", b""),
    ("random.parquet", bytes(range(256)) * 8),
])
def test_broken_files(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(Exception) as err:
        read_labels_table(str(tmp_path / name))
    assert_one_line_error(err, name, (LabelsTableError,))


@pytest.mark.parametrize("values, expected", [
    ([float("nan")], "outside 0..100"),
    ([101.0], "outside 0..100"),
    ([None], None),
])
def test_parquet_values(tmp_path, values, expected):
    path = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"recording_id": ["a"], "tone": pa.array(values, pa.float64())}), path)
    if expected is None:
        assert read_labels_table(str(path)) == {"a": None}
    else:
        with pytest.raises(Exception) as err:
            read_labels_table(str(path))
        assert expected in assert_one_line_error(err, path.name, (LabelsTableError,))


def test_training_lookup_of_a_table_without_schema_columns(tmp_path):
    uri = _write_csv(tmp_path / "mood only.csv", ["recording_id", "mood"], [["a", "50"]])
    with pytest.raises(Exception) as err:
        _labels_lookup(uri, ["tone", "pedaling"])
    assert "no column matches" in assert_one_line_error(err, "mood only.csv", (LabelsTableError,))


def _maestro(root, ids):
    root.mkdir(parents=True, exist_ok=True)
    columns = ["canonical_composer", "canonical_title", "split", "year", "midi_filename", "audio_filename",
               "duration", "recording_id"]
    rows = [["C", "T", "train", "2004", f"{i}.mid", f"{i}.wav", "10", i] for i in ids]
    _write_csv(root / "maestro-v3.0.0.csv", columns, rows)


def test_unknown_ids_in_a_corpus_labels_table(tmp_path):
    root = tmp_path / "corpus ünïcode"
    _maestro(root, ["a", "b"])
    _write_csv(root / "labels.csv", HEADER, [["a", "10", "20"], ["zz-unknown", "30", "40"]])
    with pytest.raises(Exception) as err:
        read_maestro(str(root))
    message = assert_one_line_error(err, "labels.csv", (CorpusError,))
    assert "unknown recording id" in message and "zz-unknown" in message


@pytest.mark.parametrize("name", ["with space.csv", "quote's \"q\".csv", "étiquettes – ü.csv", "ラベル.csv"])
def test_odd_file_names(tmp_path, name):
    good = _write_csv(tmp_path / name, HEADER, [["a", "10", ""]])
    assert read_labels_table(good) == {"a": {"tone": 10.0}}
    assert math.isclose(float(_labels_lookup(good, ["tone"])["a"].split(":")[1].strip(" }")), 10.0)
    bad = _write_csv(tmp_path / ("bad " + name), HEADER, [["a", "nan", ""]])
    with pytest.raises(Exception) as err:
        read_labels_table(bad)
    assert_one_line_error(err, "bad " + name, (LabelsTableError,))


def test_training_names_the_ids_of_a_labels_table_that_the_feature_set_lacks(tmp_path):
    from pipelines.training.run import select_rows, selection_line, unknown_label_ids

    meta = pa.table({"recording_id": ["a", "a", "b"], "split": ["train", "train", "val"], "augment": ["", "", ""],
                     "status": ["ok", "ok", "ok"], "labels_json": ["{}"] * 3, "pseudo_json": ["{}"] * 3})
    uri = _write_csv(tmp_path / "ratings.csv", HEADER, [["a", "10", ""], ["b", "20", ""], ["0012", "30", ""],
                                                       ["ghost", "40", ""]])
    lookup = _labels_lookup(uri, ["tone", "pedaling"])
    unknown = unknown_label_ids(lookup, meta)
    assert unknown == ["0012", "ghost"]                       # ids stay strings: "0012" is not 12
    selection = {"stage": "expert", "names": ["tone", "pedaling"], "labels_lookup": lookup}
    train = select_rows(meta, split="train", originals_only=False, **selection).num_rows
    val = select_rows(meta, split="val", originals_only=True, **selection).num_rows
    line = selection_line(meta, train, val, "expert", True, unknown=unknown, labels_uri=uri)
    assert line.startswith("training on 2 train / 1 val segments with the --labels table")
    assert "2 recording ids of" in line and "ratings.csv" in line and "'0012', 'ghost'" in line
    assert "\n" not in line
    assert unknown_label_ids({"a": "{}"}, meta) == []
