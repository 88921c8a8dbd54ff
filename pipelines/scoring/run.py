"""The scoring run: list -> hash -> skip what is unchanged -> Ray Data (prepare on CPU tasks, model actor
pool) -> aggregate per recording -> write parts -> publish.

Every input entry yields exactly one row per run: `ok`, `skipped` (same content hash and model version
as a row of the published run, or of a run killed since: that row is carried forward, no model work)
or `error`. Errors of kind `input` (a corrupt file, a mismatched format) are carried forward the same
way while the file is unchanged; transient, limit, crash and internal errors are tried again. A task or
actor whose worker dies is retried `scoring.max_retries` times; a recording whose work is then still
missing becomes a `crash` error row (Ray Data drops its block, `max_errored_blocks`), so one poisoned
file cannot loop or stop the run.
"""
from __future__ import annotations

import json
import logging
import time
from collections import Counter, defaultdict
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from pipelines.config import Config
from pipelines.io import storage
from pipelines.scoring import inputs as I
from pipelines.scoring import publish as P
from pipelines.scoring.aggregate import aggregate_windows, attention_curve, window_weights
from pipelines.scoring.results import base_row, error_result, result_schema

log = logging.getLogger("pianoeval.score")
_PREPARERS: dict[str, Any] = {}


def prepare_batch(batch: dict[str, np.ndarray], config_json: str, flags: dict,
                  soundfont: str | None) -> Iterator[pa.Table]:
    """Ray Data task: JSON entries -> span tables. The preparer (CQT kernels, transcriber) is built once
    per worker process and reused by the tasks that land there."""
    from pipelines.config import config_from_dict
    from pipelines.scoring.prepare import SPAN_SCHEMA, SpanPreparer

    key = config_json + json.dumps(flags, sort_keys=True) + str(soundfont)
    if key not in _PREPARERS:
        import torch
        torch.set_num_threads(1)
        _PREPARERS.clear()
        _PREPARERS[key] = SpanPreparer(config_from_dict(json.loads(config_json)), soundfont=soundfont, **flags)
    for text in batch["entry"]:
        for row in _PREPARERS[key](json.loads(text)):
            yield pa.Table.from_pylist([row], schema=SPAN_SCHEMA)


def model_flags(config_dict: dict) -> dict[str, bool]:
    """Which inputs the checkpoint's model reads (the preparation computes only those)."""
    m = config_dict["model"]
    audio_only = bool(config_dict.get("train", {}).get("audio_only", False))
    return {"use_audio": m["audio_encoder"] in ("mert", "both"),
            "use_cqt": m["audio_encoder"] in ("cqt", "both", "none"),
            "use_notes": bool(m.get("symbolic_encoder")) and not audio_only,
            "use_recording_stats": bool(m.get("symbolic_encoder") and m.get("recording_statistics")) and not audio_only,
            "use_perf_features": False}        # run_scoring sets it when the checkpoint has a feature model


