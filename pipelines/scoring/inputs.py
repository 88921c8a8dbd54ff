"""What a scoring run scores: the input entries, their content hashes, and the model version.

`--input` is either
- a prefix (local or s3://), listed recursively: every audio file (`constants.AUDIO_EXTENSIONS`, any case)
  is a recording; its score is the file of the same path and stem with a score extension
  (`SCORE_EXTENSIONS`, MusicXML preferred). Score files without a recording of their stem and files that
  are neither audio nor score are counted and listed in the run manifest, never silently dropped; or
- a manifest file (`.csv` or `.parquet`) with columns `recording_id`, `audio_uri` and/or
  `performance_midi_uri`, and optional `score_uri`. Relative paths are relative to the manifest's folder.

An entry is a plain dict: recording_id, audio_uri, midi_uri, score_uri, size (bytes of its largest
file, or -1 if unknown) and, once hashed, content_hash. `content_hash` covers the bytes of every file of
the entry (S3 ETags, md5 of local files), so a replaced recording or score is a changed entry.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable

from pipelines import constants as C
from pipelines.io import storage

# sidecar score extensions, in order of preference (MusicXML carries bars and voices)
SCORE_EXTENSIONS = (".musicxml", ".mxl", ".xml", ".mid", ".midi")
MANIFEST_EXTENSIONS = (".csv", ".parquet", ".pq")
MANIFEST_COLUMNS = ("recording_id", "audio_uri", "performance_midi_uri", "score_uri")
HASH_THREADS = 8


class InputError(ValueError):
    """The input as a whole cannot be read (no such prefix, a malformed manifest); one line naming it."""


def _suffix(uri: str) -> str:
    name = storage.basename(uri)
    return os.path.splitext(name)[1].lower()


def _relative(uri: str, root: str) -> str:
    return uri[len(root):].lstrip("/") if uri.startswith(root) else storage.basename(uri)


def is_manifest(uri: str) -> bool:
    return _suffix(uri) in MANIFEST_EXTENSIONS and not storage.is_dir(uri)


def list_inputs(input_uri: str, exclude: Iterable[str] = ()) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """(entries, other files) for a prefix or a manifest; `exclude`: prefixes not to list (the output)."""
    if not storage.exists(input_uri):
        raise InputError(f"{input_uri}: no such file or prefix")
    if is_manifest(input_uri):
        return read_manifest(input_uri), {"unmatched_scores": [], "other_files": []}
    return list_prefix(input_uri, exclude)


def list_prefix(prefix: str, exclude: Iterable[str] = ()) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    root = storage.join(prefix) if storage.is_s3(prefix) else storage.resolve(prefix)[1]
    skip = [storage.join(e) if storage.is_s3(e) else storage.resolve(e)[1] for e in exclude]
    files = [f for f in storage.list_files(prefix, with_hash=False)
             if not any(f.uri == s or f.uri.startswith(s.rstrip("/") + "/") for s in skip)]
    audio, scores, other = [], {}, []
    for f in files:
        suffix = _suffix(f.uri)
        if suffix in C.AUDIO_EXTENSIONS:
            audio.append(f)
        elif suffix in SCORE_EXTENSIONS:
            stem = _relative(f.uri, root)[: -len(suffix)]
            scores.setdefault(stem, []).append(f)
        else:
            other.append(f.uri)
    entries, used = [], set()
    for f in audio:
        rel = _relative(f.uri, root)
        stem = rel[: -len(_suffix(f.uri))]
        candidates = sorted(scores.get(stem, []), key=lambda s: SCORE_EXTENSIONS.index(_suffix(s.uri)))
        score = candidates[0] if candidates else None
        if score is not None:
            used.add(stem)
        entries.append({"recording_id": stem, "audio_uri": f.uri, "midi_uri": None,
                        "score_uri": score.uri if score else None, "size": f.size,
                        "listed": {"audio": [f.etag, f.size], "score": [score.etag, score.size] if score else None}})
    ids = [e["recording_id"] for e in entries]
    for rid in {r for r in ids if ids.count(r) > 1}:     # a.wav and a.flac side by side: keep both, apart
        for e in entries:
            if e["recording_id"] == rid:
                e["recording_id"] = _relative(e["audio_uri"], root)
    unmatched = sorted(s.uri for stem, group in scores.items() if stem not in used for s in group)
    return entries, {"unmatched_scores": unmatched, "other_files": sorted(other)}


def _manifest_rows(uri: str) -> list[dict[str, Any]]:
    data = storage.read_bytes(uri, max_bytes=storage.MAX_SMALL_FILE_BYTES)
    if _suffix(uri) == ".csv":
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise InputError(f"{uri}: manifest is not UTF-8 text") from None
        reader = csv.DictReader(io.StringIO(text))
        return [dict(r) for r in reader]
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        table = pq.read_table(pa.BufferReader(data))
    except Exception as exc:  # pyarrow's ArrowInvalid and friends
        raise InputError(f"{uri}: not a readable Parquet manifest ({str(exc).splitlines()[0]})") from None
    return table.to_pylist()


def read_manifest(uri: str) -> list[dict[str, Any]]:
    """Entries of a CSV / Parquet manifest (see the module docstring)."""
    rows = _manifest_rows(uri)
    if not rows:
        raise InputError(f"{uri}: manifest has no rows")
    columns = set(rows[0])
    if "recording_id" not in columns or not ({"audio_uri", "performance_midi_uri"} & columns):
        raise InputError(f"{uri}: manifest needs columns recording_id and audio_uri and/or performance_midi_uri "
                         f"(found {', '.join(sorted(map(str, columns)))})")
    base = storage.parent(uri)

    def where(value: Any) -> str | None:
        text = str(value).strip() if value is not None else ""
        if not text or text.lower() == "nan":
            return None
        if storage.is_s3(text) or os.path.isabs(text):
            return text
        return storage.join(base, text)

    entries, seen = [], set()
    for i, row in enumerate(rows):
        rid = str(row.get("recording_id") or "").strip()
        if not rid:
            raise InputError(f"{uri}: row {i + 2} has no recording_id")
        if rid in seen:
            raise InputError(f"{uri}: recording_id {rid!r} appears twice")
        seen.add(rid)
        entries.append({"recording_id": rid, "audio_uri": where(row.get("audio_uri")),
                        "midi_uri": where(row.get("performance_midi_uri")), "score_uri": where(row.get("score_uri")),
                        "size": -1, "listed": {}})
    return entries


def _file_hash(uri: str | None, listed: list | None = None) -> tuple[str, int]:
    """(ETag / md5, size) of one file; ('', 0) for no file. `listed`: [etag, size] from an S3 listing."""
    if not uri:
        return "", 0
    if storage.is_s3(uri) and listed and listed[0]:
        return str(listed[0]), int(listed[1])
    if storage.is_s3(uri):
        bucket, _, key = uri[len("s3://"):].partition("/")
        with storage._errors(uri):
            head = storage.boto3_client().head_object(Bucket=bucket, Key=key)
        return head["ETag"].strip('"'), int(head["ContentLength"])
    _, path = storage.resolve(uri)
    if not os.path.isfile(path):
        raise storage.StorageError(f"{uri}: no such file")
    return storage.content_hash(uri), os.path.getsize(path)


def hash_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry with `content_hash` and `size` set, or with `hash_error` (one line) when a file is missing."""
    out = dict(entry)
    parts, size = [], -1
    listed = entry.get("listed") or {}
    try:
        if not entry.get("audio_uri") and not entry.get("midi_uri"):
            raise storage.StorageError(f"{entry['recording_id']}: the entry has neither audio_uri nor "
                                       "performance_midi_uri")
        for kind, key in (("audio", "audio_uri"), ("midi", "midi_uri"), ("score", "score_uri")):
            digest, nbytes = _file_hash(entry.get(key), listed.get(kind))
            parts.append(f"{kind}:{digest}")
            if kind != "score":
                size = max(size, nbytes)
    except storage.StorageError as exc:
        out["hash_error"] = str(exc)
        return out
    out["size"] = size
    out["content_hash"] = hashlib.sha1("|".join(parts).encode()).hexdigest()[:24]
    return out


