"""The model stage of scoring: span rows in, per-window predictions out (an actor pool, model loaded once).

MERT runs once over each span's audio, in contiguous chunks of `scoring.window_s` seconds; each window
then takes its slice of those frames (`PianoAssessor.forward` with `mert_features`), so overlapping
windows do not pay the encoder twice. The rest of the model (CQT encoder, fusion, BiLSTM, pooling, heads)
runs per window, `scoring.batch_size` windows per call. On a GPU the forward runs under fp16 autocast.
Sigma is the model's own; the checkpoint's calibration (a temperature per dimension, fitted on aggregated
recording sigma) is applied after aggregation. A span that fails here becomes an error row for its
recording.
"""
from __future__ import annotations

import contextlib
import time
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from pipelines import constants as C
from pipelines.features.rows import pack_array, unpack_array
from pipelines.io.errors import one_line
from pipelines.training.batches import _pad_stack, recording_stats_matrix

PRED_SCHEMA = pa.schema([
    ("recording_id", pa.string()),
    ("span_index", pa.int32()),
    ("n_spans", pa.int32()),
    ("status", pa.string()),
    ("error_kind", pa.string()),
    ("message", pa.string()),
    ("info_json", pa.string()),
    ("win_index", pa.list_(pa.int32())),
    ("win_start_s", pa.list_(pa.float64())),
    ("win_end_s", pa.list_(pa.float64())),
    ("win_scores", pa.list_(pa.list_(pa.float32()))),
    ("win_sigma", pa.list_(pa.list_(pa.float32()))),
    ("win_attention", pa.list_(pa.binary())),       # float32 pooling weights of each window's steps
    ("win_att_times", pa.list_(pa.binary())),       # float32 seconds from the window start of those steps
    ("thumb", pa.binary()),                         # the span's CQT thumbnail, passed through for the report
    ("thumb_first", pa.int32()),
    ("thumb_fps", pa.float64()),
    ("prepare_s", pa.float64()),
    ("infer_s", pa.float64()),
])


