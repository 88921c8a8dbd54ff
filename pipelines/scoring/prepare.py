"""The CPU stage of scoring: one input entry -> its inference windows, grouped in spans (streamed).

A recording is cut into inference windows (`scoring.window_s`, `scoring.overlap`); consecutive windows
are grouped into spans of `scoring.span_windows` windows, and each span becomes one row holding the span's
24 kHz audio (for MERT, once: overlapping windows share it), its CQT frames, and each window's notes.
The audio is decoded as a stream (`pipelines.io.audio_stream.AudioStream`): only one span is in memory at
a time, whatever the recording's length. With a score the performed notes (performance MIDI, or a
transcription of the streamed audio) are aligned to it, as in preprocessing; a score that does not match
the playing (`scoring.min_match_rate`) is set aside and the recording is assessed from audio alone.
Without a score no transcription is needed: the model's symbolic branch reads the score.

Limits checked before any decoding: file size (`scoring.max_file_mb`) and duration from the header
(`scoring.max_duration_s`). The note alignment's DTW holds a (performed notes x score onsets) matrix:
above `scoring.max_alignment_cells` (about 1.2 GB, roughly 40 minutes of dense piano) the score is not
aligned and the recording is assessed from audio alone, with a note saying so. `scoring.timeout_s`
bounds the time per recording: the stage checks it between steps and spans (a single decoder call is
bounded by its own time-outs, e.g. ffmpeg's).
Every failure becomes one error row naming the file and the cause.
"""
from __future__ import annotations

import json
import math
import time
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from pipelines import constants as C
from pipelines.config import Config
from pipelines.features.rows import pack_array
from pipelines.io import storage
from pipelines.io.errors import one_line

SPAN_SCHEMA = pa.schema([
    ("recording_id", pa.string()),
    ("span_index", pa.int32()),
    ("n_spans", pa.int32()),
    ("status", pa.string()),                 # ok / error
    ("error_kind", pa.string()),
    ("message", pa.string()),
    ("info_json", pa.string()),              # duration_s, has_score, match_rate, score_mismatch, notes
    ("span_start_s", pa.float64()),
    ("span_end_s", pa.float64()),
    ("audio", pa.binary()),                  # float16 24 kHz samples of [span_start_s, span_end_s)
    ("cqt", pa.binary()),                    # float16 (frames, 168) log-CQT
    ("cqt_first_frame", pa.int32()),         # index in the whole recording's CQT of the first frame
    ("win_index", pa.list_(pa.int32())),
    ("win_start_s", pa.list_(pa.float64())),
    ("win_end_s", pa.list_(pa.float64())),
    ("win_notes", pa.list_(pa.binary())),    # int16 OctupleMIDI tokens (n, 8)
    ("win_attrs", pa.list_(pa.binary())),    # float32 (n, N_PERF_ATTRS)
    ("win_times", pa.list_(pa.binary())),    # float32 onsets, seconds from the window start
    ("recording_stats", pa.binary()),        # float32 statistics of all the recording's windows (model/statistics.py)
    ("thumb", pa.binary()),                  # uint8 (frames, 88) CQT thumbnail for the report (thumbnail())
    ("thumb_first", pa.int32()),             # index of its first frame in the recording's thumbnail
    ("thumb_fps", pa.float64()),
    ("prepare_s", pa.float64()),
])
THUMB_MAX_FRAMES = 2400                      # a recording's CQT thumbnail: at most this many frames ...
THUMB_MAX_FPS = 10.0                         # ... and at most this many per second
THUMB_LOG_RANGE = (-9.0, 1.5)                # log-CQT values mapped onto 0..255


def thumb_pool(duration_s: float) -> int:
    """CQT frames averaged into one thumbnail frame for a recording of this length."""
    fps = min(THUMB_MAX_FPS, THUMB_MAX_FRAMES / max(duration_s, 1e-3))
    return max(1, int(math.ceil(C.CQT_FRAMES_PER_S / fps)))