def hash_entries(entries: list[dict[str, Any]], threads: int = HASH_THREADS) -> list[dict[str, Any]]:
    """`hash_entry` over many entries with a thread pool (I/O bound: S3 HEADs, local md5)."""
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        return list(pool.map(hash_entry, entries))


ROW_FORMAT = 3          # bumped when rows gain content (2: per-bar feedback, 3: novelty): older rows are rescored


def model_version(checkpoint_uri: str, config_dict: dict, extra: dict[str, Any]) -> str:
    """Hash of the checkpoint's weights (ETag / md5), its config, its calibration and feature model, the scoring
    settings that change numbers and the row format: a new checkpoint, setting or row format rescores everything."""
    from model.checkpoint import WEIGHTS_FILE
    weights = storage.join(checkpoint_uri, WEIGHTS_FILE)
    calibration = storage.join(checkpoint_uri, "calibration.json")
    digest = storage.content_hash(weights)
    calib = storage.read_text(calibration) if storage.exists(calibration) else ""
    from pipelines.training.feature_model import FEATURE_MODEL_FILE, FEATURE_MODEL_NOVELTY
    trees = storage.join(checkpoint_uri, FEATURE_MODEL_FILE)
    reference = storage.join(checkpoint_uri, FEATURE_MODEL_NOVELTY)
    payload = json.dumps({"weights": digest, "config": config_dict, "calibration": calib, "extra": extra,
                          "row_format": ROW_FORMAT,
                          **({"feature_model": storage.content_hash(trees)} if storage.exists(trees) else {}),
                          **({"novelty": storage.content_hash(reference)} if storage.exists(reference) else {})},
                         sort_keys=True, default=str)
    return hashlib.sha1(payload.encode()).hexdigest()[:16]
