"""Ray Data glue for preprocessing: corpus records in, Parquet feature shards + manifest out.

The per-recording work is `pipelines.features.processor.RecordingProcessor` (plain Python); this module only
wraps it in an actor pool (heavy set-up once per actor), streams records through it and writes the
rows. Output layout under `out`:

    segments-<run>/*.parquet   rows of pipelines.features.rows.SEGMENT_SCHEMA
    manifest.json        counts, per-recording status and errors, columns, config fingerprint
    config.yaml          the resolved config

Each run writes a new `segments-<run>/` directory (a Parquet file per recording) and publishes it by writing
`manifest.json` last; a rerun onto the same output replaces the published set (no duplicated rows).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from pipelines.config import Config, config_from_dict, save_config
from pipelines.features.rows import SEGMENT_SCHEMA
from pipelines.features.splits import assign_splits, normalise_split_name
from pipelines.io import storage
from pipelines.io.errors import one_line

log = logging.getLogger("pianoeval.preprocess")
SEGMENTS_DIR = "segments"
STATUS_COLUMNS = ["recording_id", "segment_index", "split", "augment", "status", "error", "source_uri",
                  "piece_id"]


def load_records(input_uri: str, config: Config, layout: str = "auto") -> list[dict[str, Any]]:
    """Corpus records as plain dicts, each with its train/val/test split (grouped by piece)."""
    from pipelines.io.corpora import read_corpus

    recordings = [dataclasses.asdict(r) for r in read_corpus(input_uri, layout)]
    corpus_splits = [normalise_split_name(r.get("split")) for r in recordings]
    if recordings and all(corpus_splits):
        for record, split in zip(recordings, corpus_splits):
            record["split"] = split
        return recordings
    piece_scores: dict[str, list[float]] = {}
    for r in recordings:
        if r.get("labels"):
            piece_scores.setdefault(r["piece_id"], []).append(float(np.nanmean(list(r["labels"].values()))))
    splits = assign_splits([r["piece_id"] for r in recordings], config.data.split_fractions,
                           config.data.split_seed,
                           {p: float(np.mean(v)) for p, v in piece_scores.items()} or None)
    for record in recordings:
        record["split"] = splits[record["piece_id"]]
    return recordings


class ProcessRecordings:
    """Ray Data callable class: a batch of JSON-encoded records in; each record's feature rows written to a
    Parquet file of its own under `segments_uri`; a small table (recording id, rows written) out.

    The rows never pass through the object store: an actor holds one recording's rows at a time, whatever the
    corpus's size. A file's name comes from its recording id, so a recording retried after its worker died
    replaces its own file (exactly once); a local file is written under a temporary name and renamed, an S3
    object appears whole when its upload completes."""

    def __init__(self, config_dict: dict, segments_uri: str, soundfont: str | None = None, torch_threads: int = 1,
                 total: int = 0) -> None:
        import torch

        from pipelines.features.processor import RecordingProcessor

        self.total = total
        self.storage_retry_s = float(config_dict.get("data", {}).get("storage_retry_s", 120.0))
        torch.set_num_threads(torch_threads)  # a reused worker may have started with another count
        self.processor = RecordingProcessor(config_from_dict(config_dict), soundfont=soundfont)
        self.segments_uri = segments_uri
        self.fs, self.path = storage.resolve(segments_uri)
        self.fs.create_dir(self.path, recursive=True)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids, counts, retries, failures = [], [], [], []
        for text in batch["record"]:
            record = json.loads(text)
            written, tries, failure = self._process_and_write(record)
            ids.append(str(record["recording_id"]))
            counts.append(written)
            retries.append(tries)
            failures.append(failure)
            if self.total and not failure:
                from pipelines.console import tick
                tick("recordings preprocessed", self.total)
        return {"recording_id": np.asarray(ids, dtype=object), "rows": np.asarray(counts, dtype=np.int64),
                "storage_retries": np.asarray(retries, dtype=np.int64), "failure": np.asarray(failures, dtype=object)}

    def _process_and_write(self, record: dict) -> tuple[int, int, str]:
        """(rows written, storage retries, "" or why the storage failed). Unreachable storage (a read or the
        write) is retried with backoff for data.storage_retry_s; a write the storage refuses is not retried.
        Either failure is the run's, not the recording's: it is returned, and the driver stops unpublished."""
        deadline = time.monotonic() + self.storage_retry_s
        delay, tries = 0.5, 0
        name = record_file_name(record["recording_id"])
        while True:
            try:
                rows = self.processor(record)
                try:
                    write_rows(self.fs, self.path, name, rows)
                except OSError as exc:        # pyarrow's I/O errors; a bad row (ArrowInvalid) still raises
                    raise _write_error(storage.join(self.segments_uri, name), exc) from None
                return len(rows), tries, ""
            except storage.StorageUnavailable as exc:
                if time.monotonic() + delay > deadline:
                    return 0, tries, f"{one_line(exc)} (still unreachable after {tries} retries)"
                log.warning("%s: storage unreachable, retrying in %.1f s: %s", record["recording_id"], delay, exc)
                time.sleep(delay)
                tries += 1
                delay = min(2 * delay, 10.0)
            except storage.StorageError as exc:
                return 0, tries, one_line(exc)


def _write_error(uri: str, exc: OSError) -> storage.StorageError:
    """The storage error of a failed write of a recording's rows: a 404 that S3 gives for a new object while
    it fails is retried like an unreachable endpoint instead of failing the run (`storage._explain`)."""
    return storage._explain(uri, exc, writing=True)


def record_file_name(recording_id: str) -> str:
    """The Parquet file of one recording's rows: the same name on every attempt."""
    import hashlib

    return f"rec-{hashlib.sha1(str(recording_id).encode('utf-8')).hexdigest()}.parquet"


