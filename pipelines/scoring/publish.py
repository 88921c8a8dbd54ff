"""Where a scoring run's results go, and how a run is published atomically.

    <out>/runs/<run_id>/results/part-00000.parquet ...   result rows (pipelines/scoring/results.py)
    <out>/runs/<run_id>/manifest.json                    written last: counts, errors, durations, config,
                                                         model version, the list of result files
    <out>/latest.json                                    {"run_id", "manifest"}: replaced after the manifest

A reader that follows `latest.json` to a manifest and reads exactly the files it lists never sees half a
run: part files are written whole (a local file is written beside its name and renamed; an S3 object is
one PUT), and a run without its manifest is not published. A killed run leaves the previous run visible;
the next run reuses the rows the killed one had written, and those of `--limit` runs (`previous_results`).
"""
from __future__ import annotations

import io
import json
import secrets
import time
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.io import storage

RUNS_DIR = "runs"
RESULTS_DIR = "results"
MANIFEST = "manifest.json"
LATEST = "latest.json"
KEY_COLUMNS = ["recording_id", "content_hash", "model_version", "status", "error_kind", "scored_in_run"]


_last_run_ms = 0


def new_run_id() -> str:
    """Sortable by start time, to the millisecond: 20261126T150102.345Z-3fa9c2. Two ids made in one process
    within the same millisecond get successive milliseconds, so they still sort in the order they were made."""
    global _last_run_ms
    ms = max(int(time.time() * 1000), _last_run_ms + 1)
    _last_run_ms = ms
    now = ms / 1000.0
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
    return f"{stamp}-{secrets.token_hex(3)}"


def run_uri(out_uri: str, run_id: str) -> str:
    return storage.join(out_uri, RUNS_DIR, run_id)


def write_table(uri: str, table: pa.Table) -> None:
    """One Parquet file, written whole (see the module docstring)."""
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    storage.write_bytes(uri, sink.getvalue())


def read_table(uri: str, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(pa.BufferReader(storage.read_bytes(uri)), columns=columns)


class PartWriter:
    """Buffers result rows and writes them as numbered part files of at most `rows_per_part` rows."""

    def __init__(self, run: str, schema: pa.Schema, rows_per_part: int) -> None:
        self.run, self.schema, self.rows_per_part = run, schema, max(1, rows_per_part)
        self.rows: list[dict[str, Any]] = []
        self.files: list[str] = []
        self.written = 0

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.rows_per_part:
            self.flush()

    def add_table(self, table: pa.Table) -> None:
        self.flush()
        for start in range(0, table.num_rows, self.rows_per_part):
            self._write(table.slice(start, self.rows_per_part))

    def flush(self) -> None:
        if self.rows:
            self._write(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def _write(self, table: pa.Table) -> None:
        name = f"part-{len(self.files):05d}.parquet"
        write_table(storage.join(self.run, RESULTS_DIR, name), table.cast(self.schema))
        self.files.append(f"{RESULTS_DIR}/{name}")
        self.written += table.num_rows


def publish(out_uri: str, run_id: str, manifest: dict[str, Any], update_latest: bool = True) -> None:
    """Write the run's manifest, then point `latest.json` at it."""
    run = run_uri(out_uri, run_id)
    manifest_uri = storage.join(run, MANIFEST)
    storage.write_text(manifest_uri, json.dumps(manifest, indent=2, default=str))
    if update_latest:
        storage.write_text(storage.join(out_uri, LATEST), json.dumps(
            {"run_id": run_id, "manifest": f"{RUNS_DIR}/{run_id}/{MANIFEST}", "published": manifest["finished"]},
            indent=2))


def latest_run(out_uri: str) -> tuple[str, dict[str, Any]] | None:
    """(run_id, manifest) of the published run, or None before the first."""
    pointer = storage.join(out_uri, LATEST)
    if not storage.exists(pointer):
        return None
    data = json.loads(storage.read_text(pointer))
    manifest = json.loads(storage.read_text(storage.join(out_uri, data["manifest"])))
    return data["run_id"], manifest


def read_latest(out_uri: str, columns: list[str] | None = None) -> pa.Table | None:
    """Every row of the published run (what a downstream reader does), or None before the first run."""
    found = latest_run(out_uri)
    if found is None:
        return None
    run_id, manifest = found
    run = run_uri(out_uri, run_id)
    tables = [read_table(storage.join(run, f), columns) for f in manifest["result_files"]]
    return pa.concat_tables(tables) if tables else None


def _runs_since(out_uri: str, after: str) -> list[str]:
    """Run ids newer than `after` with result parts: runs killed before their manifest, and `--limit` runs
    (complete, but never published as latest)."""
    runs = storage.join(out_uri, RUNS_DIR)
    if not storage.exists(runs):
        return []
    found = set()
    for entry in storage.list_files(runs, suffixes=(".parquet", ".json"), with_hash=False):
        rel = entry.uri.split(f"/{RUNS_DIR}/", 1)[-1]
        found.add(rel.split("/", 1)[0])
    return [run_id for run_id in sorted(found) if run_id > after]


def previous_results(out_uri: str) -> list[str]:
    """Result files whose rows may be carried forward: the published run's, then those of every run since
    (killed or `--limit` runs; newest last, so its rows win)."""
    files: list[str] = []
    after = ""
    found = latest_run(out_uri)
    if found is not None:
        run_id, manifest = found
        files += [storage.join(run_uri(out_uri, run_id), f) for f in manifest["result_files"]]
        after = run_id
    for run_id in _runs_since(out_uri, after):
        parts = storage.join(run_uri(out_uri, run_id), RESULTS_DIR)
        if storage.exists(parts):
            files += [e.uri for e in storage.list_files(parts, suffixes=(".parquet",), with_hash=False)]
    return files


def iter_tables(files: list[str], columns: list[str] | None = None) -> Iterator[tuple[str, pa.Table]]:
    for uri in files:
        try:
            yield uri, read_table(uri, columns)
        except Exception:  # a part cut short by a crash is not a result: skip it, its rows are redone
            continue
