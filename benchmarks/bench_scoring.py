"""Scoring job (pipelines/scoring): time per stage, the MERT-95M encoder goal, Ray throughput, peak memory.

    .venv/bin/python -m benchmarks.bench_scoring [--quick] [--repeats N] [--repeats-95m N] [--threads N]
                                                 [--sections stages ray memory]
    .venv/bin/python benchmarks/run_all.py scoring      # full size, into benchmarks/RESULTS.md

Recordings are demo-corpus pieces (`pipelines.demo_corpus`: a real score, a take with deviations)
rendered with FluidSynth and tiled to the length wanted, written as 16-bit mono 44.1 kHz WAVs in a
temporary folder; the score of a tiled recording is its piece's score tiled as many times (MIDI sidecar).
Checkpoints hold random weights of the preset's architecture (`tiny`: CQT encoder; `mert-v1-95m` with
`train.pretrained=false`: the real 12 x 768 MERT-v1-95M shape, which cannot be downloaded here), saved with
`model.checkpoint.save_model` as tests/pipelines/scoring/conftest.py does. Scoring settings are the job's
defaults (`jobs/score.py` without --config: the checkpoint's config, default `scoring` section). Everything
runs on CPU with `--threads` torch threads (default 1, as the job's prepare tasks and model actors).

1. **Time per stage on one recording, one process (no Ray)**, for each preset, audio only and with its
   score. *Measured* rows time the job's own objects: `SpanPreparer` end to end, `SpanModel` over the
   span rows it yields (its `encoder_s` counts the MERT backbone; the rest of the model is inference
   minus that), `Aggregator.add` over the predictions. *Sub-step* rows call the functions the preparer
   calls, separately, on the same audio: `AudioStream.scan` (decode pass 1), `AudioStream.spans` with the
   preparer's span bounds (decode pass 2: decode, resample, cut), `AudioStream.blocks` (the extra decode
   pass feeding transcription on the score path), `cqt_frames_of_span` over those spans,
   `transcribe_blocks` on already decoded blocks, and score reading + `align` + `note_attributes` +
   `segment_alignment` + `segment_notes` for every window. Sub-steps need not add up to the preparer's
   time exactly (row packing, Python overhead); the "rest" row shows the difference. Medians of
   `--repeats` runs (the 95M preset's measured rows: `--repeats-95m`), after one warm-up on a short
   recording.
2. **The 95M goal**: scoring end to end (prepare + inference + aggregation, audio only, model load
   excluded) divided by the encoder's own forward time on the same audio (`PianoAssessor.encode_mert` over
   the whole recording in consecutive non-overlapping 25 s chunks cut by `mert_chunk_spans`, one chunk per
   call, no windows); goal <= 1.5x. For comparison, every 50 %-overlapping inference window through the
   encoder separately (measured once).
3. **Throughput on local Ray**: `run_scoring` (the job's function) on a library of N recordings of about a
   minute (audio only, distinct takes) on `ray.init(address="local", num_cpus=2)`; recordings per minute
   and x real time from the manifest it returns (`stage_seconds.pipeline_s`: the Ray Data part; `seconds`:
   the whole run incl. listing, hashing, writing and publishing). Each run writes to a fresh output
   folder (nothing is carried forward); Ray's worker processes stay up between runs, the model actor is
   started anew by every run.
4. **Peak memory vs recording length**: in a fresh process per case, SpanPreparer + SpanModel (tiny
   preset, audio only; spans streamed into the model one at a time, as the job does) and then the
   Aggregator, against `pipelines.io.audio.load_and_prepare` (whole arrays) on the same WAVs (a rendered
   minute tiled). Peak = VmHWM; VmHWM is reset (/proc/self/clear_refs) after set-up and again before
   aggregation, so the streaming stage and the aggregation each get their own peak.

`--quick`: 20 s recordings, 2 recordings per Ray library, 1- and 2-min long files, one repeat: a smoke run
(about 3 minutes on 2 cores). Run as a script it prints Markdown; `main()` returns {"markdown": ..., "figures": ...}.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:                 # also runnable as `python benchmarks/bench_scoring.py`
    sys.path.insert(0, str(ROOT))

from benchmarks.common import machine, markdown_table, proc_status_mb  # noqa: E402

PRESETS = ("tiny", "mert-v1-95m")
PATHS = ("audio", "score")                   # audio only / with its score (transcription + alignment)
STAGE_PIECE = 1                              # DEMO_PIECES[1]: Joplin, Maple Leaf Rag
LONG_PIECE = 2                               # DEMO_PIECES[2]: Bach, Prelude BWV 846 (the memory files)
SECTIONS = ("stages", "ray", "memory")
FULL = {"stage_s": 300.0, "ray_s": 60.0, "ray_n": {"tiny": 8, "mert-v1-95m": 2}, "long_min": (10.0, 60.0),
        "repeats": 3, "repeats_95m": 1}
QUICK = {"stage_s": 20.0, "ray_s": 20.0, "ray_n": {"tiny": 2, "mert-v1-95m": 2}, "long_min": (1.0, 2.0),
         "repeats": 1, "repeats_95m": 1}
WARMUP_S = 20.0


def log(message: str) -> None:
    print(f"[bench_scoring {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- inputs ---------------------------------------------------------------------------------------

class Renderer:
    """Demo-corpus takes rendered once each: (score, mono float32 audio at 44.1 kHz)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[int, int, float], tuple[Any, np.ndarray]] = {}

    def take(self, piece: int, take: int, max_seconds: float):
        key = (piece, take, float(max_seconds))
        if key not in self._cache:
            from pipelines import constants as C
            from pipelines.demo_corpus.generate import performance_midi_bytes, plan_piece
            from pipelines.demo_corpus.pieces import DEMO_PIECES
            from pipelines.features.render import render_midi

            planned = plan_piece(DEMO_PIECES[piece], piece, 2, 0, max(2.0, min(600.0, max_seconds)))
            t = planned.takes[take]
            audio = render_midi(performance_midi_bytes(t.notes, t.pedal), sample_rate=C.CQT_SAMPLE_RATE_HZ)
            self._cache[key] = (planned.score, np.asarray(audio, dtype=np.float32))
        return self._cache[key]


