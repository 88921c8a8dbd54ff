"""The splits table: which recordings train, validate and test, as CSV (local or s3://).

    recording_id,split          split: train, val (validation) or test; blank = left out of this run

Given to `jobs/train.py --splits` and `jobs/evaluate.py --splits`, it replaces the split that preprocessing
wrote into the feature rows, so one feature set serves many protocols and folds (PercePiano's piece,
performer and composition splits; `jobs/splits.py` writes them) without preprocessing again. A recording of
the feature set that the table does not name is left out. Every problem is one `SplitsTableError` line
naming the file.
"""
from __future__ import annotations

import csv
import io
from typing import Mapping

from pipelines.features.splits import normalise_split_name
from pipelines.io import storage
from pipelines.io.labels_table import keyed_rows

ID_COLUMN, SPLIT_COLUMN = "recording_id", "split"


class SplitsTableError(ValueError):
    """A splits table cannot be read or names an unknown split; the message names the file."""


def read_splits_table(uri: str) -> dict[str, str]:
    """{recording_id: "train" | "val" | "test" | ""} ("" = left out), validated."""
    try:
        data = storage.read_bytes(uri, max_bytes=storage.MAX_SMALL_FILE_BYTES)
    except storage.StorageError as exc:
        raise SplitsTableError(f"{uri}: cannot read the splits table: {exc}") from None
    try:
        reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig")))
        rows = list(reader)
        columns = list(reader.fieldnames or [])
    except (UnicodeDecodeError, csv.Error) as exc:
        raise SplitsTableError(f"{uri}: not a readable CSV splits table ({exc})") from None
    missing = [c for c in (ID_COLUMN, SPLIT_COLUMN) if c not in columns]
    if missing:
        raise SplitsTableError(f"{uri}: the splits table lacks the column(s) {', '.join(missing)}")
    out: dict[str, str] = {}
    for line, rec_id, row in keyed_rows(uri, rows, SplitsTableError):
        raw = str(row.get(SPLIT_COLUMN) or "").strip()
        split = normalise_split_name(raw) if raw else ""
        if split is None:
            raise SplitsTableError(f"{uri}: line {line}: split {raw!r} is not train, val or test")
        out[rec_id] = split
    if not any(out.values()):
        raise SplitsTableError(f"{uri}: the splits table puts no recording in train, val or test")
    return out


def write_splits_table(splits: Mapping[str, str], uri: str) -> None:
    """The table of `splits` ({recording_id: split}), sorted by recording id."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([ID_COLUMN, SPLIT_COLUMN])
    for rec_id in sorted(splits):
        writer.writerow([rec_id, splits[rec_id]])
    storage.write_text(uri, buffer.getvalue())


def apply_splits(table, splits: Mapping[str, str] | None):
    """An Arrow table of feature rows with its `split` column replaced by the table's (unnamed: "")."""
    if splits is None:
        return table
    import pyarrow as pa

    new = pa.array([splits.get(r, "") for r in table.column(ID_COLUMN).to_pylist()], pa.string())
    return table.set_column(table.column_names.index(SPLIT_COLUMN), SPLIT_COLUMN, new)
