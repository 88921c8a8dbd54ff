"""PercePiano's expert ratings under three protocols: baselines, the human ceiling and (when runs are given)
this system's model, with R², Pearson r, MAE and pairwise ranking accuracy averaged over the 19 dimensions,
mean ± standard deviation over folds.

    .venv/bin/python benchmarks/bench_percepiano.py [--data ../shared/data/percepiano] [--runs DIR]
    .venv/bin/python benchmarks/run_all.py percepiano

Folds: `pipelines.evaluation.protocols.protocol_folds` with its defaults, the same as `jobs/splits.py`
writes (piece: 5 folds grouped by passage; performer: 5 folds grouped by player; work: train on two of
Schubert D960 mvt. 2, mvt. 3 and Beethoven WoO 80, test on the third). Baselines fit on train + val of each
fold: the training mean, ridge regression and gradient boosting on `performance_features` (13 descriptors
of the performance MIDI against its score). Pairwise accuracy: pairs of performances of the same passage.
Human ceiling: the Spearman-Brown reliability of the mean rating from `ratings_raw.csv`, and the pairwise accuracy
that the raters' own agreement allows (pipelines/evaluation/human_ceiling.py). --runs DIR: evaluation.json files of
the model under DIR/<protocol>/<variant>/fold<k>/ (`jobs/evaluate.py --splits ... --out
DIR/<protocol>/<variant>/fold<k>`) join the table, and so do the scoring job's results of a fold's test recordings
under DIR/<protocol>/<variant>/scored<k>/ (`jobs/score.py --input <manifest> --out
DIR/<protocol>/<variant>/scored<k>`). A checkpoint with a feature model (train.feature_blend) adds its network's
own row and its blend at other weights.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "percepiano"
METRICS = ("r2", "pearson", "mae", "pairwise_accuracy")
COLUMNS = (*METRICS, "ece")            # ece: the model's (calibrated) sigma; baselines have none
PUBLISHED = [("Bi-LSTM (published)", 0.185, 0.236), ("MidiBERT (published)", 0.313, 0.212),
             ("Bi-LSTM + score alignment + hierarchical attention (published)", 0.397, 0.285)]


def _features(rec) -> np.ndarray:
    from pipelines.evaluation.baselines import performance_features
    from pipelines.io.notation import load_score
    from pipelines.io.performance import load_performance

    return performance_features(load_performance(rec.midi_uri), load_score(rec.score_uri) if rec.score_uri else None)


def corpus_table(data: str) -> dict:
    """Recordings with ratings: ids, features [N, 13], labels [N, 19] on 0..100, passage groups."""
    from model.schema import load_schema
    from pipelines.io.corpora import read_percepiano

    names = load_schema("percepiano19").names
    everything = read_percepiano(data)            # the folds come from every recording, as jobs/splits.py's do
    recordings = [r for r in everything if r.labels]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        features = np.stack(list(pool.map(_features, recordings, chunksize=16)))
    labels = np.array([[r.labels.get(n, np.nan) for n in names] for r in recordings])
    return {"everything": everything, "recordings": recordings, "ids": [r.recording_id for r in recordings],
            "X": features, "Y": labels, "groups": np.array([r.piece_id for r in recordings]), "names": names}


def baseline_folds(table: dict, protocol: str) -> dict[str, list[dict[str, float]]]:
    """{system: [mean-over-dimensions metrics per fold]} for the baselines under `protocol`."""
    from pipelines.evaluation import metrics as E
    from pipelines.evaluation.baselines import (GradientBoostingFeatureBaseline, LinearFeatureBaseline,
                                                mean_baseline)
    from pipelines.evaluation.protocols import protocol_folds

    out: dict[str, list[dict[str, float]]] = {"mean": [], "ridge": [], "gradient boosting": []}
    X, Y, groups, names = table["X"], table["Y"], table["groups"], table["names"]
    for splits in protocol_folds(table["everything"], protocol):
        side = np.array([splits[i] for i in table["ids"]])
        train, test = np.isin(side, ["train", "val"]), side == "test"
        predictions = {
            "mean": mean_baseline(Y[train], int(test.sum())),
            "ridge": LinearFeatureBaseline(alpha=10.0).fit(X[train], Y[train]).predict(X[test]),
            "gradient boosting": GradientBoostingFeatureBaseline().fit(X[train], Y[train]).predict(X[test]),
        }
        for system, pred in predictions.items():
            result = E.evaluate(Y[test], pred, None, groups[test], names)
            out[system].append({**{m: float(result["mean"][m]) for m in METRICS}, "ece": float("nan")})
    return out


def _fold_of(path: Path, base: Path) -> tuple[str, int] | None:
    """(variant, fold k) of an evaluation.json under DIR/<protocol>/<variant>/fold<k>/[evaluation/]; None elsewhere."""
    fold_dir = path.parent.parent if path.parent.name == "evaluation" else path.parent
    if not fold_dir.name.startswith("fold"):
        return None
    variant = str(fold_dir.parent.relative_to(base)) if fold_dir.parent != base else "ours"
    return variant, int(fold_dir.name.removeprefix("fold"))


def model_folds(runs: str, protocol: str) -> dict[str, dict[int, dict[str, float]]]:
    """{variant: {fold k: metrics}} from DIR/<protocol>/<variant>/fold<k>/evaluation.json (jobs/evaluate.py
    --out) or DIR/<protocol>/<variant>/fold<k>/evaluation/evaluation.json (jobs/train.py's own evaluation)."""
    found: dict[str, dict[int, dict[str, float]]] = {}
    base = Path(runs) / protocol
    for path in sorted(base.glob("**/evaluation.json")):
        fold = _fold_of(path, base)
        if fold is None:
            continue
        variant, k = fold
        summary = json.loads(path.read_text())
        result = summary["results"]["model"]["mean"]
        calibration = summary.get("calibration") or {}
        ece = calibration.get("ece_calibrated_mean") if calibration.get("applied") else calibration.get("ece_raw_mean")
        if calibration.get("ece_widened_mean") is not None:      # the sigma scoring shows (unfamiliar music widened)
            ece = calibration["ece_widened_mean"]
        found.setdefault(variant, {})[k] = \
            {**{m: float(result[m]) for m in METRICS}, "ece": float("nan") if ece is None else float(ece)}
        alone = summary["results"].get("model_network_only")       # a checkpoint with a feature model
        if alone:
            found.setdefault(f"{variant}, its network alone", {})[k] = \
                {**{m: float(alone["mean"][m]) for m in METRICS}, "ece": float("nan")}
    return found


BLEND_WEIGHTS = (0.25, 0.75, 1.0)


def weight_folds(runs: str, protocol: str, table: dict) -> dict[str, dict[int, dict[str, float]]]:
    """{variant: {fold k: metrics}} of a blended checkpoint's evaluation re-blended at other weights of its
    feature model: its per-recording network scores and blend give the trees' (blend = (1-w) net + w trees)."""
    from pipelines.evaluation import metrics as E

    found: dict[str, dict[int, dict[str, float]]] = {}
    base = Path(runs) / protocol
    names, row_of = table["names"], {rid: i for i, rid in enumerate(table["ids"])}
    for path in sorted(base.glob("**/evaluation.json")):
        fold = _fold_of(path, base)
        summary = json.loads(path.read_text())
        weight = (summary.get("feature_model") or {}).get("weight")
        per = [r for r in summary.get("per_recording", []) if "network" in r and r["recording_id"] in row_of]
        if fold is None or not weight or not per:
            continue
        variant, k = fold
        net = np.array([[r["network"][n] for n in names] for r in per])
        blend = np.array([[r[n] for n in names] for r in per])
        trees = (blend - (1.0 - weight) * net) / weight
        idx = np.array([row_of[r["recording_id"]] for r in per])
        for w in BLEND_WEIGHTS:
            result = E.evaluate(table["Y"][idx], (1.0 - w) * net + w * trees, None, table["groups"][idx], names)
            found.setdefault(f"{variant}, feature model weight {w:g} instead of {weight:g}", {})[k] = \
                {**{m: float(result["mean"][m]) for m in METRICS}, "ece": float("nan")}
    return found


def blend_folds(runs: str, protocol: str, table: dict) -> dict[str, dict[int, dict[str, float]]]:
    """{variant: {fold k: metrics}} of the mean of a model run's per-recording predictions (its
    evaluation.json) and gradient boosting's on the same fold: how much the two systems know apart."""
    from pipelines.evaluation import metrics as E
    from pipelines.evaluation.baselines import GradientBoostingFeatureBaseline
    from pipelines.evaluation.protocols import protocol_folds

    folds = list(protocol_folds(table["everything"], protocol))
    X, Y, groups, names, ids = table["X"], table["Y"], table["groups"], table["names"], table["ids"]
    found: dict[str, dict[int, dict[str, float]]] = {}
    base = Path(runs) / protocol
    for path in sorted(base.glob("**/evaluation/evaluation.json")):
        fold_dir = path.parent.parent
        if not fold_dir.name.startswith("fold"):
            continue
        k = int(fold_dir.name.removeprefix("fold"))
        summary = json.loads(path.read_text())
        per = {r["recording_id"]: r for r in summary.get("per_recording", [])}
        if k >= len(folds) or not per or summary.get("feature_model"):     # blended already
            continue
        side = np.array([folds[k][i] for i in ids])
        train, test = np.isin(side, ["train", "val"]), side == "test"
        test_ids = [ids[i] for i in np.flatnonzero(test)]
        if any(i not in per for i in test_ids):
            continue
        model = np.array([[per[i][n] for n in names] for i in test_ids])
        gb = GradientBoostingFeatureBaseline().fit(X[train], Y[train]).predict(X[test])
        result = E.evaluate(Y[test], (model + gb) / 2.0, None, groups[test], names)
        variant = str(fold_dir.parent.relative_to(base)) + " + gradient boosting (mean of the two)"
        found.setdefault(variant, {})[k] = {**{m: float(result["mean"][m]) for m in METRICS}, "ece": float("nan")}
    return found


def scored_folds(runs: str, protocol: str, table: dict) -> dict[str, dict[int, dict[str, float]]]:
    """{variant: {fold k: metrics}} of the scoring job's results under DIR/<protocol>/<variant>/scored<k>/
    (`jobs/score.py --out` of that fold's test recordings) against the ratings: what a library user gets."""
    import glob as _glob

    import pyarrow.parquet as pq

    from pipelines.evaluation import metrics as E

    found: dict[str, dict[int, dict[str, float]]] = {}
    base = Path(runs) / protocol
    row_of = {rid: i for i, rid in enumerate(table["ids"])}
    names = table["names"]
    for pointer in sorted(base.glob("*/scored*/latest.json")):
        run = json.loads(pointer.read_text())["run_id"]
        parts = _glob.glob(str(pointer.parent / "runs" / run / "results" / "*.parquet"))
        results = [r for part in parts for r in pq.read_table(part).to_pylist()]
        ok = [r for r in results if r["status"] == "ok" and r["recording_id"] in row_of]
        if not ok:
            continue
        idx = np.array([row_of[r["recording_id"]] for r in ok])
        pred = np.array([[r[f"score_{n}"] for n in names] for r in ok], dtype=np.float64)
        result = E.evaluate(table["Y"][idx], pred, None, table["groups"][idx], names)
        k = int(pointer.parent.name.removeprefix("scored"))
        found.setdefault(f"{pointer.parent.parent.name} via jobs/score.py", {})[k] = \
            {**{m: float(result["mean"][m]) for m in METRICS}, "ece": float("nan")}
    return found


def _cell(values: list[float]) -> str:
    finite = [v for v in values if np.isfinite(v)]
    if not finite:
        return "n/a"                       # e.g. r of a constant prediction
    mean = statistics.fmean(finite)
    return f"{mean:.3f} ± {statistics.pstdev(finite):.3f}" if len(finite) > 1 else f"{mean:.3f}"


def main(data: str | None = None, runs: str | None = None) -> dict:
    from pipelines.evaluation.human_ceiling import pairwise_agreement, read_raw_ratings, split_half_agreement
    from pipelines.io.corpora import CorpusError, parse_percepiano_name

    started = time.time()
    data = str(data or DATA)
    table = corpus_table(data)
    ratings = read_raw_ratings(os.path.join(data, "ratings_raw.csv"))
    ceiling = split_half_agreement(ratings)
    passages = {}
    for name in ratings:
        try:
            passages[name] = parse_percepiano_name(name)["passage"]
        except CorpusError:
            continue
    ranking = pairwise_agreement(ratings, passages)
    rows, raw = [], {}
    for protocol in ("piece", "performer", "work"):
        systems = baseline_folds(table, protocol)
        raw[protocol] = dict(systems)
        n_folds = len(systems["mean"])
        for system, folds in systems.items():
            rows.append(f"| {protocol} | {system} | all {len(folds)} | "
                        + " | ".join(_cell([f[m] for f in folds]) for m in COLUMNS) + " |")
        variants = {**model_folds(runs, protocol), **scored_folds(runs, protocol, table),
                    **blend_folds(runs, protocol, table), **weight_folds(runs, protocol, table)} if runs else {}
        compared: set[tuple[int, ...]] = set()      # fold sets whose baseline rows are in the table already
        for variant, by_fold in variants.items():
            raw[protocol][f"model: {variant}"] = by_fold
            ks = sorted(by_fold)
            which = f"all {n_folds}" if len(ks) == n_folds else \
                f"fold{'s' if len(ks) > 1 else ''} {', '.join(map(str, ks))}"
            rows.append(f"| {protocol} | **model: {variant}** | {which} | "
                        + " | ".join(_cell([by_fold[k][m] for k in ks]) for m in COLUMNS) + " |")
            if len(ks) < n_folds and tuple(ks) not in compared:     # the baselines on the same folds, once
                compared.add(tuple(ks))
                for system in ("mean", "gradient boosting"):
                    rows.append(f"| {protocol} | {system}, same folds | {which} | "
                                + " | ".join(_cell([systems[system][k][m] for k in ks]) for m in COLUMNS) + " |")
    published = [f"| {name} | {piece:.3f} | {performer:.3f} |" for name, piece, performer in PUBLISHED]
    markdown = "\n".join([
        f"{len(table['ids'])} rated PercePiano performances ({data}); R², Pearson r, MAE (0..100 scale) and "
        "pairwise ranking accuracy (pairs of performances of the same passage), each the mean over the 19 "
        "dimensions, then mean ± standard deviation over folds. Folds as `jobs/splits.py` writes them.",
        "",
        "| protocol | system | folds | R² | r | MAE | pairwise | ECE |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Human ceiling (`ratings_raw.csv`, {ceiling['segments']} segments, median {ceiling['raters_median']:.0f} "
        f"raters, {ceiling['repeats']} random rater splits): split-half r {np.nanmean(ceiling['split_half_r']):.3f}; "
        f"Spearman-Brown reliability of the mean rating, the ceiling for R², {ceiling['r2_ceiling_mean']:.3f} "
        f"(for r: {ceiling['r_ceiling_mean']:.3f}); per dimension from "
        f"{np.nanmin(ceiling['reliability']):.2f} to {np.nanmax(ceiling['reliability']):.2f}.",
        "",
        f"Human ceiling for pairwise accuracy (the same raters, pairs of performances of one passage, "
        f"{ranking['groups']} passages, {ranking['repeats']} random rater splits): half the raters order the "
        f"other half's pairs at {ranking['split_half_mean']:.3f}; a fresh panel of half the size would order "
        f"this panel's at {ranking['fresh_half_panel_mean']:.3f}; a model that knew every performance's true "
        f"score, at {ranking['perfect_model_mean']:.3f} (per dimension from {np.nanmin(ranking['perfect_model']):.2f} "
        f"to {np.nanmax(ranking['perfect_model']):.2f}): the ceiling for pairwise accuracy.",
        "",
        "Published R² (the full dataset, four compositions; their piece split is by passage):",
        "",
        "| model | piece split | performer split |",
        "|---|---|---|",
        *published,
        "",
        f"{machine()}. {time.time() - started:.0f} s.",
    ])
    print(markdown)
    return {"markdown": markdown, "folds": raw, "ceiling": ceiling, "pairwise_ceiling": ranking}


def write_scoring_manifest(data: str, splits_csv: str, out_csv: str, split: str = "test") -> int:
    """A `jobs/score.py` manifest (recording_id, performance_midi_uri, score_uri) of one side of a fold."""
    import csv

    from pipelines.io.corpora import read_percepiano
    from pipelines.io.splits_table import read_splits_table

    side = read_splits_table(splits_csv)
    chosen = [r for r in read_percepiano(data) if side.get(r.recording_id) == split]
    with open(out_csv, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["recording_id", "performance_midi_uri", "score_uri"])
        writer.writerows([r.recording_id, r.midi_uri, r.score_uri or ""] for r in chosen)
    return len(chosen)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--runs", default=None)
    parser.add_argument("--manifest", nargs=2, metavar=("SPLITS_CSV", "OUT_CSV"), default=None,
                        help="only write a scoring manifest of the fold's test recordings, then stop")
    args = parser.parse_args()
    if args.manifest:
        n = write_scoring_manifest(str(args.data or DATA), *args.manifest)
        print(f"{n} test recordings -> {args.manifest[1]}")
    else:
        main(args.data, args.runs)
