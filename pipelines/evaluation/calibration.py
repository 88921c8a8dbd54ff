"""Temperature calibration of the model's sigma: one scale per dimension, fit on a held-out split.

The model's sigma (aleatoric, see model/heads.py) is learned on the training split and is usually too
narrow or too wide on new recordings. Per dimension d, the temperature T_d multiplies sigma; the
Gaussian negative log-likelihood of held-out errors e_r = y_r - mu_r under N(mu_r, (T sigma_r)^2),

    NLL(T) = sum_r [ log T + log sigma_r + e_r^2 / (2 T^2 sigma_r^2) ] + const,

is smallest at

    T_d = sqrt( mean_r ((y_rd - mu_rd) / sigma_rd)^2 )

over the rows r where label, prediction and sigma are finite (and sigma > 0); T_d = 1 where fewer than
3 such rows are left, or where every error is 0 (no evidence to scale by).

`calibrate_checkpoint` predicts a split's windows (val by default), aggregates them to one prediction
per recording as evaluation and scoring do (`pipelines.evaluation.evaluate.aggregate_by_recording`),
fits T on those recording-level predictions, and writes `calibration.json` beside the weights:

    {"temperature": {dimension: T}, "split", "target", "recordings", "ece_before": {dimension: ECE},
     "ece_after": {dimension: ECE}, "ece_before_mean", "ece_after_mean", "created"}

ECE is `pipelines.evaluation.metrics.expected_calibration_error` (mean |coverage - level| of central
Gaussian intervals); after is on the same split, so it is an in-sample figure: `evaluate_checkpoint`
reports both on the test split. T scales the sigma of a recording (after window aggregation), which is
what it was fit on.
"""
from __future__ import annotations

import datetime
import json
import math
from typing import Any

import numpy as np

from model.errors import CheckpointError
from pipelines.evaluation import metrics as E
from pipelines.io import storage

CALIBRATION_FILE = "calibration.json"
MIN_ROWS = 3                     # fewer finite rows than this leave a dimension's temperature at 1


