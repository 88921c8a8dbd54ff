"""The result rows of `jobs/score.py`: one row per input recording per run (Parquet). Columns:

| column | type | meaning |
| --- | --- | --- |
| recording_id | string | path under the input prefix without its extension, or the manifest's `recording_id` |
| source_uri | string | the audio file (or the performance MIDI when there is no audio) |
| score_uri | string | the written score given with it ("" when none) |
| performance_midi_uri | string | performance MIDI given with it (digital pianos; "" when none) |
| content_hash | string | sha1 over the hashes (ETag / md5) of the audio, performance MIDI and score bytes |
| model_version | string | checkpoint weights + config + calibration + scoring settings, hashed |
| run_id | string | the run that wrote this row |
| scored_in_run | string | the run whose model work produced the numbers (earlier than run_id when skipped) |
| status | string | `ok` (scored in this run), `skipped` (unchanged: `scored_in_run`'s result carried on), `error` |
| error_kind | string | on errors: `input` (the file: corrupt, empty, too short, not audio), `limit` (size, length or |
| | | time limit), `transient` (storage), `crash` (the worker died on it), `internal` |
| message | string | on errors, one line naming the file and the cause; otherwise notes such as a score fallback |
| mode | string | `audio+score`, `audio`, `midi+score` or `midi` (the performance notes came from MIDI) |
| duration_s | float64 | length of the recording, seconds |
| has_score | bool | a score was aligned (per-bar feedback; read by models with a symbolic branch) |
| match_rate | float64 | alignment F-measure of score and performed notes, 0..1 (NaN without a score) |
| score_mismatch | bool | a score was given but did not match the playing (another piece, not piano): assessed |
| | | from audio alone, every dimension flagged low-confidence |
| novelty | float64 | how unlike the feature model's training recordings this one's descriptors are: 1 = as |
| | | familiar as the training music is to itself; above 1 sigma widens, at 2 it is what knowing nothing |
| | | costs (pipelines/training/feature_model.py); NaN without a feature model or an aligned score |
| dimensions | list<string> | dimension names, in the order of the list columns |
| scores | list<float32> | per dimension, 0..100 |
| sigma | list<float32> | per dimension, the calibrated standard deviation on the 0..100 scale |
| low_confidence | list<bool> | per dimension: sigma above `scoring.low_confidence_sigma`, or a mismatched score |
| score_<dim>, sigma_<dim>, low_confidence_<dim> | float32, float32, bool | the same, one column each |
| aggregate, aggregate_sigma | float32 | the schema's weighted aggregate (seed weights unless `aggregate_weights` |
| | | is set) and its sigma (errors taken as fully correlated across dimensions: weighted sum of sigma) |
| window_start_s, window_end_s | list<float64> | the inference windows, seconds |
| window_weight | list<float64> | seconds of the recording each window speaks for (pipelines/scoring/aggregate.py) |
| window_scores, window_sigma | list<list<float32>> | per window, per dimension |
| curve_hop_s | float64 | bin width of the attention curve, seconds |
| attention_curve | list<float32> | where the model listened: bin i covers [i, i+1) x curve_hop_s, sums to 1 |
| bars | list<struct> | with a score: one entry per bar, in score order: its number, where it lies, notes missed, |
| | | wrong and extra, timing, dynamics, articulation and pedal measurements, the model's attention and |
| | | per-window scores over it (every field: pipelines/scoring/feedback.py); empty without a score |
| bar_flags | list<struct> | flagged bars: `{bar, last_bar, dimension, kind, reason, start_s, end_s, severity}`, |
| | | `bar` the score's own bar number (MIDI: from 1; MusicXML: its measure numbers), `dimension` a |
| | | schema name (or the kind of finding where the schema has no dimension for it), `reason` in words |
| time_flags | list<struct> | without a score: `{start_s, end_s, dimension, reason, severity}`, stretches the |
| | | model scores well below the recording's own score |
| observation | string | the single thing most worth practising ("" when nothing stands out) |
| cqt_thumb, cqt_thumb_fps | binary, float64 | uint8 [frames, 88] log-CQT thumbnail (column j = MIDI pitch 21 + j) |
| seconds | float64 | processing time of the recording (prepare + inference) in `scored_in_run` |
| scored_at | string | UTC time the numbers were produced |

Rows of one run live in `<out>/runs/<run_id>/results/part-*.parquet`; the run's `manifest.json` lists them.
"""
from __future__ import annotations

from typing import Any, Sequence

import pyarrow as pa

STATUSES = ("ok", "skipped", "error")
ERROR_KINDS = ("input", "limit", "transient", "crash", "internal")

