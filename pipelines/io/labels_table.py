"""The labels table: expert ratings per recording, as CSV or Parquet (local or s3://).

    recording_id, <dimension>, <dimension>, ...     each value 0..100; blank (CSV) or null = not rated

One reader for every user: the corpus readers (a `labels.csv` beside a MAESTRO-layout corpus) and the
training job (`jobs/train.py --labels URI`). Every problem is one `LabelsTableError` line naming the file.
"""
from __future__ import annotations

import csv
import io
import math
from typing import Any

from pipelines.io import storage

ID_COLUMN = "recording_id"
Labels = dict[str, float]


class LabelsTableError(ValueError):
    """A labels table cannot be read or holds an invalid value; the message names the file and the cause."""


def read_labels_table(uri: str) -> dict[str, Labels | None]:
    """{recording_id: {dimension: 0..100} or None when the row rates nothing}, validated."""
    try:
        data = storage.read_bytes(uri, max_bytes=storage.MAX_SMALL_FILE_BYTES)
    except storage.StorageError as exc:
        raise LabelsTableError(f"{uri}: cannot read the labels table: {exc}") from None
    rows, columns = _parquet_rows(uri, data) if uri.endswith(".parquet") else _csv_rows(uri, data)
    if ID_COLUMN not in columns:
        raise LabelsTableError(f"{uri}: the labels table lacks a {ID_COLUMN} column")
    out: dict[str, Labels | None] = {}
    for line, rec_id, row in keyed_rows(uri, rows, LabelsTableError):
        labels = {}
        for dim, value in row.items():
            if dim == ID_COLUMN or dim is None:
                continue
            number = _parse_label(value, f"{uri} line {line} column {dim}")
            if number is not None:
                labels[dim] = number
        out[rec_id] = labels or None
    return out


def keyed_rows(uri: str, rows: list[dict[str, Any]], error: type[Exception]):
    """(line, recording id, row) of a table's rows (line 2 is the first after the header); a row without an id
    or an id seen before raises `error` naming the file."""
    seen: set[str] = set()
    for line, row in enumerate(rows, start=2):
        rec_id = str(row.get(ID_COLUMN) or "").strip()
        if not rec_id:
            raise error(f"{uri}: line {line} has no {ID_COLUMN}")
        if rec_id in seen:
            raise error(f"{uri}: recording id {rec_id!r} appears twice")
        seen.add(rec_id)
        yield line, rec_id, row


def labels_for_dimensions(table: dict[str, Labels | None], names: list[str], uri: str) -> dict[str, Labels]:
    """The table restricted to the dimensions `names`; an error when no column matches any of them."""
    present = {dim for labels in table.values() if labels for dim in labels}
    if not present & set(names):
        raise LabelsTableError(f"{uri}: no column matches a dimension of the schema ({', '.join(names)})")
    return {rid: {d: v for d, v in (labels or {}).items() if d in names} for rid, labels in table.items()}


def _csv_rows(uri: str, data: bytes) -> tuple[list[dict[str, Any]], list[str]]:
    try:
        reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig")))
        return list(reader), list(reader.fieldnames or [])
    except (UnicodeDecodeError, csv.Error) as exc:
        raise LabelsTableError(f"{uri}: not a readable CSV labels table ({exc})") from None


def _parquet_rows(uri: str, data: bytes) -> tuple[list[dict[str, Any]], list[str]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as exc:  # ArrowInvalid and friends: not Parquet, truncated
        raise LabelsTableError(f"{uri}: not a readable Parquet labels table ({str(exc).splitlines()[0]})") from None
    return table.to_pylist(), table.column_names


def _parse_label(value: Any, where: str) -> float | None:
    """A rating in 0..100, or None for blank/null; anything else is an error naming `where`."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise LabelsTableError(f"{where}: label {value!r} is not a number") from None
    if not (math.isfinite(number) and 0.0 <= number <= 100.0):
        raise LabelsTableError(f"{where}: label {number} is outside 0..100")
    return number