def thumbnail(frames: np.ndarray, first: int, pool: int) -> tuple[bytes, int]:
    """Log-CQT frames [F, 168] starting at whole-file frame `first` -> (uint8 [T, 88] bytes, first thumbnail
    frame): frame t averages CQT frames [t pool, (t + 1) pool); column j is MIDI pitch 21 + j (the CQT's
    C1..B7 semitones, two bins each; A0-B0 and C8 stay 0)."""
    if not len(frames):
        return b"", first // pool
    index = (first + np.arange(len(frames))) // pool
    t0 = int(index[0])
    sums = np.zeros((int(index[-1]) - t0 + 1, C.CQT_N_BINS))
    np.add.at(sums, index - t0, frames)
    mean = sums / np.bincount(index - t0)[:, None]
    semis = mean.reshape(len(mean), -1, C.CQT_BINS_PER_OCTAVE // 12).mean(axis=2)        # [T, 84] C1..B7
    lo, hi = THUMB_LOG_RANGE
    out = np.zeros((len(mean), 88), np.uint8)
    out[:, 3:87] = np.clip((semis - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)
    return out.tobytes(), t0


class LimitError(RuntimeError):
    """A recording exceeds a size, duration or time limit."""


def error_kind(exc: BaseException) -> str:
    """input / limit / transient for an exception of the preparation stage."""
    if isinstance(exc, LimitError):
        return "limit"
    if isinstance(exc, storage.StorageError):
        text = str(exc).lower()
        return "input" if ("no such file" in text or "is a directory" in text) else "transient"
    if isinstance(exc, (OSError, TimeoutError)) and not isinstance(exc, FileNotFoundError):
        return "transient"
    return "input"


def span_error(recording_id: str, kind: str, message: str, info: dict | None = None) -> dict[str, Any]:
    return {"recording_id": recording_id, "span_index": 0, "n_spans": 1, "status": "error", "error_kind": kind,
            "message": message, "info_json": json.dumps(info or {}), "span_start_s": 0.0, "span_end_s": 0.0,
            "audio": b"", "cqt": b"", "cqt_first_frame": 0, "win_index": [], "win_start_s": [], "win_end_s": [],
            "win_notes": [], "win_attrs": [], "win_times": [], "recording_stats": b"", "prepare_s": 0.0}


def group_spans(windows: list[tuple[float, float]], per_span: int) -> list[list[int]]:
    """Indices of consecutive windows, `per_span` at a time."""
    return [list(range(i, min(i + per_span, len(windows)))) for i in range(0, len(windows), per_span)]


class _Deadline:
    def __init__(self, uri: str, seconds: float) -> None:
        self.uri, self.seconds, self.start = uri, seconds, time.monotonic()

    def check(self, where: str) -> None:
        if time.monotonic() - self.start > self.seconds:
            raise LimitError(f"{self.uri}: exceeded the time limit of {self.seconds:g} s per recording "
                             f"(scoring.timeout_s) during {where}")


class SpanPreparer:
    """Callable: entry dict -> iterator of span rows (dicts of SPAN_SCHEMA). Heavy set-up once."""

    def __init__(self, config: Config, *, use_audio: bool, use_cqt: bool, use_notes: bool,
                 use_recording_stats: bool = False, use_perf_features: bool = False,
                 soundfont: str | None = None) -> None:
        from pipelines.features.cqt import CQTExtractor

        self.config = config
        self.scoring = config.scoring
        self.use_audio, self.use_cqt, self.use_notes = use_audio, use_cqt, use_notes
        self.use_recording_stats = use_recording_stats and use_notes
        self.use_perf_features = use_perf_features     # the feature model's descriptors, into the recording's info
        self.cqt = CQTExtractor(device="cpu")          # the model's input (use_cqt) and the report's thumbnail
        self.soundfont = soundfont
        self._transcriber = None

    @property
    def transcriber(self):
        if self._transcriber is None:
            from pipelines.features.transcribe import Transcriber
            self._transcriber = Transcriber(backend=self.config.data.transcriber)
        return self._transcriber

    # --- steps -----------------------------------------------------------------------------------
    def _check_size(self, entry: dict) -> None:
        limit = self.scoring.max_file_mb * 1e6
        if entry.get("size", -1) > limit:
            uri = entry.get("audio_uri") or entry.get("midi_uri")
            raise LimitError(f"{uri}: file of {entry['size'] / 1e6:.0f} MB exceeds scoring.max_file_mb "
                             f"({self.scoring.max_file_mb:g} MB)")

    def _stream(self, entry: dict, path: str | None):
        from pipelines.io.audio_stream import AudioStream, probe_audio

        s = self.scoring
        if entry.get("audio_uri"):
            uri = entry["audio_uri"]
            info = probe_audio(path, uri)
            if info.duration_s is not None and info.duration_s > s.max_duration_s:
                raise LimitError(f"{uri}: too long ({info.duration_s:.1f} s > scoring.max_duration_s "
                                 f"{s.max_duration_s:g} s)")
            return AudioStream(path, uri, min_duration_s=s.min_duration_s, max_duration_s=s.max_duration_s)
        from pipelines.features.render import render_midi
        uri = entry["midi_uri"]
        y = render_midi(path, soundfont=self.soundfont, sample_rate=C.CQT_SAMPLE_RATE_HZ, max_seconds=s.max_duration_s)
        return AudioStream.from_array(y, C.CQT_SAMPLE_RATE_HZ, uri, min_duration_s=s.min_duration_s,
                                      max_duration_s=s.max_duration_s)

    def _alignment(self, entry: dict, stream, deadline: _Deadline) -> tuple[Any, dict]:
        """(alignment bundle or None, info) for an entry with a score."""
        from pipelines.features import align as A
        from pipelines.features.attributes import note_attributes
        from pipelines.io.notation import load_score

        score = load_score(entry["score_uri"])
        deadline.check("score reading")
        if entry.get("midi_uri"):
            from pipelines.io.performance import load_performance
            perf = load_performance(entry["midi_uri"])
        else:
            from pipelines.features.transcribe import transcribe_blocks
            perf = transcribe_blocks(self.transcriber, (y44 for _, y44 in stream.blocks()), C.CQT_SAMPLE_RATE_HZ,
                                     keep_evidence=True)
        deadline.check("performance notes")
        if len(perf.notes) == 0:
            return None, {"match_rate": 0.0, "score_mismatch": True,
                          "note": f"{entry['score_uri']}: no notes were found in the playing; assessed from audio "
                                  "alone"}
        cells = float(len(perf.notes)) * float(len(np.unique(score.notes["onset_beat"])))
        if cells > self.scoring.max_alignment_cells:   # the note DTW holds a matrix of this many cells
            return None, {"match_rate": float("nan"), "score_mismatch": False,
                          "note": f"{entry['score_uri']}: too long to align ({len(perf.notes)} performed notes x "
                                  f"{len(score.notes)} score notes exceed scoring.max_alignment_cells "
                                  f"{self.scoring.max_alignment_cells:.3g}); assessed from audio alone"}
        alignment = A.align(score, perf)
        deadline.check("alignment")
        f_measure = 2.0 * alignment.n_matched / max(1, alignment.n_score_notes + alignment.n_perf_notes)
        if f_measure < self.scoring.min_match_rate:
            return None, {"match_rate": f_measure, "score_mismatch": True,
                          "note": f"{entry['score_uri']}: the score matches only {f_measure:.0%} of the notes "
                                  f"(scoring.min_match_rate {self.scoring.min_match_rate:.0%}): another piece or not "
                                  "piano? assessed from audio alone"}
        attrs = note_attributes(score, perf, alignment)
        from pipelines.scoring.feedback import measure_bars
        bars = measure_bars(score, perf, alignment, evidence=perf.onset_evidence)
        deadline.check("per-bar feedback")
        return (score, perf, alignment, attrs), {"match_rate": f_measure, "score_mismatch": False,
                                                 "perf_source": perf.source, "bars": bars,
                                                 "score_format": score.source_format}

    # --- entry point -----------------------------------------------------------------------------
    def __call__(self, entry: dict) -> Iterator[dict[str, Any]]:
        rid = entry["recording_id"]
        uri = entry.get("audio_uri") or entry.get("midi_uri") or rid
        deadline = _Deadline(uri, self.scoring.timeout_s)
        info: dict[str, Any] = {}
        started = time.monotonic()
        try:
            self._check_size(entry)
            suffix = "." + storage.basename(uri).rsplit(".", 1)[-1] if "." in storage.basename(uri) else None
            with storage.local_path(uri, suffix=suffix) as path:
                stream = self._stream(entry, path)
                stream.scan()
                deadline.check("decoding")
                info["duration_s"] = float(stream.duration_s)
                bundle, first = None, {}
                if entry.get("score_uri"):          # aligned for per-bar feedback, whatever the model reads
                    try:
                        bundle, extra = self._alignment(entry, stream, deadline)
                    except LimitError:
                        raise
                    except Exception as exc:
                        raise _named(entry["score_uri"], "score", exc) from None
                    first = {k: extra.pop(k) for k in ("bars", "perf_source", "score_format") if k in extra}
                    info.update(extra)
                    if bundle is not None and self.use_perf_features:
                        from pipelines.features.descriptors import recording_descriptors
                        score, perf, alignment, attrs = bundle
                        info["perf_features"] = recording_descriptors(perf, score, alignment, attrs).tolist()
                info["has_score"] = bundle is not None
                yield from self._spans(entry, stream, bundle, info, deadline, started, first)
        except Exception as exc:  # every failure is one error row, never raised out of the stage
            kind = error_kind(exc)
            message = one_line(exc)
            if uri not in message and entry.get("score_uri", "") not in message:
                message = f"{uri}: {type(exc).__name__}: {message}"
            yield span_error(rid, kind, message, info)

    def _spans(self, entry: dict, stream, bundle, info: dict, deadline: _Deadline,
               started: float, extra_first: dict | None = None) -> Iterator[dict[str, Any]]:
        from pipelines.features import segment as S

        s = self.scoring
        duration = float(stream.duration_s)
        windows = S.windows(duration, s.window_s, s.overlap)
        groups = group_spans(windows, s.span_windows)
        segments = None
        if bundle is not None and self.use_notes:
            score, perf, alignment, attrs = bundle
            segments = S.segment_alignment(alignment, score, duration, s.window_s, s.overlap)
        bounds = [(windows[g[0]][0], windows[g[-1]][1]) for g in groups]
        fps = C.CQT_FRAMES_PER_S
        n_cqt_total = 1 + int(round(duration * C.CQT_SAMPLE_RATE_HZ)) // C.CQT_HOP_SAMPLES
        cqt_bounds = [(int(math.floor(a * fps)), min(n_cqt_total, int(math.ceil(b * fps)) + 1)) for a, b in bounds]
        margin = 1.0
        # the CQT of a span needs its frames' full support: ask for the span widened to its frame range
        request = [(min(a, f0 / fps), max(b, f1 / fps)) for (a, b), (f0, f1) in zip(bounds, cqt_bounds)]
        tokens_cache: dict[int, np.ndarray] = {}
        context = b""
        if segments is not None and self.use_recording_stats:
            from pipelines.features.processor import recording_stats, segment_notes
            context = pack_array(recording_stats(
                [segment_notes(score, perf, alignment, attrs, seg, self.config.data.max_notes, tokens_cache)
                 for seg in segments]), "f4")
        info_json = json.dumps(info)
        head_json = json.dumps({**info, **extra_first}) if extra_first else info_json   # bars: first span only
        pool = thumb_pool(duration)
        for k, ((y24, y44, pad_s), group) in enumerate(zip(stream.spans(request, margin_s=margin), groups)):
            deadline.check(f"span {k + 1} of {len(groups)}")
            req_start = request[k][0]
            a, b = bounds[k]
            row = {"recording_id": entry["recording_id"], "span_index": k, "n_spans": len(groups), "status": "ok",
                   "error_kind": "", "message": "", "info_json": head_json if k == 0 else info_json,
                   "span_start_s": a, "span_end_s": b, "audio": b"", "cqt": b"", "cqt_first_frame": 0}
            if self.use_audio:
                lo = int(round((a - (req_start - pad_s)) * C.MERT_SAMPLE_RATE_HZ))
                n = int(round((b - a) * C.MERT_SAMPLE_RATE_HZ))
                row["audio"] = pack_array(y24[lo: lo + n], "f2")
            from pipelines.features.cqt import cqt_frames_of_span
            if self.use_cqt:
                f0, f1 = cqt_bounds[k]
                frames, first = cqt_frames_of_span(self.cqt, y44, pad_s, f0 / fps, f1 / fps, duration)
                row["cqt"], row["cqt_first_frame"] = pack_array(frames, "f2"), int(first)
                # the thumbnail takes this span's own frames only (the model's are widened to their support)
                index = first + np.arange(len(frames))
                last = k == len(groups) - 1
                own = (index >= math.ceil(a * fps - 1e-6)) & ((index < math.ceil(b * fps - 1e-6)) | last)
                if own.any():
                    first += int(np.argmax(own))
                frames = frames[own]
            else:                            # the thumbnail's frames alone, each frame once across the spans
                frames, first = cqt_frames_of_span(self.cqt, y44, pad_s, a, b, duration)
            row["thumb"], row["thumb_first"] = thumbnail(frames, int(first), pool)
            row["thumb_fps"] = C.CQT_FRAMES_PER_S / pool
            notes, attrs_, times = [], [], []
            for w in group:
                if segments is not None:
                    from pipelines.features.processor import segment_notes
                    tok, att, tim = segment_notes(score, perf, alignment, attrs, segments[w],
                                                  self.config.data.max_notes, tokens_cache)
                    notes.append(pack_array(tok, "i2"))
                    attrs_.append(pack_array(att, "f4"))
                    times.append(pack_array(tim, "f4"))
                else:
                    notes.append(b"")
                    attrs_.append(b"")
                    times.append(b"")
            row.update(win_index=list(group), win_start_s=[windows[w][0] for w in group],
                       win_end_s=[windows[w][1] for w in group], win_notes=notes, win_attrs=attrs_, win_times=times,
                       recording_stats=context, prepare_s=time.monotonic() - started)
            yield row
            started = time.monotonic()          # the time spent downstream while suspended is not ours


def _named(uri: str, what: str, exc: BaseException) -> BaseException:
    """`exc` itself when its message names `uri`, else a RuntimeError that does."""
    text = one_line(exc)
    if uri in text:
        return exc
    return RuntimeError(f"{uri}: {what} failed: {type(exc).__name__}: {text}")