def fit(y: np.ndarray, seconds: float, sr: int = 44_100) -> np.ndarray:
    """`y` tiled and cut to exactly `seconds`."""
    n = round(seconds * sr)
    return np.tile(y, math.ceil(n / len(y)))[:n]


def tile_score(score, copies: int):
    """The score played `copies` times in a row (bars, beats, seconds and note ids shifted)."""
    from pipelines.demo_corpus.pieces import score_end_beat
    from pipelines.io.notes import Score

    end_beat = score_end_beat(score)
    spb = 60.0 / score.tempo_qpm
    notes, bars = [], []
    for k in range(copies):
        n = score.notes.copy()
        n["onset_beat"] += k * end_beat
        n["onset_s"] += k * end_beat * spb
        n["bar"] += k * score.n_bars
        n["id"] += k * len(score.notes)
        notes.append(n)
        bars.append(score.bar_starts_beat + k * end_beat)
    return Score(notes=np.concatenate(notes), bar_starts_beat=np.concatenate(bars), tempo_qpm=score.tempo_qpm,
                 source_format=score.source_format)


def write_wav(path: str, y: np.ndarray, sr: int = 44_100) -> None:
    import soundfile as sf
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, y, sr, subtype="PCM_16")


def write_recording(root: str, name: str, renderer: Renderer, piece: int, take: int, seconds: float) -> dict:
    """About `seconds` of a take (its rendered excerpt tiled) as `<root>/audio/<name>.wav`, and again with its
    tiled score as `<root>/score/<name>.wav` + `.mid`; returns {"audio": entry, "score": entry}."""
    from pipelines.demo_corpus.generate import score_midi_bytes
    from pipelines.scoring import inputs as I

    score, y = renderer.take(piece, take, min(60.0, seconds))
    copies = max(1, round(seconds * 44_100 / len(y)))
    audio = np.tile(y, copies)
    for sub in PATHS:
        write_wav(os.path.join(root, sub, name + ".wav"), audio)
    with open(os.path.join(root, "score", name + ".mid"), "wb") as f:
        f.write(score_midi_bytes(tile_score(score, copies)))
    out = {}
    for sub in PATHS:
        entries, _ = I.list_inputs(os.path.join(root, sub))
        entry = next(e for e in I.hash_entries(entries) if e["recording_id"] == name)
        entry["model_version"] = "bench"
        out[sub] = entry
    assert out["score"].get("score_uri") and not out["audio"].get("score_uri"), out
    return out


def make_checkpoint(directory: str, preset: str) -> str:
    """Random weights of `preset`'s architecture, saved as the training job saves them."""
    import torch

    from model.builder import build_model
    from model.checkpoint import save_model
    from pipelines.config import load_config

    torch.manual_seed(0)
    config = load_config(preset, [] if preset == "tiny" else ["train.pretrained=false"])
    net = build_model(config.model, config.schema(), pretrained=False)
    save_model(directory, net, config.to_dict(), config.schema(), {"stage": "expert"})
    return directory