class Aggregator:
    """Collects the prediction rows of each recording's spans and makes its result row."""

    def __init__(self, entries: dict[str, dict], names: list[str], schema, config: Config, run_id: str,
                 calibration: dict | None = None, feature_model=None) -> None:
        self.entries, self.names, self.schema, self.config, self.run_id = entries, names, schema, config, run_id
        self.calibration = calibration       # temperature per dimension, applied to aggregated sigma
        self.feature_model = feature_model   # blended into the recording's score (pipelines/training/feature_model.py)
        self.pending: dict[str, dict[int, dict]] = defaultdict(dict)
        self.done: set[str] = set()
        self.windows = 0
        self.audio_s = 0.0
        self.stage_s: Counter = Counter()

    def add(self, pred: dict[str, Any]) -> dict[str, Any] | None:
        """A prediction row in; the recording's result row out once all its spans are in (else None)."""
        rid = pred["recording_id"]
        if rid in self.done or rid not in self.entries:
            return None                   # a retried span seen twice
        spans = self.pending[rid]
        spans[int(pred["span_index"])] = pred
        if len(spans) < int(pred["n_spans"]) and pred["status"] == "ok":
            return None
        del self.pending[rid]
        self.done.add(rid)
        return self.result(rid, [spans[k] for k in sorted(spans)])

    def result(self, rid: str, spans: list[dict]) -> dict[str, Any]:
        entry = self.entries[rid]
        info = json.loads(spans[0]["info_json"] or "{}")
        seconds = float(sum(s["prepare_s"] or 0.0 for s in spans) + sum(s["infer_s"] or 0.0 for s in spans))
        self.stage_s["prepare"] += sum(s["prepare_s"] or 0.0 for s in spans)
        self.stage_s["inference"] += sum(s["infer_s"] or 0.0 for s in spans)
        failed = [s for s in spans if s["status"] != "ok"]
        if not failed and not any(np.isfinite(np.asarray(p["win_scores"], np.float64)).any() for p in spans):
            source = entry.get("audio_uri") or entry.get("midi_uri") or rid
            failed = [{"error_kind": "input", "message": f"{source}: no notes to assess: the checkpoint reads notes "
                       "only (model.audio_encoder none) and no window of this recording has any"}]
        if failed:
            row = error_result(entry, self.names, failed[0]["error_kind"] or "internal", failed[0]["message"])
            row.update(run_id=self.run_id, scored_in_run=self.run_id, seconds=seconds, scored_at=_now(),
                       duration_s=info.get("duration_s", float("nan")))
            return row
        return self._ok_row(entry, spans, info, seconds)

    def _ok_row(self, entry: dict, spans: list[dict], info: dict, seconds: float) -> dict[str, Any]:
        s = self.config.scoring
        starts = np.concatenate([np.asarray(p["win_start_s"], np.float64) for p in spans])
        ends = np.concatenate([np.asarray(p["win_end_s"], np.float64) for p in spans])
        scores = np.concatenate([np.asarray(p["win_scores"], np.float64).reshape(-1, len(self.names)) for p in spans])
        sigma = np.concatenate([np.asarray(p["win_sigma"], np.float64).reshape(-1, len(self.names)) for p in spans])
        att = [np.frombuffer(b, "<f4") for p in spans for b in p["win_attention"]]
        att_t = [np.frombuffer(b, "<f4") for p in spans for b in p["win_att_times"]]
        duration = float(info.get("duration_s", ends.max()))
        weights = window_weights(starts, ends)
        mean, sd = aggregate_windows(starts, ends, scores, sigma, weights)
        described = info.get("perf_features")
        if self.feature_model is not None and described:     # as evaluation and calibration blend it
            mean = self.feature_model.blend(mean[None, :], [np.asarray(described, np.float32)])[0]
        if self.calibration is not None:     # fitted on aggregated recording sigma: applied there (and to windows)
            from pipelines.evaluation.calibration import apply_temperature
            sd = apply_temperature(sd, self.calibration, self.names)
            sigma = apply_temperature(sigma, self.calibration, self.names)
        novelty = float("nan")
        if self.feature_model is not None and described:     # unfamiliar music: sigma widened, as evaluation does
            novelty = float(self.feature_model.novelty([np.asarray(described, np.float32)])[0])
            sd = self.feature_model.widen(sd[None, :], np.array([novelty]))[0]
            sigma = self.feature_model.widen(sigma, np.full(len(sigma), novelty))
        _, curve = attention_curve(starts, ends, att_t, att, duration, s.curve_hop_s)
        mismatch = bool(info.get("score_mismatch", False))
        low = [bool(mismatch or not np.isfinite(v) or v > s.low_confidence_sigma) for v in sd]
        feedback = self._feedback(info, curve, starts, ends, scores, sigma, mean, low, duration)
        row = base_row(entry, self.names)
        by_name = dict(zip(self.names, mean.tolist()))
        sd_by_name = dict(zip(self.names, sd.tolist()))
        aggregate = self.schema.aggregate_score(by_name) if self.schema.aggregate else None
        row.update(
            run_id=self.run_id, scored_in_run=self.run_id, status="ok", message=info.get("note", ""),
            duration_s=duration, has_score=bool(info.get("has_score", False)),
            match_rate=float(info.get("match_rate", float("nan"))), score_mismatch=mismatch, novelty=novelty,
            scores=mean.tolist(), sigma=sd.tolist(), low_confidence=low,
            aggregate=float("nan") if aggregate is None else aggregate,
            aggregate_sigma=float("nan") if aggregate is None else self.schema.aggregate_score(sd_by_name),
            window_start_s=starts.tolist(), window_end_s=ends.tolist(),
            window_weight=weights.tolist(), window_scores=scores.tolist(),
            window_sigma=sigma.tolist(), curve_hop_s=s.curve_hop_s, attention_curve=curve.tolist(),
            seconds=seconds, scored_at=_now(), **feedback, **_thumbnail(spans))
        for name, value, sdv, flag in zip(self.names, mean, sd, low):
            row.update({f"score_{name}": float(value), f"sigma_{name}": float(sdv), f"low_confidence_{name}": flag})
        self.windows += len(starts)
        self.audio_s += duration
        return row


    def _feedback(self, info: dict, curve, starts, ends, scores, sigma, mean, low, duration: float) -> dict:
        """bars (with the model's attention and window scores over each), bar or time flags, observation."""
        from pipelines.scoring import feedback as F

        s = self.config.scoring
        bars = info.get("bars") or []
        if bars:
            F.add_model_to_bars(bars, curve=curve, curve_hop_s=s.curve_hop_s, starts=starts, ends=ends,
                                scores=scores, duration_s=duration)
            flags = F.flag_bars(bars, self.names, perf_source=info.get("perf_source", "midi"),
                                notated=info.get("score_format") == "musicxml")
            return {"bars": [{k: b.get(k) for k in F.BAR_FIELDS} for b in bars], "bar_flags": flags,
                    "time_flags": [], "observation": F.observation(flags, bars)}
        flags = F.time_flags(starts, ends, scores, sigma, mean, self.names, low)
        return {"bars": [], "bar_flags": [], "time_flags": flags, "observation": F.time_observation(flags)}