def write_rows(fs, path: str, name: str, rows: list[dict]) -> None:
    """Rows to `path/name`, whole or not at all (local: a temporary name renamed; S3: one upload)."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows, schema=SEGMENT_SCHEMA)
    final = f"{path}/{name}"
    if isinstance(fs, pafs.LocalFileSystem):
        temporary = f"{path}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
        pq.write_table(table, temporary, filesystem=fs)
        fs.move(temporary, final)
    else:
        pq.write_table(table, final, filesystem=fs)


def published_segments(out_uri: str) -> str:
    """The URI of a feature set's published shards: the directory its manifest.json names (each run writes
    a new `segments-<run>` directory and publishes it by writing the manifest last), or `segments/` of a
    feature set written before that (or by hand) without a manifest naming one."""
    manifest_uri = storage.join(out_uri, "manifest.json")
    if storage.exists(manifest_uri):
        try:
            name = json.loads(storage.read_text(manifest_uri)).get("segments_dir") or SEGMENTS_DIR
        except ValueError:
            raise storage.StorageError(f"{manifest_uri}: not a readable manifest (JSON)") from None
        if "/" in name or name.startswith("."):
            raise storage.StorageError(f"{manifest_uri}: segments_dir {name!r} is not a directory name")
        return storage.join(out_uri, name)
    legacy = storage.join(out_uri, SEGMENTS_DIR)
    if storage.exists(legacy):
        return legacy
    raise storage.StorageError(f"{out_uri}: no preprocessed features here (no manifest.json; did "
                               "jobs/preprocess.py finish?)")


def _segments_path(out_uri: str, segments_uri: str | None = None) -> tuple[Any, str]:
    fs, path = storage.resolve(segments_uri or published_segments(out_uri))
    return fs, path


def _remove_unpublished(out_uri: str, keep: str) -> None:
    """Shard directories of earlier runs and of runs that failed before publishing (never `keep`)."""
    fs, root = storage.resolve(out_uri)
    import pyarrow.fs as pafs

    for info in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
        name = info.base_name
        if info.type == pafs.FileType.Directory and name != keep and (
                name == SEGMENTS_DIR or name.startswith(f"{SEGMENTS_DIR}-")):
            try:
                fs.delete_dir(info.path)
            except OSError as exc:     # leftovers cost space, not correctness: readers follow the manifest
                log.warning("could not remove %s: %s", info.path, exc)


def run_preprocess(input_uri: str, out_uri: str, config: Config, *, layout: str = "auto",
                   num_actors: int | None = None, soundfont: str | None = None) -> dict[str, Any]:
    """Preprocess a corpus on Ray Data; returns the manifest (also written to `out/manifest.json`)."""
    import ray

    started = time.time()
    storage.check_bucket(out_uri)
    records = load_records(input_uri, config, layout)
    if not records:
        raise storage.StorageError(f"{input_uri}: no recordings found")
    data = config.data
    num_actors = num_actors or data.num_actors or default_num_actors(data.num_cpus_per_task)
    items = [{"record": json.dumps(r)} for r in records]
    # a recording whose worker dies (a decoder crash, out of memory) is retried max_retries times and then
    # dropped from the stream instead of failing the run or being retried for ever; it becomes an error row
    # below (the default, unbounded restarts, let one poison file hold a job for hours)
    ray.data.DataContext.get_current().max_errored_blocks = len(items)
    # a new directory per run, published by writing manifest.json last: until then readers keep reading the
    # previous run's shards, and a run that fails leaves them as they were
    segments_name = f"{SEGMENTS_DIR}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:6]}"
    segments_uri = storage.join(out_uri, segments_name)
    fs, path = _segments_path(out_uri, segments_uri)
    # the actors write the rows themselves (ProcessRecordings): with Ray Data's write tasks, actors holding every
    # CPU left the writes none and finished rows filled the object store until everything stopped (PercePiano
    # on 2 CPUs); zero-CPU write tasks ran but each started a fresh worker, a third of the actors' pace
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(
        ProcessRecordings,
        fn_constructor_kwargs={"config_dict": config.to_dict(), "segments_uri": segments_uri, "soundfont": soundfont,
                               "total": len(items)},
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=min(num_actors, len(items))),
        num_cpus=data.num_cpus_per_task,
        max_restarts=data.max_retries,
        max_task_retries=data.max_retries,
    )
    storage_retries = 0
    for batch in ds.iter_batches(batch_size=None):   # drives the pipeline; the rows are in storage already
        storage_retries += int(np.sum(batch["storage_retries"]))
        failed = [str(f) for f in batch["failure"] if f]
        if failed:                   # the storage, not an input: stop now, publish nothing
            raise storage.StorageError(f"preprocessing stopped, nothing published to {out_uri} (readers keep its "
                                       f"previous features; rerun to finish): {failed[0]}")
    _write_crash_rows(records, fs, path, data.max_retries)
    manifest = summarise(out_uri, records, config, time.time() - started, segments_uri=segments_uri)
    manifest["segments_dir"] = segments_name
    manifest["storage_retries"] = storage_retries
    storage.write_text(storage.join(out_uri, "manifest.json"), json.dumps(manifest, indent=2))
    save_config(config, storage.join(out_uri, "config.yaml"))
    _remove_unpublished(out_uri, keep=segments_name)
    return manifest


def default_num_actors(cpus_per_actor: float) -> int:
    """As many preprocessing actors as the cluster's CPUs hold (at least one)."""
    import ray

    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    return max(1, int(cpus // cpus_per_actor))


def _write_crash_rows(records: list[dict], fs, path: str, max_retries: int) -> None:
    """An error row for every record the run wrote nothing for: its worker died on it max_retries + 1 times
    and Ray Data dropped it. Written into the run's own (unpublished) shard directory."""
    from pipelines.features.rows import error_row

    import pyarrow.fs as pafs

    written = fs.get_file_info(path).type == pafs.FileType.Directory
    seen = set(pads.dataset(path, filesystem=fs, format="parquet").to_table(columns=["recording_id"])
               .column("recording_id").to_pylist()) if written else set()
    lost = [r for r in records if r["recording_id"] not in seen]
    if not lost:
        return
    rows = [error_row(r, f"{r.get('audio_uri') or r.get('midi_uri') or r['recording_id']}: processing failed: "
                         f"the worker died on it {max_retries + 1} times (see the Ray logs)") for r in lost]
    log.warning("%d recordings crashed their workers: %s", len(lost), ", ".join(r["recording_id"] for r in lost[:5]))
    fs.create_dir(path, recursive=True)
    write_rows(fs, path, f"crashed-{uuid.uuid4().hex[:8]}.parquet", rows)


def read_status_table(out_uri: str, segments_uri: str | None = None) -> pa.Table:
    """The bookkeeping columns of every row of the published shards (or of `segments_uri`)."""
    fs, path = _segments_path(out_uri, segments_uri)
    return pads.dataset(path, filesystem=fs, format="parquet").to_table(columns=STATUS_COLUMNS)


def summarise(out_uri: str, records: list[dict], config: Config, seconds: float,
              segments_uri: str | None = None) -> dict[str, Any]:
    """Counts per status and split, the error list, and what each record became."""
    table = read_status_table(out_uri, segments_uri).to_pylist()
    ok_rows = [r for r in table if r["status"] == "ok"]
    errors = [{"recording_id": r["recording_id"], "source_uri": r["source_uri"], "error": r["error"]}
              for r in table if r["status"] == "error"]
    seen = {r["recording_id"] for r in table}
    missing = [r["recording_id"] for r in records if r["recording_id"] not in seen]
    ok_recordings = {r["recording_id"] for r in ok_rows}
    return {
        "input_recordings": len(records),
        "ok_recordings": len(ok_recordings),
        "error_recordings": len(errors),
        "missing_recordings": missing,        # must stay empty: every input yields rows
        "segments": len([r for r in ok_rows if not r["augment"]]),
        "augmented_segments": len([r for r in ok_rows if r["augment"]]),
        "segments_per_split": dict(Counter(r["split"] for r in ok_rows if not r["augment"])),
        "recordings_per_split": dict(Counter(r["split"] for r in records)),
        "errors": errors,
        "columns": SEGMENT_SCHEMA.names,
        "config_fingerprint": config.fingerprint(),
        "seconds": round(seconds, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def verdict(manifest: dict[str, Any], max_error_rate: float) -> tuple[int, str | None]:
    """The preprocessing job's exit status and its one-line reason: 2 when a recording yielded no row, 1 when
    more than `max_error_rate` of the recordings failed, else 0."""
    failed, total = manifest["error_recordings"], max(manifest["input_recordings"], 1)
    if manifest["missing_recordings"]:
        return 2, f"{len(manifest['missing_recordings'])} recordings produced no row"
    if failed / total > max_error_rate:
        return 1, (f"{failed} of {manifest['input_recordings']} recordings failed ({failed / total:.0%} > "
                   f"--max-error-rate {max_error_rate:.0%})")
    return 0, None


def format_summary(manifest: dict[str, Any], out_uri: str) -> str:
    lines = [
        f"preprocessed {manifest['input_recordings']} recordings in {manifest['seconds']} s: "
        f"{manifest['ok_recordings']} ok, {manifest['error_recordings']} errors",
        f"segments: {manifest['segments']} (+{manifest['augmented_segments']} augmented) "
        f"per split {manifest['segments_per_split']}",
    ]
    for err in manifest["errors"]:
        lines.append(f"  error: {err['error']}")
    missing = manifest.get("missing_recordings") or []
    if missing:
        lines.append(f"  {len(missing)} recordings produced no row (a bug: please report it): "
                     f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    lines.append(f"output: {storage.join(out_uri, manifest.get('segments_dir', SEGMENTS_DIR))} "
                 "(published by manifest.json beside it)")
    return "\n".join(lines)


def read_segments(data_uri: str, columns: list[str] | None = None, filter_ok: bool = True):
    """A Ray Dataset over the preprocessed segment rows (status ok only by default)."""
    import ray

    fs, path = _segments_path(data_uri)
    ds = ray.data.read_parquet(path, filesystem=fs, columns=columns)
    if filter_ok:
        ds = ds.filter(lambda row: row["status"] == "ok")
    return ds


def read_segments_table(data_uri: str, columns: list[str] | None = None, filter_ok: bool = True) -> pa.Table:
    """The same rows as one in-memory Arrow table (small corpora, evaluation)."""
    fs, path = _segments_path(data_uri)
    table = pads.dataset(path, filesystem=fs, format="parquet").to_table(columns=columns)
    if filter_ok and "status" in table.column_names:
        table = table.filter(pa.compute.equal(table["status"], "ok"))
    return table