def job_config(checkpoint: str):
    """The config `jobs/score.py` uses without --config: the checkpoint's, with default scoring settings."""
    from pipelines.config import config_from_dict, load_config
    from pipelines.io.model_files import read_checkpoint_meta

    base = config_from_dict(read_checkpoint_meta(checkpoint)["config"])
    return load_config(None, [], extra={k: v for k, v in base.to_dict().items() if k != "scoring"})


# --- 1 and 2: one recording, one process ------------------------------------------------------------

class Scorer:
    """A checkpoint's SpanPreparer, SpanModel and schema, set up once (as a worker and an actor would)."""

    def __init__(self, checkpoint: str) -> None:
        from model.schema import DimensionSchema
        from pipelines.io.model_files import read_checkpoint_meta
        from pipelines.scoring.infer import load_span_model
        from pipelines.scoring.prepare import SpanPreparer
        from pipelines.scoring.run import model_flags

        meta = read_checkpoint_meta(checkpoint)
        self.config = job_config(checkpoint)
        self.flags = model_flags(meta["config"])
        self.schema = DimensionSchema.from_dict(meta["schema"])
        started = time.perf_counter()
        self.model = load_span_model(checkpoint, self.config, use_gpu=False)
        self.load_s = time.perf_counter() - started
        self.prep = SpanPreparer(self.config, **self.flags)

    def score(self, entry: dict) -> dict[str, Any]:
        """Prepare, infer and aggregate one recording; the wall time of each stage."""
        from pipelines.scoring.run import Aggregator

        t0 = time.perf_counter()
        rows = list(self.prep(entry))
        t1 = time.perf_counter()
        bad = [r for r in rows if r["status"] != "ok"]
        if bad:
            raise RuntimeError(f"preparation failed: {bad[0]['message']}")
        self.model.encoder_s = 0.0
        preds = [self.model(r) for r in rows]
        t2 = time.perf_counter()
        bad = [p for p in preds if p["status"] != "ok"]
        if bad:
            raise RuntimeError(f"inference failed: {bad[0]['message']}")
        agg = Aggregator({entry["recording_id"]: entry}, self.schema.names, self.schema, self.config, "bench")
        results = [r for r in (agg.add(p) for p in preds) if r is not None]
        t3 = time.perf_counter()
        if len(results) != 1 or results[0]["status"] != "ok":
            raise RuntimeError(f"aggregation gave {results[:1]}")
        info = json.loads(rows[0]["info_json"])
        return {"prepare_s": t1 - t0, "infer_s": t2 - t1, "encoder_s": self.model.encoder_s,
                "rest_model_s": (t2 - t1) - self.model.encoder_s, "aggregate_s": t3 - t2, "total_s": t3 - t0,
                "duration_s": info["duration_s"], "spans": len(rows),
                "windows": int(sum(len(r["win_index"]) for r in rows)),
                "has_score": bool(info.get("has_score")), "match_rate": info.get("match_rate")}

    def substeps(self, entry: dict, with_score: bool, repeats: int) -> dict[str, float]:
        """The preparer's steps called one by one on the same audio (see the module docstring)."""
        from pipelines import constants as C
        from pipelines.features import align as A
        from pipelines.features import segment as S
        from pipelines.features.attributes import note_attributes
        from pipelines.features.cqt import cqt_frames_of_span
        from pipelines.features.processor import segment_notes
        from pipelines.features.transcribe import transcribe_blocks
        from pipelines.io.audio_stream import AudioStream
        from pipelines.io.notation import load_score
        from pipelines.scoring.prepare import group_spans

        s = self.config.scoring
        times: dict[str, list[float]] = {}

        @contextlib.contextmanager
        def clock(name: str):
            started = time.perf_counter()
            yield
            times.setdefault(name, []).append(time.perf_counter() - started)

        for _ in range(repeats):
            stream = AudioStream(entry["audio_uri"], entry["audio_uri"], min_duration_s=s.min_duration_s,
                                 max_duration_s=s.max_duration_s)
            with clock("scan"):
                stream.scan()
            duration = float(stream.duration_s)
            # the preparer's span bounds (SpanPreparer._spans)
            windows = S.windows(duration, s.window_s, s.overlap)
            groups = group_spans(windows, s.span_windows)
            bounds = [(windows[g[0]][0], windows[g[-1]][1]) for g in groups]
            fps = C.CQT_FRAMES_PER_S
            n_cqt = 1 + round(duration * C.CQT_SAMPLE_RATE_HZ) // C.CQT_HOP_SAMPLES
            cqt_bounds = [(math.floor(a * fps), min(n_cqt, math.ceil(b * fps) + 1)) for a, b in bounds]
            request = [(min(a, f0 / fps), max(b, f1 / fps)) for (a, b), (f0, f1) in zip(bounds, cqt_bounds)]
            use_cqt = self.flags["use_cqt"]
            with clock("spans"):
                spans = [(y44 if use_cqt else None, pad)
                         for _, y44, pad in stream.spans(request, margin_s=1.0 if use_cqt else 0.0)]
            if use_cqt:
                with clock("cqt"):
                    for (y44, pad), (f0, f1) in zip(spans, cqt_bounds):
                        cqt_frames_of_span(self.prep.cqt, y44, pad, f0 / fps, f1 / fps, duration)
            spans = None
            if with_score and self.flags["use_notes"]:
                with clock("blocks"):
                    blocks = [y44 for _, y44 in stream.blocks()]
                with clock("transcription"):
                    perf = transcribe_blocks(self.prep.transcriber, iter(blocks), C.CQT_SAMPLE_RATE_HZ)
                blocks = None
                with clock("alignment"):
                    score = load_score(entry["score_uri"])
                    al = A.align(score, perf)
                    attrs = note_attributes(score, perf, al)
                    segments = S.segment_alignment(al, score, duration, s.window_s, s.overlap)
                    cache: dict[int, np.ndarray] = {}
                    for seg in segments:
                        segment_notes(score, perf, al, attrs, seg, self.config.data.max_notes, cache)
        return {k: statistics.median(v) for k, v in times.items()}