def _thumbnail(spans: list[dict]) -> dict:
    """The recording's CQT thumbnail from its spans' pieces (a later span's frame wins where two meet)."""
    pieces = [(int(p["thumb_first"]), np.frombuffer(p["thumb"], np.uint8).reshape(-1, 88))
              for p in spans if p.get("thumb")]
    if not pieces:
        return {"cqt_thumb": b"", "cqt_thumb_fps": float("nan")}
    end = max(first + len(t) for first, t in pieces)
    out = np.zeros((end, 88), np.uint8)
    for first, t in pieces:
        out[first:first + len(t)] = t
    return {"cqt_thumb": out.tobytes(), "cqt_thumb_fps": float(spans[0]["thumb_fps"])}


PROGRESS_EVERY_S = 15.0      # a plain progress line at most this often when the console is not a terminal


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _carry_forward(files: list[str], wanted: dict[str, list[str]], run_id: str, schema: pa.Schema,
                   writer: P.PartWriter) -> set[str]:
    """Copy the previous rows of unchanged entries into this run's parts as `skipped` (or the same
    `error`), relabelled with their current recording id and source; returns the ids written.

    wanted: content key (hash + model version) -> the recording ids now listing that content."""
    written: set[str] = set()
    seen_keys: set[str] = set()
    for _, table in P.iter_tables(list(reversed(files))):       # newest first (a killed run's rows win), one at a time
        rows = []
        for row in table.to_pylist():
            key = f"{row['content_hash']}|{row['model_version']}"
            if key not in wanted or key in seen_keys:
                continue
            if row["status"] == "error" and row["error_kind"] != "input":
                continue
            seen_keys.add(key)
            for rid in wanted[key]:
                out = dict(row)
                out.update(recording_id=rid, run_id=run_id,
                           status="skipped" if row["status"] in ("ok", "skipped") else "error")
                rows.append(out)
                written.add(rid)
        if rows:
            writer.add_table(pa.Table.from_pylist(rows, schema=schema))
    return written