_FIXED = [
    ("recording_id", pa.string()),
    ("source_uri", pa.string()),
    ("score_uri", pa.string()),
    ("performance_midi_uri", pa.string()),
    ("content_hash", pa.string()),
    ("model_version", pa.string()),
    ("run_id", pa.string()),
    ("scored_in_run", pa.string()),
    ("status", pa.string()),
    ("error_kind", pa.string()),
    ("message", pa.string()),
    ("mode", pa.string()),
    ("duration_s", pa.float64()),
    ("has_score", pa.bool_()),
    ("match_rate", pa.float64()),
    ("score_mismatch", pa.bool_()),
    ("novelty", pa.float64()),
    ("dimensions", pa.list_(pa.string())),
    ("scores", pa.list_(pa.float32())),
    ("sigma", pa.list_(pa.float32())),
    ("low_confidence", pa.list_(pa.bool_())),
]
BAR_STRUCT = pa.struct([
    ("bar", pa.int32()), ("index", pa.int32()), ("start_s", pa.float64()), ("end_s", pa.float64()),
    ("score_notes", pa.int32()), ("matched", pa.int32()), ("missed", pa.int32()), ("wrong", pa.int32()),
    ("extra", pa.int32()), ("unclear", pa.int32()), ("onset_dev_ms", pa.float64()), ("tempo_pct", pa.float64()),
    ("unsteady_ms", pa.float64()), ("velocity", pa.float64()), ("velocity_contrast", pa.float64()),
    ("duration_ratio", pa.float64()), ("legato_ratio", pa.float64()), ("staccato_ratio", pa.float64()),
    ("pedal_down_pct", pa.float64()), ("pedal_held_changes", pa.int32()),
    ("attention", pa.float64()), ("window_scores", pa.list_(pa.float32())),
])
FLAG_STRUCT = pa.struct([
    ("bar", pa.int32()), ("last_bar", pa.int32()), ("dimension", pa.string()), ("kind", pa.string()),
    ("reason", pa.string()), ("start_s", pa.float64()), ("end_s", pa.float64()), ("severity", pa.float32()),
])
TIME_FLAG_STRUCT = pa.struct([
    ("start_s", pa.float64()), ("end_s", pa.float64()), ("dimension", pa.string()), ("reason", pa.string()),
    ("severity", pa.float32()),
])

_TAIL = [
    ("aggregate", pa.float32()),
    ("aggregate_sigma", pa.float32()),
    ("window_start_s", pa.list_(pa.float64())),
    ("window_end_s", pa.list_(pa.float64())),
    ("window_weight", pa.list_(pa.float64())),
    ("window_scores", pa.list_(pa.list_(pa.float32()))),
    ("window_sigma", pa.list_(pa.list_(pa.float32()))),
    ("curve_hop_s", pa.float64()),
    ("attention_curve", pa.list_(pa.float32())),
    ("bars", pa.list_(BAR_STRUCT)),
    ("bar_flags", pa.list_(FLAG_STRUCT)),
    ("time_flags", pa.list_(TIME_FLAG_STRUCT)),
    ("observation", pa.string()),
    ("cqt_thumb", pa.binary()),
    ("cqt_thumb_fps", pa.float64()),
    ("seconds", pa.float64()),
    ("scored_at", pa.string()),
]


def result_schema(names: Sequence[str]) -> pa.Schema:
    """The Parquet schema of result rows for a model with these dimension names."""
    per_dim = []
    for name in names:
        per_dim += [(f"score_{name}", pa.float32()), (f"sigma_{name}", pa.float32()),
                    (f"low_confidence_{name}", pa.bool_())]
    return pa.schema(_FIXED + per_dim + _TAIL)


def base_row(entry: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """A row for an input entry with every result column empty (NaN / empty lists)."""
    nan = float("nan")
    row: dict[str, Any] = {
        "recording_id": entry["recording_id"], "source_uri": entry.get("audio_uri") or entry.get("midi_uri") or "",
        "score_uri": entry.get("score_uri") or "", "performance_midi_uri": entry.get("midi_uri") or "",
        "content_hash": entry.get("content_hash", ""), "model_version": entry.get("model_version", ""),
        "run_id": "", "scored_in_run": "", "status": "error", "error_kind": "", "message": "",
        "mode": entry_mode(entry), "duration_s": nan, "has_score": False, "match_rate": nan,
        "score_mismatch": False, "novelty": nan, "dimensions": list(names), "scores": [], "sigma": [],
        "low_confidence": [],
        "aggregate": nan, "aggregate_sigma": nan, "window_start_s": [], "window_end_s": [], "window_weight": [],
        "window_scores": [], "window_sigma": [], "curve_hop_s": nan, "attention_curve": [], "bars": [],
        "bar_flags": [], "time_flags": [], "observation": "", "cqt_thumb": b"", "cqt_thumb_fps": nan, "seconds": nan,
        "scored_at": "",
    }
    for name in names:
        row.update({f"score_{name}": nan, f"sigma_{name}": nan, f"low_confidence_{name}": False})
    return row


def entry_mode(entry: dict[str, Any]) -> str:
    source = "audio" if entry.get("audio_uri") else "midi"
    return f"{source}+score" if entry.get("score_uri") else source


def error_result(entry: dict[str, Any], names: Sequence[str], kind: str, message: str) -> dict[str, Any]:
    row = base_row(entry, names)
    row.update(status="error", error_kind=kind, message=message)
    return row


def to_table(rows: list[dict[str, Any]], names: Sequence[str]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=result_schema(names))