def encoder_baseline(model, audio24: np.ndarray, chunk_s: float, repeats: int) -> float:
    """Median seconds of `encode_mert` over the whole audio in consecutive non-overlapping chunks."""
    import torch

    spans = model.mert_chunk_spans(len(audio24), chunk_s)
    with torch.no_grad():                                         # warm-up: the chunk shape, untimed
        a, b = spans[0]
        model.encode_mert(torch.from_numpy(audio24[a:b])[None], torch.tensor([b - a]))
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        with torch.no_grad():
            for a, b in spans:
                model.encode_mert(torch.from_numpy(audio24[a:b])[None], torch.tensor([b - a]))
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def encoder_per_window(model, audio24: np.ndarray, duration: float, window_s: float,
                       overlap: float) -> tuple[float, int]:
    """Seconds of `encode_mert` over every inference window separately (once), and the window count."""
    import torch

    from pipelines import constants as C
    from pipelines.features.segment import windows

    wins = windows(duration, window_s, overlap)
    with torch.no_grad():                                         # warm-up: the window shape, untimed
        b = min(len(audio24), round(wins[0][1] * C.MERT_SAMPLE_RATE_HZ))
        model.encode_mert(torch.from_numpy(audio24[:b])[None], torch.tensor([b]))
    started = time.perf_counter()
    with torch.no_grad():
        for s, e in wins:
            a, b = round(s * C.MERT_SAMPLE_RATE_HZ), min(len(audio24), round(e * C.MERT_SAMPLE_RATE_HZ))
            model.encode_mert(torch.from_numpy(audio24[a:b])[None], torch.tensor([b - a]))
    return time.perf_counter() - started, len(wins)


def median_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out = dict(runs[0])
    for k, v in runs[0].items():
        if isinstance(v, float) and k not in ("duration_s", "match_rate"):
            out[k] = statistics.median(r[k] for r in runs)
    return out


def stages(checkpoints: dict[str, str], recording: dict, warmup: dict, repeats: int, repeats_95m: int) -> dict:
    figures: dict[str, Any] = {}
    for preset in PRESETS:
        reps = repeats if preset == "tiny" else repeats_95m
        log(f"stages: {preset}: loading")
        scorer = Scorer(checkpoints[preset])
        scorer.score(warmup["score"])                                    # warm-up: kernels, ONNX session, lazy imports
        fig: dict[str, Any] = {"load_s": scorer.load_s, "window_s": scorer.config.scoring.window_s}
        for path in PATHS:
            log(f"stages: {preset}, {path}: {reps} end-to-end run(s)")
            fig[path] = median_runs([scorer.score(recording[path]) for _ in range(reps)])
            log(f"stages: {preset}, {path}: sub-steps x {repeats}")
            fig[path]["sub"] = scorer.substeps(recording[path], path == "score", repeats)
        if scorer.model.uses_mert:
            from pipelines.io.audio import load_and_prepare
            log(f"stages: {preset}: encoder alone over the whole recording, then per window")
            decoded = load_and_prepare(recording["audio"]["audio_uri"])
            audio24 = np.ascontiguousarray(decoded.mert, dtype=np.float32)
            s = scorer.config.scoring
            fig["encoder_chunks_s"] = encoder_baseline(scorer.model.model, audio24, s.window_s, reps)
            fig["encoder_windows_s"], fig["n_windows"] = encoder_per_window(
                scorer.model.model, audio24, decoded.duration_s, s.window_s, s.overlap)
            fig["n_chunks"] = len(scorer.model.model.mert_chunk_spans(len(audio24), s.window_s))
        figures[preset] = fig
        del scorer
    return figures