def fit_temperature(y_true: np.ndarray, y_pred: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """(N, D) labels, predictions and sigma (NaN = missing) -> (D,) the NLL-optimal temperature of each dimension."""
    t, p, s = (E.as_matrix(a, name) for a, name in ((y_true, "y_true"), (y_pred, "y_pred"), (sigma, "sigma")))
    E.check_same_shape(t, p, "y_pred")
    E.check_same_shape(t, s, "sigma")
    out = np.ones(t.shape[1])
    for d in range(t.shape[1]):
        td, pd, sd = E.finite_pairs(t[:, d], p[:, d], s[:, d])
        keep = sd > 0
        if int(keep.sum()) < MIN_ROWS:
            continue
        z2 = float(np.mean(((td[keep] - pd[keep]) / sd[keep]) ** 2))
        if z2 > 0:
            out[d] = math.sqrt(z2)
    return out


def ece_per_dimension(y_true: np.ndarray, y_pred: np.ndarray, sigma: np.ndarray,
                      names: list[str]) -> dict[str, float]:
    """{dimension: ECE} of (N, D) predictions with their sigma; NaN where a dimension has no finite row."""
    return {n: E.expected_calibration_error(y_true[:, d], y_pred[:, d], sigma[:, d]) for d, n in enumerate(names)}


def _mean(values: dict[str, float]) -> float:
    finite = [v for v in values.values() if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def calibrate_checkpoint(checkpoint_uri: str, data_uri: str, split: str = "val", target: str | None = None, *,
                         labels_lookup: dict[str, str] | None = None,
                         splits: dict[str, str] | None = None) -> dict[str, Any]:
    """Fit the temperature of a checkpoint on a split and write calibration.json into its model directory.

    checkpoint_uri: a model directory or a Ray checkpoint holding one (local or s3://). target: the labels
    (pseudo / expert), by default the checkpoint's training stage. labels_lookup: {recording_id: labels
    JSON} replacing the data's `labels_json` (a run trained with `--labels`); splits: {recording_id: split}
    replacing the data's splits (a run trained with `--splits`). Returns the written record
    plus its "uri"; when the split has no labelled recording, writes nothing and returns
    {"uri": None, "skipped": why, "split", "target", "recordings": 0}.
    """
    from pipelines.evaluation.evaluate import original_rows, predict_recordings, target_for
    from pipelines.io.model_files import load_checkpoint
    from pipelines.preprocess import read_segments_table
    from pipelines.training.batches import columns_for, target_column
    from pipelines.training.run import model_dir_uri

    model_dir = model_dir_uri(checkpoint_uri)
    model, config_dict, schema, extra = load_checkpoint(model_dir)
    names = schema.names
    stage = target_for(extra, target)
    label_col = target_column(stage)
    from pipelines.evaluation.evaluate import assessable_rows
    from pipelines.io.splits_table import apply_splits

    from pipelines.training.feature_model import FEATURE_COLUMN, feature_model_for

    encoder = config_dict["model"]["audio_encoder"]
    feature_model = feature_model_for(model_dir, names, stage, data_uri)       # the blend is what is calibrated
    columns = columns_for(encoder, bool(config_dict["model"].get("recording_statistics")))
    table = assessable_rows(original_rows(apply_splits(read_segments_table(
        data_uri, columns=columns + ([FEATURE_COLUMN] if feature_model is not None else [])),
                                                       splits), split), encoder)
    if labels_lookup is not None and label_col == "labels_json":
        table = _with_labels(table, labels_lookup)
    skipped = {"uri": None, "split": split, "target": stage, "recordings": 0}
    if table.num_rows == 0:
        return {**skipped, "skipped": f"{data_uri}: no segments in the {split!r} split"}
    rec = predict_recordings(model, table, names, label_col,
                             audio_only=bool(config_dict.get("train", {}).get("audio_only", False)),
                             max_notes=config_dict["model"].get("max_notes"), feature_model=feature_model,
                             feature_holdout=True)
    labelled = np.isfinite(rec.y_true).any(axis=1)                          # (R,)
    if not labelled.any():
        return {**skipped, "skipped": f"{data_uri}: no recording of the {split!r} split has {stage} labels"}
    y_true, scores, sigma = rec.y_true[labelled], rec.scores[labelled], rec.sigma[labelled]
    temperature = fit_temperature(y_true, scores, sigma)                     # (D,)
    ece_before = ece_per_dimension(y_true, scores, sigma, names)
    ece_after = ece_per_dimension(y_true, scores, sigma * temperature[None], names)
    record = {
        "temperature": {n: float(t) for n, t in zip(names, temperature)},
        "split": split, "target": stage, "recordings": int(labelled.sum()),
        "ece_before": ece_before, "ece_after": ece_after,
        "ece_before_mean": _mean(ece_before), "ece_after_mean": _mean(ece_after),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    text = E.to_json(record)                                                 # strict JSON: NaN -> null
    uri = storage.join(model_dir, CALIBRATION_FILE)
    storage.write_text(uri, text + "\n")
    return {**json.loads(text), "uri": uri}


def _with_labels(table, lookup: dict[str, str]):
    """`table` with its labels_json replaced from {recording_id: labels JSON} ("{}" for the others)."""
    import pyarrow as pa

    values = [lookup.get(r, "{}") for r in table.column("recording_id").to_pylist()]
    return table.set_column(table.column_names.index("labels_json"), "labels_json", pa.array(values, pa.string()))


def load_calibration(model_dir_uri: str) -> dict[str, Any] | None:
    """The calibration.json of a model directory (local or s3://) with its "uri" added, or None when absent.

    A file that is not JSON or has no positive, finite temperature per dimension raises CheckpointError.
    """
    uri = storage.join(model_dir_uri, CALIBRATION_FILE)
    if not storage.exists(uri):
        return None
    try:
        data = json.loads(storage.read_text(uri))
    except ValueError:
        raise CheckpointError(f"{uri}: not valid JSON") from None
    temperature = data.get("temperature") if isinstance(data, dict) else None
    if not isinstance(temperature, dict) or not temperature or not all(
            isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t > 0
            for t in temperature.values()):
        raise CheckpointError(f"{uri}: expected {{\"temperature\": {{dimension: positive number}}, ...}}, "
                              f"written by pipelines.evaluation.calibration.calibrate_checkpoint")
    return {**data, "uri": uri}


def apply_temperature(sigma: np.ndarray, calibration: dict[str, Any], names: list[str]) -> np.ndarray:
    """sigma (..., D) in the order of `names`, times each dimension's temperature.

    A calibration whose dimensions are not exactly `names` (another schema) raises CheckpointError
    naming its file."""
    temperature = calibration["temperature"]
    if set(temperature) != set(names):
        where = calibration.get("uri", CALIBRATION_FILE)
        raise CheckpointError(f"{where}: calibrated for dimensions {sorted(temperature)}, but the model has "
                              f"{sorted(names)}; recalibrate with calibrate_checkpoint")
    sigma = np.asarray(sigma, dtype=np.float64)
    if sigma.shape[-1] != len(names):
        raise ValueError(f"sigma has {sigma.shape[-1]} dimensions; expected {len(names)} ({', '.join(names)})")
    return sigma * np.asarray([temperature[n] for n in names], dtype=np.float64)


def calibration_summary(y_true: np.ndarray, y_pred: np.ndarray, sigma: np.ndarray,
                        calibration: dict[str, Any] | None, names: list[str],
                        widened: np.ndarray | None = None) -> dict[str, Any]:
    """ECE of (R, D) recording predictions with the model's raw sigma and, when there is a calibration, with
    the calibrated sigma, and with the sigma scoring shows after widening it for unfamiliar music (`widened`,
    when the feature model has a novelty reference): what `evaluate_checkpoint` reports on its split."""
    ece_raw = ece_per_dimension(y_true, y_pred, sigma, names)
    ece_wide = None if widened is None else ece_per_dimension(y_true, y_pred, widened, names)
    out: dict[str, Any] = {"applied": calibration is not None, "file": None, "fit_split": None, "temperature": None,
                           "ece_raw": ece_raw, "ece_raw_mean": _mean(ece_raw),
                           "ece_calibrated": None, "ece_calibrated_mean": None,
                           "ece_widened": ece_wide, "ece_widened_mean": None if ece_wide is None else _mean(ece_wide)}
    if calibration is not None:
        ece_cal = ece_per_dimension(y_true, y_pred, apply_temperature(sigma, calibration, names), names)
        out.update(file=calibration.get("uri"), fit_split=calibration.get("split"),
                   temperature={n: float(calibration["temperature"][n]) for n in names},
                   ece_calibrated=ece_cal, ece_calibrated_mean=_mean(ece_cal))
    return out