def run_scoring(input_uri: str, out_uri: str, checkpoint_uri: str, config: Config, *,
                limit: int | None = None, soundfont: str | None = None,
                progress: bool = True) -> dict[str, Any]:
    """Score a library; returns the published run manifest (see pipelines/scoring/publish.py)."""
    import ray

    from model.schema import DimensionSchema
    from pipelines.io.model_files import read_checkpoint_meta
    from pipelines.scoring.infer import InferSpans

    started = time.time()
    timings: dict[str, float] = {}
    storage.check_bucket(out_uri)
    run_id = P.new_run_id()
    run = P.run_uri(out_uri, run_id)

    # the model: dimension names, which inputs it reads, its version
    meta = read_checkpoint_meta(checkpoint_uri)
    config_dict, mschema = meta["config"], DimensionSchema.from_dict(meta["schema"])
    names = mschema.names
    if config.aggregate_weights is not None:
        mschema = mschema.with_aggregate_weights(list(config.aggregate_weights))
    flags = model_flags(config_dict)
    from pipelines.training.feature_model import count_unfamiliar, load_feature_model
    feature_model = load_feature_model(checkpoint_uri, names)     # blended into each recording's score
    flags["use_perf_features"] = feature_model is not None and flags["use_notes"]
    s = config.scoring
    settings = {k: getattr(s, k) for k in ("window_s", "overlap", "span_windows", "curve_hop_s",
                                           "low_confidence_sigma", "min_match_rate")}
    settings.update(transcriber=config.data.transcriber, aggregate=mschema.to_dict()["aggregate"])
    version = I.model_version(checkpoint_uri, config_dict, settings)
    schema = result_schema(names)

    # listing and hashing
    t0 = time.time()
    entries, others = I.list_inputs(input_uri, exclude=[out_uri])
    entries.sort(key=lambda e: e["recording_id"])
    limited = limit is not None and limit < len(entries)
    if limit is not None:
        entries = entries[:limit]
    timings["listing_s"] = time.time() - t0
    t0 = time.time()
    entries = I.hash_entries(entries)
    timings["hashing_s"] = time.time() - t0
    for e in entries:
        e["model_version"] = version
    by_id = {e["recording_id"]: e for e in entries}
    log.info("%d recordings listed under %s (%d other files, %d unmatched scores)", len(entries), input_uri,
             len(others["other_files"]), len(others["unmatched_scores"]))

    writer = P.PartWriter(run, schema, s.rows_per_part)
    errors_early = [e for e in entries if "hash_error" in e]
    for e in errors_early:
        kind = "input" if "no such file" in e["hash_error"] or "neither" in e["hash_error"] else "transient"
        row = error_result(e, names, kind, e["hash_error"])
        row.update(run_id=run_id, scored_in_run=run_id, scored_at=_now())
        writer.add(row)
    hashed = [e for e in entries if "hash_error" not in e]

    # unchanged entries: carry their previous rows forward
    t0 = time.time()
    wanted: dict[str, list[str]] = defaultdict(list)
    for e in hashed:
        wanted[f"{e['content_hash']}|{version}"].append(e["recording_id"])
    carried = _carry_forward(P.previous_results(out_uri), wanted, run_id, schema, writer)
    todo = [e for e in hashed if e["recording_id"] not in carried]
    timings["carry_forward_s"] = time.time() - t0
    log.info("%d unchanged (carried forward), %d to score", len(carried), len(todo))

    from pipelines.evaluation.calibration import load_calibration
    calibration = load_calibration(checkpoint_uri)
    if calibration is not None:
        from pipelines.evaluation.calibration import apply_temperature
        apply_temperature(np.ones(len(names)), calibration, names)      # a calibration of another schema fails here
    aggregator = Aggregator({e["recording_id"]: e for e in todo}, names, mschema, config, run_id, calibration,
                            feature_model if flags["use_perf_features"] else None)
    t0 = time.time()
    if todo:
        ctx = ray.data.DataContext.get_current()
        ctx.max_errored_blocks = len(todo)          # a block whose worker died twice is dropped, not fatal
        ctx.enable_progress_bars = progress
        items = [{"entry": json.dumps({k: v for k, v in e.items() if k != "listed"})} for e in todo]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(prepare_batch, batch_size=1, batch_format="numpy",
                            fn_kwargs={"config_json": json.dumps(config.to_dict()), "flags": flags,
                                       "soundfont": soundfont},
                            num_cpus=s.prepare_cpus, max_retries=s.max_retries)
        ds = ds.map_batches(InferSpans, batch_size=1, batch_format="pyarrow",
                            fn_constructor_kwargs={"checkpoint_uri": checkpoint_uri, "config_dict": config.to_dict(),
                                                   "use_gpu": s.use_gpu,
                                                   "torch_threads": max(1, int(s.actor_cpus))},
                            compute=ray.data.ActorPoolStrategy(size=s.num_actors),
                            num_cpus=s.actor_cpus, num_gpus=1 if s.use_gpu else 0,
                            max_restarts=s.max_retries, max_task_retries=s.max_retries)
        from pipelines.console import progress
        done = errors = 0
        for pred in ds.iter_rows():
            row = aggregator.add(dict(pred))
            if row is not None:
                writer.add(row)
                done += 1
                errors += row["status"] == "error"
                elapsed = max(time.time() - t0, 1e-9)
                progress(f"scored {done}/{len(todo)} recordings ({errors} errors, {60.0 * done / elapsed:.1f}/min)",
                         every_s=0.0 if done == len(todo) else PROGRESS_EVERY_S, key="scored")
    timings["pipeline_s"] = time.time() - t0
    for rid, entry in aggregator.entries.items():       # no complete output: the worker died on it
        if rid not in aggregator.done:
            uri = entry.get("audio_uri") or entry.get("midi_uri")
            row = error_result(entry, names, "crash", f"{uri}: processing failed: the worker died on it "
                                                      f"{s.max_retries + 1} times (see the Ray logs)")
            row.update(run_id=run_id, scored_in_run=run_id, scored_at=_now())
            writer.add(row)
    writer.flush()

    statuses, seen, novelty = _statuses(run, writer.files)
    missing = sorted(set(by_id) - set(statuses))
    duplicated = sorted(r for r, n in seen.items() if n > 1)
    counts = Counter(v[0] for v in statuses.values()) if statuses else Counter()
    errors = [{"recording_id": rid, "kind": kind, "message": msg} for rid, (st, kind, msg) in sorted(statuses.items())
              if st == "error"]
    elapsed = time.time() - started
    audio_h = aggregator.audio_s / 3600.0
    manifest = {
        "run_id": run_id, "input": input_uri, "out": out_uri, "checkpoint": checkpoint_uri,
        "model_version": version, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "finished": _now(), "complete": not missing and not duplicated, "limited_to": limit if limited else None,
        "inputs": len(entries),
        "counts": {k: counts.get(k, 0) for k in ("ok", "skipped", "error")},
        "error_kinds": dict(Counter(e["kind"] for e in errors)),
        "error_rate": round(counts.get("error", 0) / len(entries), 4) if entries else 0.0,
        "errors": errors, "missing": missing, "duplicated": duplicated,
        "unmatched_scores": others["unmatched_scores"], "other_files": others["other_files"],
        "other_files_count": len(others["other_files"]),
        "windows_scored": aggregator.windows, "audio_hours_scored": round(audio_h, 4),
        "seconds": round(elapsed, 2),
        "stage_seconds": {**{k: round(v, 2) for k, v in timings.items()},
                          **{f"{k}_task_s": round(v, 2) for k, v in aggregator.stage_s.items()}},
        "recordings_per_minute": round(counts.get("ok", 0) / (timings["pipeline_s"] / 60.0), 2)
        if counts.get("ok") and timings["pipeline_s"] > 0 else None,
        "feature_model": feature_model.summary() if flags["use_perf_features"] else None,
        "unfamiliar": count_unfamiliar(novelty) if flags["use_perf_features"] and feature_model.reference is not None
        else None,
        "calibration": None if calibration is None else {
            "temperature": calibration["temperature"], "ece_before_mean": calibration.get("ece_before_mean"),
            "ece_after_mean": calibration.get("ece_after_mean"), "split": calibration.get("split")},
        "dimensions": names, "columns": schema.names, "config": config.to_dict(),
        "result_files": writer.files,
    }
    P.publish(out_uri, run_id, manifest, update_latest=not limited and manifest["complete"])
    return manifest


