"""Evaluate a checkpoint on preprocessed segments: model vs baselines, per dimension, per recording.

Window predictions are aggregated to one prediction per recording (the labels are per recording) by the
scoring job's overlap rule (`pipelines.scoring.aggregate.aggregate_windows`: centre-weighted mean of the
windows' scores, sigma combining the model's aleatoric sigma and the spread of the windows), so
evaluation, calibration and scoring see the same recording-level predictions. When the checkpoint has a
`calibration.json` (`pipelines.evaluation.calibration`), the recording sigma is scaled by its temperature
and the summary reports the ECE with raw and with calibrated sigma. When it has a feature model
(`pipelines.training.feature_model`), the recording scores blend it as scoring does, and the network's own
scores are reported beside them (`model_network_only`), and the sigma of recordings unlike the ones its trees
were fitted on is widened as scoring widens it (`novelty`, after the calibration). Targets are the expert labels
(`labels_json`) or the pseudo-labels, per the checkpoint's stage unless told. Baselines: uniform random,
training mean, ridge regression on simple audio features.
"""
from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import warnings
from collections import defaultdict
from typing import Any

import numpy as np
import torch

from pipelines.evaluation.calibration import apply_temperature, calibration_summary, load_calibration
from pipelines.features.rows import unpack_array
from pipelines.io import storage
from pipelines.io.splits_table import apply_splits
from pipelines.training.batches import collate, columns_for, label_matrix, target_column


def predict_segments(model, table, names: list[str], *, batch_size: int = 8, audio_only: bool = False,
                     max_notes: int | None = None, device: str = "cpu") -> dict[str, np.ndarray]:
    """Scores and sigmas (N, D) for every row of an Arrow table of segments."""
    model.eval().to(device)
    scores, sigmas = [], []
    with torch.no_grad():
        for start in range(0, table.num_rows, batch_size):
            chunk = table.slice(start, batch_size)
            batch = collate({c: np.asarray(chunk.column(c).to_pylist(), dtype=object) for c in chunk.column_names},
                            names, stage="expert", audio_only=audio_only, max_notes=max_notes)
            batch.pop("labels", None)
            out = model({k: v.to(device) for k, v in batch.items()})
            scores.append(out.scores.float().cpu().numpy())
            sigmas.append(out.sigma.float().cpu().numpy())
    empty = np.zeros((0, len(names)), np.float32)
    return {"scores": np.concatenate(scores) if scores else empty, "sigma": np.concatenate(sigmas) if sigmas else empty}


def rows_by_recording(recording_ids: list[str]) -> dict[str, list[int]]:
    """{recording_id: indices of its rows (windows)}."""
    index: dict[str, list[int]] = defaultdict(list)
    for i, rid in enumerate(recording_ids):
        index[rid].append(i)
    return index


def aggregate_by_recording(recording_ids: list[str], starts_s, ends_s, scores: np.ndarray,
                           sigma: np.ndarray | None) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """Window rows (N,) with their times (N,) and predictions (N, D) -> sorted ids, scores (R, D), sigma (R, D).

    Each recording's windows are combined by `pipelines.scoring.aggregate.aggregate_windows` (the scoring
    job's rule); sigma is None when `sigma` is."""
    from pipelines.scoring.aggregate import aggregate_windows

    index = rows_by_recording(recording_ids)
    ids = sorted(index)
    starts, ends = np.asarray(starts_s, dtype=np.float64), np.asarray(ends_s, dtype=np.float64)
    window_sigma = np.zeros_like(scores) if sigma is None else sigma
    agg_scores = np.zeros((len(ids), scores.shape[1]))
    agg_sigma = np.zeros((len(ids), scores.shape[1]))
    for i, r in enumerate(ids):
        rows = index[r]
        agg_scores[i], agg_sigma[i] = aggregate_windows(starts[rows], ends[rows], scores[rows], window_sigma[rows])
    return ids, agg_scores, None if sigma is None else agg_sigma