def stages_markdown(fig: dict, repeats: int, repeats_95m: int) -> str:
    def cell(preset: str, path: str, value: float | None) -> str:
        if value is None:
            return "-"
        d = fig[preset][path]["duration_s"]
        return f"{value:.2f} ({d / value:.0f}x)" if value > 0 else f"{value:.2f}"

    rows = []
    sub_rows = [("scan", "decode pass 1: `AudioStream.scan` (decode + checks)"),
                ("spans", "decode pass 2: `AudioStream.spans` at the preparer's span bounds (decode, resample, cut)"),
                ("blocks", "decode pass 3: `AudioStream.blocks` feeding transcription (score path)"),
                ("cqt", "CQT: `cqt_frames_of_span` over every span"),
                ("transcription", "transcription: `transcribe_blocks` on decoded blocks"),
                ("alignment", ("alignment: `load_score` + `align` + `note_attributes` + `segment_alignment` + "
                               "`segment_notes` per window"))]
    for key, label in sub_rows:
        rows.append([label, "sub-step"] + [cell(p, q, fig[p][q]["sub"].get(key)) for p in PRESETS for q in PATHS])
    rows.append(["prepare, rest: preparer end to end minus its sub-steps (packing rows, ...; negative = noise)",
                 "difference"] + [cell(p, q, fig[p][q]["prepare_s"] - sum(fig[p][q]["sub"].values()))
                                  for p in PRESETS for q in PATHS])
    measured = [("prepare_s", "**prepare: `SpanPreparer` end to end**"),
                ("encoder_s", "MERT encoder (`SpanModel.encoder_s`)"),
                ("rest_model_s", "rest of the model (inference minus encoder; the CQT encoder for tiny)"),
                ("infer_s", "**inference: `SpanModel` over the span rows**"),
                ("aggregate_s", "**aggregation: `Aggregator.add`**"),
                ("total_s", "**total: prepare + inference + aggregation**")]
    for key, label in measured:
        rows.append([label, "measured"] + [cell(p, q, fig[p][q][key]) for p in PRESETS for q in PATHS])
    rows.append(["model load (`load_span_model`, once per actor; not in the total)", "measured"]
                + [f"{fig[p]['load_s']:.2f}" for p in PRESETS for q in PATHS])
    rows.append(["windows / spans", ""] + [f"{fig[p][q]['windows']} / {fig[p][q]['spans']}"
                                           for p in PRESETS for q in PATHS])
    rows.append(["score aligned (match F)", ""] + [
        ("-" if q == "audio" else ("yes" if fig[p][q]["has_score"] else "**no: set aside**")
         + (f" ({fig[p][q]['match_rate']:.2f})" if fig[p][q].get("match_rate") is not None else ""))
        for p in PRESETS for q in PATHS])
    header = ["stage", "how"] + [f"{p}, {'audio only' if q == 'audio' else 'with score'}: s (x real time)"
                                 for p in PRESETS for q in PATHS]
    d = fig["tiny"]["audio"]["duration_s"]
    return (f"#### 1. Time per stage on one recording, one process (no Ray)\n\n"
            f"{d:.0f} s recording ({d / 60:.1f} min: a demo take tiled; with score = the piece's score tiled alike). "
            f"*measured*: the job's own objects on the recording, median of {repeats} run(s) for tiny and "
            f"{repeats_95m} for mert-v1-95m, after a warm-up on a {WARMUP_S:g} s recording; *sub-step*: the functions "
            f"the preparer calls, called separately on the same audio, median of {repeats}. '-': the preset does not "
            "run that step. x real time = recording length / time.\n\n"
            + markdown_table(header, rows) + "\n")


