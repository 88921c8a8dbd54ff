"""The feature-row contract between preprocessing, training and scoring.

`jobs/preprocess.py` writes Parquet shards whose rows follow `SEGMENT_SCHEMA`: one row per window
(segment) of a recording, or one row with `status="error"` (and `segment_index=-1`) for a recording
that failed. Arrays are stored as raw little-endian bytes with their lengths beside them (compact,
framework-neutral); `pack_array` / `unpack_array` convert.

| column | type | meaning |
| --- | --- | --- |
| recording_id | string | stable id of the recording (corpus reader) |
| segment_index | int32 | window index within the recording; -1 on an error row |
| split | string | train / val / test (grouped by piece, see pipelines/features/splits.py) |
| piece_id, performer_id | string | grouping keys |
| source_uri, content_hash | string | audio URI and its ETag / md5 |
| start_s, end_s | float64 | window span in the recording, seconds |
| bar_start, bar_end | int32 | score bars covered (0-based, inclusive); -1 without a score |
| audio | binary | float16 mono waveform at 24 kHz, `audio_samples` long (empty if not stored) |
| cqt | binary | float16 log-magnitude CQT, `cqt_frames` x 168 (empty if not stored) |
| notes | binary | int16 OctupleMIDI tokens, `n_notes` x 8 |
| note_attrs | binary | float32 aligned performance attributes, `n_notes` x N_PERF_ATTRS |
| note_times | binary | float32 performed onset of each token, seconds from `start_s` |
| recording_stats | binary | float32 statistics of all the recording's windows (model/statistics.py), on each row |
| perf_features | binary | float32 [62] performance, alignment, score and fault descriptors (descriptors.py); empty: no score |
| has_score | bool | a score was aligned (else the symbolic part is empty: audio-only) |
| perf_source | string | midi / transcription / none |
| labels_json | string | JSON {dimension: 0-100} of expert / ground-truth labels for the recording |
| pseudo_json | string | JSON {dimension: 0-100} of pseudo-labels computed for this window |
| augment | string | "" for an original window, else the applied augmentations |
| status | string | ok / error |
| error | string | one-line reason when status is error |
"""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pyarrow as pa

SEGMENT_SCHEMA = pa.schema([
    ("recording_id", pa.string()),
    ("segment_index", pa.int32()),
    ("split", pa.string()),
    ("piece_id", pa.string()),
    ("performer_id", pa.string()),
    ("source_uri", pa.string()),
    ("content_hash", pa.string()),
    ("start_s", pa.float64()),
    ("end_s", pa.float64()),
    ("bar_start", pa.int32()),
    ("bar_end", pa.int32()),
    ("audio", pa.binary()),
    ("audio_samples", pa.int32()),
    ("cqt", pa.binary()),
    ("cqt_frames", pa.int32()),
    ("notes", pa.binary()),
    ("note_attrs", pa.binary()),
    ("note_times", pa.binary()),
    ("recording_stats", pa.binary()),
    ("perf_features", pa.binary()),
    ("n_notes", pa.int32()),
    ("has_score", pa.bool_()),
    ("perf_source", pa.string()),
    ("labels_json", pa.string()),
    ("pseudo_json", pa.string()),
    ("augment", pa.string()),
    ("status", pa.string()),
    ("error", pa.string()),
])
COLUMNS = SEGMENT_SCHEMA.names


def pack_array(array: np.ndarray, dtype: str) -> bytes:
    """Raw little-endian bytes of `array` cast to `dtype`."""
    return np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()


def unpack_array(data: bytes | None, dtype: str, shape_tail: tuple[int, ...] = ()) -> np.ndarray:
    """Inverse of `pack_array`: a float32/int64-friendly copy shaped (-1, *shape_tail)."""
    if not data:
        return np.zeros((0, *shape_tail), dtype=np.dtype(dtype))
    array = np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<"))
    return array.reshape(-1, *shape_tail) if shape_tail else array.copy()


def dumps_labels(labels: dict[str, float] | None) -> str:
    """JSON of a {dimension: score} dict, dropping missing (None/NaN) values."""
    if not labels:
        return "{}"
    clean = {k: float(v) for k, v in labels.items() if v is not None and not math.isnan(float(v))}
    return json.dumps(clean, sort_keys=True)


def loads_labels(text: str | None) -> dict[str, float]:
    return json.loads(text) if text else {}


def error_row(record: dict[str, Any], message: str) -> dict[str, Any]:
    """The one row a failed recording yields (status=error, message naming file and cause)."""
    row = empty_row()
    row.update(
        recording_id=str(record.get("recording_id", "")),
        piece_id=str(record.get("piece_id", "") or ""),
        performer_id=str(record.get("performer_id", "") or ""),
        source_uri=str(record.get("audio_uri") or record.get("midi_uri") or ""),
        split=str(record.get("split", "") or ""),
        status="error",
        error=message,
    )
    return row


def empty_row() -> dict[str, Any]:
    """A row with every column at its neutral value."""
    return {
        "recording_id": "", "segment_index": -1, "split": "", "piece_id": "", "performer_id": "",
        "source_uri": "", "content_hash": "", "start_s": 0.0, "end_s": 0.0, "bar_start": -1,
        "bar_end": -1, "audio": b"", "audio_samples": 0, "cqt": b"", "cqt_frames": 0, "notes": b"",
        "note_attrs": b"", "note_times": b"", "recording_stats": b"", "perf_features": b"", "n_notes": 0,
        "has_score": False, "perf_source": "none",
        "labels_json": "{}", "pseudo_json": "{}", "augment": "", "status": "ok", "error": "",
    }