class SpanModel:
    """A loaded checkpoint and what it needs to predict windows of spans."""

    def __init__(self, model, names: list[str], *, window_s: float,
                 batch_size: int, max_notes: int | None, device: str = "cpu") -> None:
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.names = names
        self.window_s = window_s
        self.batch_size = batch_size
        self.max_notes = max_notes
        cfg = model.config
        self.uses_mert = model.mert is not None
        self.uses_cqt = model.cqt is not None
        self.uses_notes = model.symbolic is not None
        self.uses_audio = self.uses_mert or self.uses_cqt
        self.encoder_s = 0.0            # time spent in the MERT backbone (for benchmarks)
        self.audio_only = bool(getattr(cfg, "audio_only", False))
        self.uses_recording_stats = getattr(model, "recording_stats", None) is not None

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    # --- MERT once per span -----------------------------------------------------------------------
    def span_mert(self, audio: np.ndarray) -> torch.Tensor:
        """(T, H) MERT features of a span's 24 kHz audio, encoded in contiguous chunks of window_s."""
        spans = self.model.mert_chunk_spans(len(audio), self.window_s,
                                            min_tail_samples=C.MERT_SAMPLE_RATE_HZ)   # a tail < 1 s joins its neighbour
        pieces = [audio[a:b] for a, b in spans]
        frames_per = [(b - a - self.model.config.mert_receptive_field_samples) // self.model.mert.hop_samples + 1
                      for a, b in spans[:-1]]                     # exact for every chunk but the last
        feats = []
        started = time.perf_counter()
        for i in range(0, len(pieces), self.batch_size):
            group = pieces[i: i + self.batch_size]
            wave, lengths = _pad_stack([p.astype(np.float32) for p in group], torch.float32)
            with torch.no_grad(), self._autocast():
                out, n = self.model.encode_mert(wave.to(self.device), lengths.to(self.device))
            for j in range(len(group)):
                keep = frames_per[i + j] if i + j < len(frames_per) else int(n[j])
                feats.append(out[j, :keep].float())
        self.encoder_s += time.perf_counter() - started
        return torch.cat(feats)                                                # (T, H)

    # --- windows -----------------------------------------------------------------------------------
    def predict_span(self, row: dict[str, Any]) -> dict[str, Any]:
        """Per-window scores, calibrated sigma and attention of one span row."""
        n_win = len(row["win_index"])
        span_start = float(row["span_start_s"])
        mert = None
        if self.uses_mert:
            audio = unpack_array(row["audio"], "f2").astype(np.float32)
            mert = self.span_mert(audio)
        cqt = unpack_array(row["cqt"], "f2", (C.CQT_N_BINS,)).astype(np.float32) if self.uses_cqt else None
        items = []
        for w in range(n_win):
            start, end = float(row["win_start_s"][w]), float(row["win_end_s"][w])
            item: dict[str, Any] = {}
            if mert is not None:
                samples = int(round((end - start) * C.MERT_SAMPLE_RATE_HZ))
                n_frames = int(self.model.mert.frame_lengths(torch.tensor([samples]))[0])
                f0 = int(round((start - span_start) * self.model.mert.frame_rate_hz))
                item["mert"] = mert[f0: f0 + n_frames]
            if cqt is not None:
                fps = C.CQT_FRAMES_PER_S
                first = int(row["cqt_first_frame"])
                f0 = int(np.floor(start * fps)) - first
                f1 = int(np.ceil(end * fps)) + 1 - first
                item["cqt"] = cqt[max(f0, 0): max(f1, 0)]
            notes = unpack_array(row["win_notes"][w], "i2", (8,)).astype(np.int64)
            attrs = unpack_array(row["win_attrs"][w], "f4", (C.N_PERF_ATTRS,))
            times = unpack_array(row["win_times"][w], "f4")
            if self.max_notes is not None:
                notes, attrs, times = notes[: self.max_notes], attrs[: self.max_notes], times[: self.max_notes]
            if not self.uses_notes or self.audio_only:
                notes, attrs, times = notes[:0], attrs[:0], times[:0]
            item.update(notes=notes, attrs=attrs, times=times)
            if self.uses_recording_stats:
                item["recording_stats"] = unpack_array(row.get("recording_stats") or b"", "f4")
            items.append(item)
        # a model that reads notes only has nothing to assess in a window without notes (a rest, silence):
        # that window gets NaN, which the recording's aggregate leaves out
        assessable = [i for i, it in enumerate(items) if self.uses_audio or len(it["notes"])]
        scores = np.full((n_win, len(self.names)), np.nan, np.float32)
        sigma = np.full((n_win, len(self.names)), np.nan, np.float32)
        empty = pack_array(np.zeros(0, np.float32), "f4")
        attention, att_times = [empty] * n_win, [empty] * n_win
        for k in range(0, len(assessable), self.batch_size):
            chunk = assessable[k: k + self.batch_size]
            out = self._forward([items[i] for i in chunk])
            scores[chunk] = out.scores.float().cpu().numpy()
            sigma[chunk] = out.sigma.float().cpu().numpy()
            for j, i in enumerate(chunk):
                n = int(out.lengths[j])
                attention[i] = pack_array(out.attention[j, :n].float().cpu().numpy(), "f4")
                att_times[i] = pack_array(out.times[j, :n].float().cpu().numpy(), "f4")
        return {"win_scores": scores.tolist(), "win_sigma": sigma.tolist(),
                "win_attention": attention, "win_att_times": att_times}

    def _forward(self, items: list[dict[str, Any]]):
        batch: dict[str, torch.Tensor] = {}
        if self.uses_mert:
            feats = [it["mert"] for it in items]
            longest = max(len(f) for f in feats)
            batch["mert_features"] = torch.stack([torch.nn.functional.pad(f, (0, 0, 0, longest - len(f)))
                                                  for f in feats])
            batch["mert_lengths"] = torch.tensor([len(f) for f in feats], dtype=torch.long)
        if self.uses_cqt:
            batch["cqt"], batch["cqt_lengths"] = _pad_stack([it["cqt"] for it in items], torch.float32)
        batch["notes"], batch["note_lengths"] = _pad_stack([it["notes"] for it in items], torch.long)
        batch["note_attrs"], _ = _pad_stack([it["attrs"] for it in items], torch.float32)
        batch["note_times"], _ = _pad_stack([it["times"] for it in items], torch.float32)
        if self.uses_recording_stats:
            batch["recording_stats"] = recording_stats_matrix([it["recording_stats"] for it in items])
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with torch.no_grad(), self._autocast():
            return self.model(batch)

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        out = {k: row[k] for k in ("recording_id", "span_index", "n_spans", "status", "error_kind", "message",
                                   "info_json", "win_index", "win_start_s", "win_end_s", "prepare_s")}
        out.update({k: row.get(k) for k in ("thumb", "thumb_first", "thumb_fps")})
        out.update(win_scores=[], win_sigma=[], win_attention=[], win_att_times=[], infer_s=0.0)
        if row["status"] != "ok":
            return out
        started = time.perf_counter()
        try:
            out.update(self.predict_span(row))
        except Exception as exc:  # a span the model cannot take becomes an error row for its recording
            out.update(status="error", error_kind="internal",
                       message=f"{row['recording_id']}: model inference failed: {type(exc).__name__}: {one_line(exc)}")
        out["infer_s"] = time.perf_counter() - started
        return out


def load_span_model(checkpoint_uri: str, config, *, use_gpu: bool) -> SpanModel:
    """The checkpoint (local or s3://), ready for `SpanModel.__call__`."""
    from pipelines.io.model_files import load_checkpoint

    device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
    model, config_dict, schema, _ = load_checkpoint(checkpoint_uri, map_location=device)
    span_model = SpanModel(model, schema.names, window_s=config.scoring.window_s,
                           batch_size=config.scoring.batch_size, max_notes=config_dict["model"].get("max_notes"),
                           device=device)
    span_model.audio_only = bool(config_dict.get("train", {}).get("audio_only", False))
    return span_model


class InferSpans:
    """Ray Data callable class: span rows (pyarrow) -> prediction rows (PRED_SCHEMA)."""

    def __init__(self, checkpoint_uri: str, config_dict: dict, use_gpu: bool, torch_threads: int = 1) -> None:
        from pipelines.config import config_from_dict
        torch.set_num_threads(max(1, torch_threads))
        self.span_model = load_span_model(checkpoint_uri, config_from_dict(config_dict), use_gpu=use_gpu)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = [self.span_model(row) for row in batch.to_pylist()]
        return pa.Table.from_pylist(rows, schema=PRED_SCHEMA)