def goal_markdown(fig: dict) -> str:
    f = fig["mert-v1-95m"]
    a = f["audio"]
    base = f["encoder_chunks_s"]
    ratio = a["total_s"] / base
    rows = [[(f"encoder alone: `encode_mert` over the whole recording, {f['n_chunks']} non-overlapping "
              f"{f['window_s']:g} s chunks, no windows (baseline)"), f"{base:.2f}", "1.00"],
            ["**scoring end to end: prepare + inference + aggregation (audio only)**", f"{a['total_s']:.2f}",
             f"**{ratio:.2f}**"],
            ["  of which MERT in the pipeline (per span, in 25 s chunks; spans share a half window)",
             f"{a['encoder_s']:.2f}", f"{a['encoder_s'] / base:.2f}"],
            ["  of which the rest of the model", f"{a['rest_model_s']:.2f}", f"{a['rest_model_s'] / base:.2f}"],
            ["  of which prepare (decode, spans, packing)", f"{a['prepare_s']:.2f}", f"{a['prepare_s'] / base:.2f}"],
            ["  of which aggregation", f"{a['aggregate_s']:.2f}", f"{a['aggregate_s'] / base:.2f}"],
            [(f"for comparison: each of the {f['n_windows']} 50 %-overlapping windows through the encoder "
              "separately (measured once)"), f"{f['encoder_windows_s']:.2f}", f"{f['encoder_windows_s'] / base:.2f}"]]
    verdict = "met" if ratio <= 1.5 else "**not met**"
    return (f"#### 2. The 95M goal: end to end / encoder alone <= 1.5x ({verdict}: {ratio:.2f}x)\n\n"
            f"mert-v1-95m (random weights of the real shape), the {a['duration_s']:.0f} s recording of section 1 "
            "without its score, one process; model load excluded.\n\n"
            + markdown_table(["what", "s", "x encoder alone"], rows) + "\n")


# --- 3: local Ray ---------------------------------------------------------------------------------------