def _statuses(run: str, files: list[str]) -> tuple[dict[str, tuple[str, str, str]], Counter, list[float]]:
    """recording id -> (status, error kind, message) of this run's rows, read back from its parts, how
    many rows each recording has (exactly one, unless something is wrong), and the known novelty values."""
    out: dict[str, tuple[str, str, str]] = {}
    count: Counter = Counter()
    novelty: list[float] = []
    for f in files:
        table = P.read_table(storage.join(run, f),
                             columns=["recording_id", "status", "error_kind", "message", "novelty"])
        for r in table.to_pylist():
            count[r["recording_id"]] += 1
            out[r["recording_id"]] = (r["status"], r["error_kind"], r["message"])
            if r["status"] != "error" and r["novelty"] is not None:
                novelty.append(float(r["novelty"]))
    return out, count, novelty



def format_summary(manifest: dict[str, Any], out_uri: str, rows: pa.Table | None = None, limit: int = 12) -> str:
    """A short table of results and where they are."""
    c = manifest["counts"]
    lines = [f"scored {manifest['inputs']} recordings in {manifest['seconds']:.0f} s: {c['ok']} ok, "
             f"{c['skipped']} skipped (unchanged), {c['error']} errors; model {manifest['model_version']}"]
    if rows is not None and rows.num_rows:
        agg = "aggregate"
        lines.append(f"  {'recording':<32} {'status':<8} {agg:>14}  mode")
        for r in rows.slice(0, limit).to_pylist():
            value = (f"{r['aggregate']:5.1f} ± {r['aggregate_sigma']:4.1f}"
                     if r["status"] != "error" and r["aggregate"] == r["aggregate"] else "-")
            note = r["mode"] + (" (score set aside)" if r["score_mismatch"] else "")
            lines.append(f"  {r['recording_id'][:32]:<32} {r['status']:<8} {value:>14}  {note}")
    u = manifest.get("unfamiliar")
    if u and u["far"]:
        lines.append(f"  unfamiliar music: {u['far']} of {u['recordings']} recordings are unlike anything the model "
                     f"was trained on (novelty >= 2), their sigma is the training labels' spread; "
                     f"{u['widened']} have a widened sigma (the novelty column)")
    for err in manifest["errors"][:limit]:
        lines.append(f"  error [{err['kind']}]: {err['message']}")
    if manifest["other_files_count"] or manifest["unmatched_scores"]:
        lines.append(f"  not scored: {manifest['other_files_count']} other files, "
                     f"{len(manifest['unmatched_scores'])} scores without a recording (listed in the manifest)")
    where = P.run_uri(out_uri, manifest["run_id"])
    lines.append(f"results: {where}/results/*.parquet (manifest.json beside them; {out_uri}/latest.json points there)")
    return "\n".join(lines)