@dataclasses.dataclass
class RecordingPredictions:
    """A checkpoint's predictions of one split, one row per recording (sorted ids), on the 0..100 scale."""
    ids: list[str]
    scores: np.ndarray            # (R, D)
    sigma: np.ndarray             # (R, D) the model's sigma aggregated over windows, before any calibration
    y_true: np.ndarray            # (R, D) mean target over the recording's windows; NaN where unlabelled
    groups: np.ndarray            # (R,) piece ids
    segments: int                 # windows predicted
    network_scores: np.ndarray | None = None   # (R, D) the network's own scores where a feature model blended them
    novelty: np.ndarray | None = None          # (R,) the feature model's novelty of each recording (NaN: unknown)


def target_for(extra: dict[str, Any], target: str | None) -> str:
    """The labels to compare with: `target` when given, else the stage the checkpoint was trained on."""
    return target or extra.get("stage", "expert")


def original_rows(table, split: str):
    """The split's rows that are not augmented copies (Arrow table in, Arrow table out); split "all": every
    original row that a split names (a splits table's left-out recordings stay out)."""
    originals = table.filter(np.asarray([a == "" for a in table.column("augment").to_pylist()], dtype=bool))
    splits = np.asarray(originals.column("split").to_pylist(), dtype=object)
    return originals.filter(splits != "" if split == "all" else splits == split)


def assessable_rows(table, audio_encoder: str):
    """The rows a model can assess: a score-only model (audio_encoder none) skips windows without notes."""
    if audio_encoder != "none" or "n_notes" not in table.column_names:
        return table
    return table.filter(np.asarray(table.column("n_notes").to_pylist()) > 0)


def predict_recordings(model, table, names: list[str], label_col: str, *, audio_only: bool = False,
                       max_notes: int | None = None, feature_model=None,
                       feature_holdout: bool = False) -> RecordingPredictions:
    """Predict every window of `table` and aggregate windows and targets to one row per recording; with a
    feature model (pipelines/training/feature_model.py), blend it into the recordings' scores as scoring does
    (feature_holdout: val recordings take the trees fitted without them, for the calibration)."""
    pred = predict_segments(model, table, names, audio_only=audio_only, max_notes=max_notes)
    rec_ids = table.column("recording_id").to_pylist()
    ids, scores, sigma = aggregate_by_recording(rec_ids, table.column("start_s").to_pylist(),
                                                table.column("end_s").to_pylist(), pred["scores"], pred["sigma"])
    network = novelty = None
    if feature_model is not None:
        from pipelines.training.feature_model import features_by_recording
        described = features_by_recording(table)
        network, scores = scores, feature_model.blend(scores, [described.get(r) for r in ids], ids,
                                                      holdout=feature_holdout)
        novelty = feature_model.novelty([described.get(r) for r in ids])
    truth = _mean_target_per_recording(rec_ids, label_matrix(table.column(label_col).to_pylist(), names))
    groups = _first_per_recording(rec_ids, table.column("piece_id").to_pylist())
    empty = np.zeros((0, len(names)))
    return RecordingPredictions(ids=ids, scores=scores, sigma=sigma,
                                y_true=np.stack([truth[r] for r in ids]) if ids else empty,
                                groups=np.asarray([groups[r] for r in ids]), segments=table.num_rows,
                                network_scores=network, novelty=novelty)


def _novelty_summary(novelty: np.ndarray, feature_model) -> dict[str, Any] | None:
    """How unfamiliar the evaluated recordings are to the feature model's fitted ones, as shares of them
    (None: no reference)."""
    from pipelines.training.feature_model import count_unfamiliar

    if feature_model is None or feature_model.reference is None:
        return None
    c = count_unfamiliar(novelty)
    n = c["recordings"]
    return {"recordings": n, "median": c["median_novelty"], "widened": c["widened"] / n if n else None,
            "far": c["far"] / n if n else None}