def ray_throughput(tmp: str, checkpoints: dict[str, str], renderer: Renderer, sizes: dict, repeats: int,
                   repeats_95m: int) -> dict:
    import ray

    from pipelines.scoring.run import run_scoring

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    figures: dict[str, Any] = {}
    n_pieces = 7                                                  # DEMO_PIECES[1..7]: the music21 pieces
    libraries = {}
    for preset in PRESETS:
        lib = os.path.join(tmp, f"ray-library-{preset}")
        for i in range(sizes["ray_n"][preset]):
            piece, take = 1 + (i // 2) % n_pieces, i % 2
            _, y = renderer.take(piece, take, sizes["ray_s"])
            write_wav(os.path.join(lib, f"rec{i:02d}.wav"), fit(y, sizes["ray_s"]))
        libraries[preset] = lib
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    try:
        for preset in PRESETS:
            config = job_config(checkpoints[preset])
            runs = []
            for i in range(repeats if preset == "tiny" else repeats_95m):
                log(f"ray: {preset}: run {i + 1}, {sizes['ray_n'][preset]} recordings")
                m = run_scoring(libraries[preset], os.path.join(tmp, f"scores-{preset}-{i}"), checkpoints[preset],
                                config, progress=False)
                if m["counts"]["ok"] != sizes["ray_n"][preset]:
                    raise RuntimeError(f"ray run of {preset}: {m['counts']}, errors {m['errors'][:2]}")
                runs.append({"seconds": m["seconds"], "pipeline_s": m["stage_seconds"]["pipeline_s"],
                             "audio_s": m["audio_hours_scored"] * 3600.0, "stage_seconds": m["stage_seconds"]})
            figures[preset] = {"n": sizes["ray_n"][preset], "runs": runs}
    finally:
        ray.shutdown()
    return figures


def ray_markdown(fig: dict, seconds: float) -> str:
    rows = []
    for preset in PRESETS:
        f = fig[preset]
        runs = f["runs"]
        pipe = statistics.median(r["pipeline_s"] for r in runs)
        whole = statistics.median(r["seconds"] for r in runs)
        audio = runs[0]["audio_s"]
        st = runs[0]["stage_seconds"]
        rows.append([preset, f["n"], f"{audio:.0f}", len(runs), f"{pipe:.1f}", f"{f['n'] / (pipe / 60):.2f}",
                     f"{audio / pipe:.1f}x", f"{whole:.1f}", f"{f['n'] / (whole / 60):.2f}", f"{audio / whole:.1f}x",
                     f"{runs[0]['pipeline_s']:.1f}",
                     f"{st.get('prepare_task_s', 0):.1f} / {st.get('inference_task_s', 0):.1f}"])
    header = ["preset", "recordings", "audio s", "runs", "Ray Data part s (median)", "recordings / min",
              "x real time", "whole run s (median)", "recordings / min, whole run", "x real time, whole run",
              "first run: Ray Data part s", "first run: prepare / inference task s (summed)"]
    return (f"#### 3. Throughput on local Ray (2 CPUs)\n\n"
            f"`run_scoring` with the job's default scoring settings (1 model actor x 1 CPU, prepare tasks x 1 CPU, "
            f"CPU only) on a library of ~{seconds:.0f} s recordings, audio only. Ray Data part = "
            "`stage_seconds.pipeline_s` (decode, features, model, aggregation, as streamed); whole run = manifest "
            "`seconds` (adds listing, hashing, part writing, publishing). Each run uses a fresh output folder and "
            "starts its model actor anew (model load included); the first run also starts Ray's worker processes.\n\n"
            + markdown_table(header, rows) + "\n")


# --- 4: peak memory -------------------------------------------------------------------------------------



def _reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_child(spec: dict) -> dict:
    """One memory case in this (fresh) process; see section 4 of the module docstring."""
    import torch

    torch.set_num_threads(spec["threads"])
    if spec["case"] == "load_and_prepare":
        from pipelines.io.audio import load_and_prepare
        base = proc_status_mb("VmRSS")
        reset = _reset_hwm()
        started = time.perf_counter()
        out = load_and_prepare(spec["entry"]["audio_uri"])
        wall = time.perf_counter() - started
        duration = out.duration_s
        del out
        peak = proc_status_mb("VmHWM")
        return {"wall_s": wall, "duration_s": duration, "base_mb": base, "peak_mb": peak, "reset": reset,
                "stream_peak_mb": None, "aggregate_base_mb": None, "aggregate_peak_mb": None}
    from pipelines.scoring.run import Aggregator
    scorer = Scorer(spec["checkpoint"])
    entry = spec["entry"]
    base = proc_status_mb("VmRSS")
    reset = _reset_hwm()
    started = time.perf_counter()
    preds = []
    for row in scorer.prep(entry):                                 # one span in memory at a time, as the job
        if row["status"] != "ok":
            raise RuntimeError(row["message"])
        preds.append(scorer.model(row))
    stream_s = time.perf_counter() - started
    stream_peak = proc_status_mb("VmHWM")
    reset = _reset_hwm() and reset
    agg_base = proc_status_mb("VmRSS")
    started = time.perf_counter()
    agg = Aggregator({entry["recording_id"]: entry}, scorer.schema.names, scorer.schema, scorer.config, "bench")
    results = [r for r in (agg.add(p) for p in preds) if r is not None]
    agg_s = time.perf_counter() - started
    if len(results) != 1 or results[0]["status"] != "ok":
        raise RuntimeError(f"aggregation gave {results[:1]}")
    agg_peak = proc_status_mb("VmHWM")
    return {"wall_s": stream_s + agg_s, "aggregate_s": agg_s, "duration_s": results[0]["duration_s"],
            "windows": len(results[0]["window_start_s"]), "base_mb": base, "reset": reset,
            "stream_peak_mb": stream_peak, "aggregate_base_mb": agg_base, "aggregate_peak_mb": agg_peak,
            "peak_mb": max(stream_peak, agg_peak)}


def measure_memory(spec: dict) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_scoring", "--child-memory", json.dumps(spec)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory case {spec['case']} on {spec['entry']['audio_uri']} failed: "
                           f"{done.stderr.strip().splitlines()[-3:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory(tmp: str, checkpoint: str, renderer: Renderer, minutes: tuple[float, ...], threads: int) -> list[dict]:
    import soundfile as sf

    from pipelines.scoring import inputs as I

    _, y = renderer.take(LONG_PIECE, 1, 60.0)
    minute = fit(y, 60.0)
    out = []
    for length in minutes:
        folder = os.path.join(tmp, f"long-{length:g}min")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"long_{length:g}min.wav")
        with sf.SoundFile(path, "w", samplerate=44_100, channels=1, subtype="PCM_16") as f:
            left = round(length * 60 * 44_100)
            while left > 0:
                f.write(minute[:left])
                left -= min(left, len(minute))
        entry = I.hash_entries(I.list_inputs(folder)[0])[0]
        entry["model_version"] = "bench"
        for case in ("scoring", "load_and_prepare"):
            log(f"memory: {case} on {length:g} min ({os.path.getsize(path) / 2**20:.0f} MiB)")
            r = measure_memory({"case": case, "entry": entry, "checkpoint": checkpoint, "threads": threads})
            out.append({"minutes": length, "case": case, "file_mb": os.path.getsize(path) / 2**20, **r})
        os.remove(path)
    return out


