"""The one labels-table reader: CSV and Parquet, local and S3, validated, one-line errors."""
from __future__ import annotations

import csv
import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.io import storage
from pipelines.io.labels_table import LabelsTableError, labels_for_dimensions, read_labels_table


def _write_csv(path, rows: list[list[str]]) -> str:
    text = io.StringIO()
    csv.writer(text).writerows(rows)
    path.write_text(text.getvalue())
    return str(path)


def test_csv_blanks_are_missing_and_an_unrated_row_is_none(tmp_path):
    uri = _write_csv(tmp_path / "labels.csv", [["recording_id", "tone", "pedaling"], ["x", "12.5", ""], ["y", "", ""]])
    assert read_labels_table(uri) == {"x": {"tone": 12.5}, "y": None}


def test_parquet_nulls_are_missing(tmp_path):
    table = pa.table({"recording_id": ["a", "b"], "tone": [80.0, None], "pedaling": [None, None]})
    pq.write_table(table, tmp_path / "labels.parquet")
    assert read_labels_table(str(tmp_path / "labels.parquet")) == {"a": {"tone": 80.0}, "b": None}


@pytest.mark.parametrize("rows, needle", [
    ([["recording_id", "tone"], ["a", "150"]], "outside 0..100"),
    ([["recording_id", "tone"], ["a", "good"]], "not a number"),
    ([["recording_id", "tone"], ["a", "nan"]], "outside 0..100"),
    ([["recording_id", "tone"], ["a", "1"], ["a", "2"]], "appears twice"),
    ([["recording_id", "tone"], ["", "1"]], "line 2 has no recording_id"),
    ([["id", "tone"], ["a", "1"]], "lacks a recording_id column"),
])
def test_bad_tables_are_one_line_errors_naming_the_file(tmp_path, rows, needle):
    uri = _write_csv(tmp_path / "labels.csv", rows)
    with pytest.raises(LabelsTableError, match=needle) as err:
        read_labels_table(uri)
    assert "\n" not in str(err.value) and "labels.csv" in str(err.value)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(LabelsTableError, match="absent.csv: cannot read"):
        read_labels_table(str(tmp_path / "absent.csv"))
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(LabelsTableError, match="broken.parquet: not a readable Parquet"):
        read_labels_table(str(tmp_path / "broken.parquet"))


def test_restricted_to_the_schema_dimensions(tmp_path):
    uri = _write_csv(tmp_path / "l.csv", [["recording_id", "tone", "mood"], ["a", "10", "20"], ["b", "", "5"]])
    table = read_labels_table(uri)
    assert labels_for_dimensions(table, ["tone", "pedaling"], uri) == {"a": {"tone": 10.0}, "b": {}}
    with pytest.raises(LabelsTableError, match="no column matches a dimension"):
        labels_for_dimensions(table, ["pedaling"], uri)


def test_reads_from_s3(s3_bucket, tmp_path):
    local = _write_csv(tmp_path / "labels.csv", [["recording_id", "tone"], ["r1", "55"]])
    uri = f"{s3_bucket}/labels/labels.csv"
    storage.upload_file(local, uri)
    assert read_labels_table(uri) == {"r1": {"tone": 55.0}}