def _first_per_recording(recording_ids: list[str], values: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for rid, value in zip(recording_ids, values):
        out.setdefault(rid, value)
    return out


def _mean_target_per_recording(recording_ids: list[str], matrix: np.ndarray) -> dict[str, np.ndarray]:
    """Mean label per recording over its windows; NaN where a dimension has no label."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)               # all-NaN columns
        return {rid: np.nanmean(matrix[idx], axis=0) for rid, idx in rows_by_recording(recording_ids).items()}


def recording_features(table) -> dict[str, np.ndarray]:
    """Simple audio features per recording (mean over its windows) for the linear baseline."""
    from pipelines import constants as C
    from pipelines.evaluation.baselines import simple_audio_features

    feats: dict[str, list[np.ndarray]] = defaultdict(list)
    for rid, blob in zip(table.column("recording_id").to_pylist(), table.column("cqt").to_pylist()):
        cqt = unpack_array(blob, "f2", (C.CQT_N_BINS,)).astype(np.float32)
        if len(cqt):
            feats[rid].append(simple_audio_features(cqt))
    return {rid: np.mean(v, axis=0) for rid, v in feats.items()}


def evaluate_checkpoint(checkpoint_uri: str, data_uri: str, out_uri: str | None = None, *, split: str = "test",
                        target: str | None = None, audio_only: bool | None = None, seed: int = 0,
                        splits: dict[str, str] | None = None) -> dict[str, Any]:
    """Metrics of a checkpoint and the baselines on one split ("all": every recording; the baselines still
    fit on the train split); writes JSON, Markdown and PNGs to `out_uri`. splits: {recording_id: split}
    replacing the feature rows' splits (`--splits`)."""
    from pipelines.evaluation import baselines as B
    from pipelines.evaluation import metrics as E
    from pipelines.io.model_files import load_checkpoint
    from pipelines.preprocess import read_segments_table

    from pipelines.training.feature_model import FEATURE_COLUMN, feature_model_for

    model, config_dict, schema, extra = load_checkpoint(checkpoint_uri)
    names = schema.names
    stage = target_for(extra, target)
    label_col = target_column(stage)
    audio_encoder = config_dict["model"]["audio_encoder"]
    feature_model = feature_model_for(checkpoint_uri, names, stage, data_uri)
    columns = sorted(set(columns_for(audio_encoder, bool(config_dict["model"].get("recording_statistics"))))
                     | {"cqt", "cqt_frames"} | ({FEATURE_COLUMN} if feature_model is not None else set()))
    table = apply_splits(read_segments_table(data_uri, columns=columns), splits)
    test, train = assessable_rows(original_rows(table, split), audio_encoder), original_rows(table, "train")
    if test.num_rows == 0:
        raise ValueError(f"{data_uri}: no segments in the {split!r} split")
    use_audio_only = bool(config_dict["train"].get("audio_only", False)) if audio_only is None else audio_only
    rec = predict_recordings(model, test, names, label_col, audio_only=use_audio_only,
                             max_notes=config_dict["model"].get("max_notes"), feature_model=feature_model)
    ids, scores, y_true, groups = rec.ids, rec.scores, rec.y_true, rec.groups
    calibration = load_calibration(checkpoint_uri)
    sigma = apply_temperature(rec.sigma, calibration, names) if calibration else rec.sigma
    novelty = np.full(len(ids), np.nan) if rec.novelty is None else rec.novelty
    if feature_model is not None:        # unfamiliar music: sigma widened as scoring does (feature_model.py)
        sigma = feature_model.widen(sigma, novelty)

    train_ids = train.column("recording_id").to_pylist()
    train_truth = _mean_target_per_recording(train_ids, label_matrix(train.column(label_col).to_pylist(), names))
    train_rec = sorted(train_truth)
    y_train = np.stack([train_truth[r] for r in train_rec]) if train_rec else np.full((1, len(names)), np.nan)

    results: dict[str, Any] = {"model": E.evaluate(y_true, scores, sigma, groups, names)}
    if rec.network_scores is not None:       # what the blend adds: the network alone on the same recordings
        results["model_network_only"] = E.evaluate(y_true, rec.network_scores, sigma, groups, names)
    results["baseline_random"] = E.evaluate(y_true, B.uniform_random_baseline(y_train, len(ids), seed), None,
                                            groups, names)
    results["baseline_mean"] = E.evaluate(y_true, B.mean_baseline(y_train, len(ids)), None, groups, names)
    feats_test, feats_train = recording_features(test), recording_features(train)
    omitted: dict[str, str] = {}
    lacking_test = [r for r in ids if r not in feats_test]
    lacking_train = [r for r in train_rec if r not in feats_train]
    if not train_rec:
        omitted["baseline_linear"] = "no labelled training recordings to fit it on"
    elif lacking_test or lacking_train:
        omitted["baseline_linear"] = (f"no CQT for {len(lacking_test)} of {len(ids)} {split} and "
                                      f"{len(lacking_train)} of {len(train_rec)} train recordings "
                                      "(preprocessed with data.store_cqt=false?)")
    else:
        baseline = B.LinearFeatureBaseline().fit(np.stack([feats_train[r] for r in train_rec]), y_train)
        results["baseline_linear"] = E.evaluate(y_true, baseline.predict(np.stack([feats_test[r] for r in ids])),
                                                None, groups, names)
    summary = {
        "checkpoint": checkpoint_uri, "data": data_uri, "split": split, "target": stage,
        "recordings": len(ids), "segments": test.num_rows, "audio_only": use_audio_only,
        "feature_model": None if feature_model is None else feature_model.summary(),
        "results": results, "omitted": omitted,
        "calibration": calibration_summary(y_true, scores, rec.sigma, calibration, names,
                                           sigma if np.isfinite(novelty).any() else None),
        "novelty": _novelty_summary(novelty, feature_model),
        "uncertainty": sigma_tracks_error(y_true, scores, sigma),
        "per_recording": [{"recording_id": r, "piece_id": str(g), **{n: float(s) for n, s in zip(names, row)},
                           "sigma": {n: float(v) for n, v in zip(names, sd)},
                           "novelty": float(nv) if np.isfinite(nv) else None,
                           "truth": {n: (float(v) if np.isfinite(v) else None) for n, v in zip(names, truth)},
                           **({} if net is None else {"network": {n: float(v) for n, v in zip(names, net)}})}
                          for r, g, row, sd, truth, net, nv in zip(ids, groups, scores, sigma, y_true,
                                                                   rec.network_scores if rec.network_scores is not None
                                                                   else [None] * len(ids), novelty)],
    }
    if out_uri:
        write_report(summary, out_uri, y_true, scores, sigma, names)
    return summary


def comparison_table(summary: dict[str, Any], metrics: tuple[str, ...] = ("pearson", "spearman", "mae", "r2",
                                                                          "pairwise_accuracy")) -> str:
    """Markdown: one row per system (model, baselines), mean over dimensions of each metric."""
    header = "| system | " + " | ".join(metrics) + " |\n|---|" + "---|" * len(metrics)
    rows = []
    for system, result in summary["results"].items():
        values = [result["mean"].get(m, float("nan")) for m in metrics]
        rows.append(f"| {system} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    for system, reason in (summary.get("omitted") or {}).items():
        rows.append(f"| {system} | omitted: {reason} |" + " |" * (len(metrics) - 1))
    return "\n".join([header, *rows])


def sigma_tracks_error(y_true: np.ndarray, scores: np.ndarray, sigma: np.ndarray) -> dict[str, Any]:
    """Does the predicted sigma say which results to distrust? Per dimension, the recordings are split at
    the median absolute error into the half the model got wrong and the half it got right; returns the
    mean sigma of each half (pooled over dimensions) and the Spearman correlation of sigma with the
    absolute error (mean over dimensions)."""
    from scipy.stats import spearmanr

    wrong, right, rhos = [], [], []
    for d in range(y_true.shape[1]):
        ok = np.isfinite(y_true[:, d]) & np.isfinite(scores[:, d]) & np.isfinite(sigma[:, d])
        if ok.sum() < 4:
            continue
        err, sd = np.abs(y_true[ok, d] - scores[ok, d]), sigma[ok, d]
        cut = np.median(err)
        wrong += sd[err > cut].tolist()
        right += sd[err <= cut].tolist()
        if np.ptp(sd) > 0 and np.ptp(err) > 0:
            rhos.append(float(spearmanr(sd, err)[0]))
    mean = lambda v: float(np.mean(v)) if v else float("nan")  # noqa: E731
    return {"sigma_wrong_half": mean(wrong), "sigma_right_half": mean(right),
            "sigma_error_spearman": mean(rhos), "dimensions": len(rhos)}


def write_report(summary: dict[str, Any], out_uri: str, y_true, scores, sigma, names) -> None:
    from pipelines.evaluation import metrics as E
    from pipelines.evaluation import plots as P

    storage.write_text(storage.join(out_uri, "evaluation.json"), E.to_json(summary))
    text = [f"# Evaluation on the {summary['split']} split ({summary['recordings']} recordings, "
            f"target: {summary['target']})", "", comparison_table(summary), "",
            "## Model, per dimension", "", E.format_table(summary["results"]["model"])]
    calibration = summary.get("calibration")
    if calibration:
        text += ["## Calibration of sigma", "", _calibration_line(calibration)]
    novelty = summary.get("novelty")
    if novelty and novelty["recordings"]:
        text += [f"Unfamiliar music: median novelty {novelty['median']:.2f} (1 = as familiar as the training "
                 f"recordings are to each other); sigma widened for {novelty['widened']:.0%} of the recordings, "
                 f"to the labels' spread for {novelty['far']:.0%}.", ""]
    u = summary.get("uncertainty")
    if u and u["dimensions"]:
        text += [f"Mean sigma on the half of the recordings the model got most wrong: {u['sigma_wrong_half']:.2f}; "
                 f"on the half it got right: {u['sigma_right_half']:.2f} (Spearman of sigma with the absolute "
                 f"error: {u['sigma_error_spearman']:.2f}, mean over {u['dimensions']} dimensions)", ""]
    storage.write_text(storage.join(out_uri, "evaluation.md"), "\n".join(text) + "\n")
    with tempfile.TemporaryDirectory() as tmp:
        if sigma is not None:
            P.reliability_diagram(y_true, scores, sigma, os.path.join(tmp, "reliability.png"))
        P.scatter_plot(y_true, scores, names, os.path.join(tmp, "scatter.png"))
        for name in os.listdir(tmp):
            storage.upload_file(os.path.join(tmp, name), storage.join(out_uri, name))


def _calibration_line(calibration: dict[str, Any]) -> str:
    """One Markdown line: mean ECE with raw sigma and, when the checkpoint has a calibration, calibrated."""
    def fmt(value: float | None) -> str:
        return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"

    line = f"ECE (mean over dimensions) with the model's raw sigma: {fmt(calibration['ece_raw_mean'])}"
    if calibration["applied"]:
        line += (f"; with the temperature of `{calibration['file']}` (fit on the {calibration['fit_split']} "
                 f"split): {fmt(calibration['ece_calibrated_mean'])}")
    else:
        line += "; the checkpoint has no calibration.json"
    if calibration.get("ece_widened_mean") is not None:
        line += f"; widened for unfamiliar music (what scoring shows): {fmt(calibration['ece_widened_mean'])}"
    return line + "\n"
