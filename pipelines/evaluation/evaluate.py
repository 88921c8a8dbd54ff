"""Evaluate a checkpoint on preprocessed segments: model vs baselines, per dimension, per recording.

Window predictions are aggregated to one prediction per recording (the labels are per recording):
the mean of the windows' scores, with sigma combining the model's aleatoric sigma and the spread of the
windows. Targets are the expert labels (`labels_json`) or the pseudo-labels, per the checkpoint's stage
unless told. Baselines: uniform random, training mean, ridge regression on simple audio features.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from collections import defaultdict
from typing import Any

import numpy as np
import torch

from pipelines.features.rows import unpack_array
from pipelines.io import storage
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


def aggregate_by_recording(recording_ids: list[str], scores: np.ndarray, sigma: np.ndarray | None):
    """Mean window score per recording; sigma = sqrt(mean window sigma^2 + variance across windows)."""
    index = rows_by_recording(recording_ids)
    ids = sorted(index)
    agg_scores = np.stack([scores[index[r]].mean(0) for r in ids])
    agg_sigma = None
    if sigma is not None:
        agg_sigma = np.stack([np.sqrt((sigma[index[r]] ** 2).mean(0) + scores[index[r]].var(0)) for r in ids])
    return ids, agg_scores, agg_sigma


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
                        target: str | None = None, audio_only: bool | None = None, seed: int = 0) -> dict[str, Any]:
    """Metrics of a checkpoint and the baselines on one split; writes JSON, Markdown and PNGs to `out_uri`."""
    from pipelines.evaluation import baselines as B
    from pipelines.evaluation import metrics as E
    from pipelines.io.model_files import load_checkpoint
    from pipelines.preprocess import read_segments_table

    model, config_dict, schema, extra = load_checkpoint(checkpoint_uri)
    names = schema.names
    stage = target or extra.get("stage", "expert")
    label_col = target_column(stage)
    audio_encoder = config_dict["model"]["audio_encoder"]
    columns = sorted(set(columns_for(audio_encoder)) | {"cqt", "cqt_frames"})
    table = read_segments_table(data_uri, columns=columns)
    originals = table.filter(np.asarray([a == "" for a in table.column("augment").to_pylist()]))
    splits = np.asarray(originals.column("split").to_pylist())
    test = originals.filter(splits == split)
    train = originals.filter(splits == "train")
    if test.num_rows == 0:
        raise ValueError(f"{data_uri}: no segments in the {split!r} split")
    use_audio_only = bool(config_dict["train"].get("audio_only", False)) if audio_only is None else audio_only
    pred = predict_segments(model, test, names, audio_only=use_audio_only,
                            max_notes=config_dict["model"].get("max_notes"))
    rec_ids = test.column("recording_id").to_pylist()
    ids, scores, sigma = aggregate_by_recording(rec_ids, pred["scores"], pred["sigma"])
    truth_map = _mean_target_per_recording(rec_ids, label_matrix(test.column(label_col).to_pylist(), names))
    y_true = np.stack([truth_map[r] for r in ids])
    groups_map = _first_per_recording(rec_ids, test.column("piece_id").to_pylist())
    groups = np.asarray([groups_map[r] for r in ids])

    train_ids = train.column("recording_id").to_pylist()
    train_truth = _mean_target_per_recording(train_ids, label_matrix(train.column(label_col).to_pylist(), names))
    train_rec = sorted(train_truth)
    y_train = np.stack([train_truth[r] for r in train_rec]) if train_rec else np.full((1, len(names)), np.nan)

    results: dict[str, Any] = {"model": E.evaluate(y_true, scores, sigma, groups, names)}
    results["baseline_random"] = E.evaluate(y_true, B.uniform_random_baseline(y_train, len(ids), seed), None,
                                            groups, names)
    results["baseline_mean"] = E.evaluate(y_true, B.mean_baseline(y_train, len(ids)), None, groups, names)
    feats_test, feats_train = recording_features(test), recording_features(train)
    if feats_test and feats_train and all(r in feats_test for r in ids):
        baseline = B.LinearFeatureBaseline().fit(np.stack([feats_train[r] for r in train_rec]), y_train)
        results["baseline_linear"] = E.evaluate(y_true, baseline.predict(np.stack([feats_test[r] for r in ids])),
                                                None, groups, names)
    summary = {
        "checkpoint": checkpoint_uri, "data": data_uri, "split": split, "target": stage,
        "recordings": len(ids), "segments": test.num_rows, "audio_only": use_audio_only,
        "results": results,
        "per_recording": [{"recording_id": r, "piece_id": str(g), **{n: float(s) for n, s in zip(names, row)}}
                          for r, g, row in zip(ids, groups, scores)],
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
    return "\n".join([header, *rows])


def write_report(summary: dict[str, Any], out_uri: str, y_true, scores, sigma, names) -> None:
    from pipelines.evaluation import metrics as E
    from pipelines.evaluation import plots as P

    storage.write_text(storage.join(out_uri, "evaluation.json"), E.to_json(summary))
    text = [f"# Evaluation on the {summary['split']} split ({summary['recordings']} recordings, "
            f"target: {summary['target']})", "", comparison_table(summary), "",
            "## Model, per dimension", "", E.format_table(summary["results"]["model"])]
    storage.write_text(storage.join(out_uri, "evaluation.md"), "\n".join(text) + "\n")
    with tempfile.TemporaryDirectory() as tmp:
        if sigma is not None:
            P.reliability_diagram(y_true, scores, sigma, os.path.join(tmp, "reliability.png"))
        P.scatter_plot(y_true, scores, names, os.path.join(tmp, "scatter.png"))
        for name in os.listdir(tmp):
            storage.upload_file(os.path.join(tmp, name), storage.join(out_uri, name))