def memory_markdown(results: list[dict]) -> str:
    labels = {"scoring": "SpanPreparer + SpanModel (tiny, audio only), then Aggregator",
              "load_and_prepare": "`load_and_prepare` (whole arrays)"}

    def mb(v):
        return "-" if v is None else f"{v:.0f}"

    def diff(a, b):
        return "-" if a is None or b is None else f"{a - b:.0f}"
    rows = [[f"{r['minutes']:g} min ({r['file_mb']:.0f} MiB)", labels[r["case"]], f"{r['wall_s']:.1f}",
             f"{r['duration_s'] / r['wall_s']:.0f}x", r.get("windows", "-"), mb(r["base_mb"]), mb(r["peak_mb"]),
             diff(r["peak_mb"], r["base_mb"]), diff(r["stream_peak_mb"], r["base_mb"]),
             diff(r["aggregate_peak_mb"], r["aggregate_base_mb"])] for r in results]
    resets = all(r["reset"] for r in results)
    note = ("" if resets else " VmHWM could not be reset here: the per-stage peaks include everything before them.")
    return ("#### 4. Peak memory vs recording length\n\n"
            "16-bit mono 44.1 kHz WAV (a rendered minute tiled), each case in a fresh process. Set-up RSS = VmRSS "
            "after imports, model load and preparer set-up; peak = VmHWM; growth = peak - set-up RSS. "
            "Prepare + inference: SpanPreparer's span rows fed one at a time to SpanModel (its growth over the set-up "
            "RSS); aggregation: Aggregator.add over the predictions of the whole recording (its peak over the RSS "
            "when it started). A span holds 8 windows (112.5 s), so the streaming stage stops growing once a "
            "recording is longer than one span." + note + "\n\n"
            + markdown_table(["recording", "path", "wall s", "x real time", "windows", "set-up RSS MB", "peak RSS MB",
                              "growth MB", "growth: prepare + inference MB", "growth: aggregation MB"], rows) + "\n")


# --- main -----------------------------------------------------------------------------------------------

def main(quick: bool = False, repeats: int | None = None, repeats_95m: int | None = None, threads: int = 1,
         sections: tuple[str, ...] = SECTIONS) -> dict:
    """Run the benchmark (full size unless `quick`); returns {"markdown": ..., "figures": ...}."""
    import torch

    sizes = dict(QUICK if quick else FULL)
    repeats = repeats or sizes["repeats"]
    repeats_95m = repeats_95m or sizes["repeats_95m"]
    torch.set_num_threads(threads)
    started = time.time()
    tmp = tempfile.mkdtemp(prefix="bench-scoring-")
    figures: dict[str, Any] = {"sizes": {k: v for k, v in sizes.items()}, "threads": threads, "repeats": repeats,
                               "repeats_95m": repeats_95m}
    parts = []
    try:
        renderer = Renderer()
        log("checkpoints: tiny, mert-v1-95m (random weights)")
        checkpoints = {p: make_checkpoint(os.path.join(tmp, f"ckpt-{p}"), p) for p in PRESETS}
        if "stages" in sections:
            log(f"rendering a {sizes['stage_s']:g} s recording and its score")
            recording = write_recording(os.path.join(tmp, "one"), "maple_leaf", renderer, STAGE_PIECE, 1,
                                        sizes["stage_s"])
            warmup = write_recording(os.path.join(tmp, "warmup"), "warmup", renderer, STAGE_PIECE, 0, WARMUP_S)
            figures["stages"] = stages(checkpoints, recording, warmup, repeats, repeats_95m)
            parts.append(stages_markdown(figures["stages"], repeats, repeats_95m))
            parts.append(goal_markdown(figures["stages"]))
        if "ray" in sections:
            figures["ray"] = ray_throughput(tmp, checkpoints, renderer, sizes, repeats, repeats_95m)
            parts.append(ray_markdown(figures["ray"], sizes["ray_s"]))
        if "memory" in sections:
            figures["memory"] = memory(tmp, checkpoints["tiny"], renderer, sizes["long_min"], threads)
            parts.append(memory_markdown(figures["memory"]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    mode = ", quick smoke sizes" if quick else ""
    markdown = (f"### Scoring job: stages, 95M goal, Ray throughput, memory{mode}\n\n"
                f"Machine: {machine()}. Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
                f"CPU only, torch threads = {threads}; random weights; demo-corpus audio (FluidSynth). "
                f"Benchmark wall time {time.time() - started:.0f} s.\n\n" + "\n".join(parts))
    return {"markdown": markdown, "figures": figures}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child-memory", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true",
                        help="smoke sizes: 20 s recordings, 2 per library, 1- and 2-min files")
    parser.add_argument("--repeats", type=int, default=None, help="runs per median (default 3; --quick 1)")
    parser.add_argument("--repeats-95m", type=int, default=None,
                        help="runs per median of the mert-v1-95m end-to-end and encoder rows (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in this process (default 1)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    args = parser.parse_args()
    if args.child_memory:
        print(json.dumps(memory_child(json.loads(args.child_memory))))
    else:
        print(main(args.quick, args.repeats, args.repeats_95m, args.threads, tuple(args.sections))["markdown"])
