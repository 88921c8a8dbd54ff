"""The training driver: reads feature shards, selects each stage's rows and targets, and fits the
per-worker loop (`pipelines.training.loop`) on Ray Train's TorchTrainer.

Pseudo stage: learns the technical pseudo-labels computed by preprocessing. Expert stage: learns a
labels table (the corpus's labels, or `--labels`), initialised from a pseudo checkpoint. Checkpoints go
to local or S3 storage (kept: the best N by validation loss, plus the latest); a rerun with the same name
resumes; a lost worker is restored from the last checkpoint up to `train.max_failures` times. After
training, an expert stage with `train.feature_blend` > 0 fits its feature model on the train and val
splits (`feature_model.pkl`, `pipelines.training.feature_model`), then the best checkpoint's sigma (of the blended
scores) is calibrated on the val split (`calibration.json` in its model directory,
`pipelines.evaluation.calibration`); a failure in either is logged and never fails the run.
"""
from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import warnings
from typing import Any

import numpy as np

from model.errors import ConfigError
from pipelines.config import Config
from pipelines.io import storage
from pipelines.io.labels_table import labels_for_dimensions, read_labels_table
from pipelines.io.splits_table import apply_splits, read_splits_table
from pipelines.training.batches import columns_for, label_matrix, target_column
from pipelines.training.loop import DIVERGED_FILE, MODEL_DIR, train_loop_per_worker

log = logging.getLogger("pianoeval.train")


def label_statistics(table, names: list[str], stage: str) -> tuple[list[float], list[float], int]:
    """Per-dimension mean/std of the training targets (0..100) and the number of labelled rows."""
    matrix = label_matrix(table.column(target_column(stage)).to_pylist(), names)
    labelled = ~np.all(np.isnan(matrix), axis=1)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)      # all-NaN columns: dimensions without labels
        mean = np.nanmean(matrix, axis=0) if labelled.any() else np.full(len(names), np.nan)
        std = np.nanstd(matrix, axis=0) if labelled.any() else np.full(len(names), np.nan)
    mean = np.where(np.isnan(mean), 50.0, mean)
    std = np.where(np.isnan(std) | (std == 0), 1.0, std)
    return mean.tolist(), std.tolist(), int(labelled.sum())


def select_rows(table, *, stage: str, names: list[str], split: str, originals_only: bool,
                labels_lookup: dict[str, str] | None = None, splits: dict[str, str] | None = None,
                need_notes: bool = False):
    """Rows of one split that carry at least one target for the stage (Arrow table in, Arrow table out)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = apply_splits(table, splits)
    if labels_lookup is not None:
        new = [labels_lookup.get(r, "{}") for r in table.column("recording_id").to_pylist()]
        table = table.set_column(table.column_names.index("labels_json"), "labels_json", pa.array(new, pa.string()))
    keep = pc.equal(table.column("split"), split)
    if "status" in table.column_names:      # error rows (no audio, CQT or notes) never train, --labels or not
        keep = pc.and_(keep, pc.equal(table.column("status"), "ok"))
    if originals_only:
        keep = pc.and_(keep, pc.equal(table.column("augment"), ""))
    if need_notes:                          # a score-only model (model.audio_encoder=none) has nothing to read
        keep = pc.and_(keep, pc.greater(table.column("n_notes"), 0))
    targets = label_matrix(table.column(target_column(stage)).to_pylist(), names)
    keep = pc.and_(keep, pa.array(~np.all(np.isnan(targets), axis=1)))
    return table.filter(keep)


def run_training(config: Config, data_uri: str, storage_uri: str, *, name: str, init: str | None = None,
                 labels_uri: str | None = None, callbacks: list | None = None, calibrate: bool = True,
                 controller_failure_limit: int = -1, loop_extra: dict[str, Any] | None = None,
                 restart: bool = False, splits_uri: str | None = None) -> dict[str, Any]:
    """Fit on Ray Train; returns a summary with the best and latest checkpoint URIs and the metrics.

    callbacks: more Ray Train callbacks (a Tune trial adds TuneReportCallback); calibrate: calibrate the best
    checkpoint's sigma on the val split; controller_failure_limit: how often the train controller may fail
    (e.g. a worker group that cannot start) before the run fails (-1: no limit); loop_extra: more keys for
    the per-worker loop's config; restart: discard an earlier run of this name (its logs stay) instead of
    resuming it; splits_uri: a splits table (pipelines/io/splits_table.py) that replaces the feature rows'
    splits. A rerun that would resume a run made with other settings (RUN_FILE) is refused."""
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from pipelines.preprocess import read_segments, read_segments_table

    t = config.train
    schema = config.schema()
    names = schema.names
    storage.check_bucket(storage_uri)
    lookup = _labels_lookup(labels_uri, names) if labels_uri else None
    splits = read_splits_table(splits_uri) if splits_uri else None
    selection = {"stage": t.stage, "names": names, "labels_lookup": lookup, "splits": splits,
                 "need_notes": not config.model.uses_audio}
    meta = read_segments_table(data_uri, columns=["recording_id", "split", "augment", "status", "labels_json",
                                                  "pseudo_json", "n_notes"])
    meta = apply_splits(meta, splits)           # the --splits table's splits, counted as they train
    train_meta = select_rows(meta, split="train", originals_only=not t.augmented, **selection)
    val_rows = select_rows(meta, split="val", originals_only=True, **selection).num_rows
    unknown = unknown_label_ids(lookup, meta) if lookup is not None else []
    if train_meta.num_rows == 0 or val_rows == 0:
        raise ValueError(f"{data_uri}: the {t.stage} stage needs labelled train and val segments "
                         f"(found {train_meta.num_rows} train, {val_rows} val)"
                         + (f"; {_unknown_text(unknown, labels_uri)}" if unknown else ""))
    print(selection_line(meta, train_meta.num_rows, val_rows, t.stage, lookup is not None,
                         unknown=unknown, labels_uri=labels_uri, augmented=t.augmented), flush=True)
    label_mean, label_std, _ = label_statistics(train_meta, names, t.stage)
    init_line = check_init(model_dir_uri(init), config) if init else None
    blend = t.feature_blend if t.stage == "expert" else 0.0
    if blend > 0:                       # before any worker starts: the feature model needs the descriptors
        from pipelines.training.feature_model import check_feature_column
        check_feature_column(data_uri)

    run_dir = storage.join(storage_uri, name)
    if restart:
        clear_run(run_dir)
    check_resume(run_dir, run_fingerprint(config, data_uri, init, labels_uri, splits_uri))
    diverged_uri = storage.join(run_dir, DIVERGED_FILE)
    if storage.exists(diverged_uri):        # an earlier attempt diverged: this one may not (another --init...)
        storage.delete(diverged_uri)

    columns = columns_for(config.model.audio_encoder, config.model.recording_statistics)
    segments = read_segments(data_uri, columns=columns, filter_ok=False)
    datasets = {
        split: segments.map_batches(select_rows, batch_format="pyarrow", batch_size=None,
                                    fn_kwargs={"split": split, "originals_only": split != "train" or not t.augmented,
                                               **selection})
        for split in ("train", "val")
    }
    if cache_datasets(data_uri, t.cache_datasets_mib):   # read once, not once an epoch
        datasets = {split: ds.materialize() for split, ds in datasets.items()}
    tensorboard_uri = storage.join(run_dir, "tensorboard")
    tensorboard_local = storage.resolve(tensorboard_uri)[1] if not storage.is_s3(storage_uri) else \
        os.path.join(tempfile.mkdtemp(prefix="pianoeval-tb-"), name)
    loop_config = {
        "config": config.to_dict(), "schema": schema.to_dict(), "label_mean": label_mean, "label_std": label_std,
        "train_rows": train_meta.num_rows, "init_dir": model_dir_uri(init) if init else None,
        "tensorboard_local": tensorboard_local, "tensorboard_uri": tensorboard_uri,
        "threads": max(1, int(t.cpus_per_worker)), "version": config.fingerprint(), "name": name, "run_dir": run_dir,
        **(loop_extra or {}),
    }
    storage_path = storage.resolve(storage_uri)[1]
    storage_fs = storage.s3_filesystem() if storage.is_s3(storage_uri) else None
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                               resources_per_worker={"CPU": t.cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path, storage_filesystem=storage_fs,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=t.checkpoints_to_keep,
                                                         checkpoint_score_attribute="val_loss",
                                                         checkpoint_score_order="min"),
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures,
                                                   controller_failure_limit=controller_failure_limit),
            callbacks=[epoch_progress_callback(name, t.epochs), *(callbacks or [])]),
        datasets=datasets,
    )
    result = trainer.fit()
    best = min(result.best_checkpoints, key=lambda cm: cm[1].get("val_loss", math.inf)) \
        if result.best_checkpoints else (result.checkpoint, result.metrics or {})
    summary = {
        "name": name,
        "run_dir": run_dir,
        "latest_checkpoint": _checkpoint_uri(result.checkpoint, storage_uri),
        "best_checkpoint": _checkpoint_uri(best[0], storage_uri),
        "best_metrics": best[1],
        "final_metrics": result.metrics,
        "tensorboard": tensorboard_uri,
        "init": init_line,
        "train_segments": train_meta.num_rows,
        "val_segments": val_rows,
    }
    diverged = json.loads(storage.read_text(diverged_uri)) if storage.exists(diverged_uri) else None
    summary["feature_model"] = fit_feature_model_best(summary["best_checkpoint"], data_uri, blend,
                                                      labels_lookup=lookup, splits=splits, seed=t.seed,
                                                      rank=t.feature_rank) \
        if blend > 0 and not diverged else None
    if blend == 0 and summary["best_checkpoint"]:      # resumed with the blend turned off: the network alone
        from pipelines.training.feature_model import remove_feature_model
        remove_feature_model(summary["best_checkpoint"])
    summary["calibration"] = calibrate_best(summary["best_checkpoint"], data_uri, labels_lookup=lookup,
                                            splits=splits) \
        if calibrate and not diverged else None
    storage.write_text(storage.join(run_dir, "summary.json"), json.dumps(summary, indent=2, default=str))
    if diverged:
        kept = (f"the best checkpoint is still epoch {best[1].get('epoch')}'s: {summary['best_checkpoint']}"
                if summary["best_checkpoint"] else "no checkpoint was kept")
        raise TrainingDiverged(f"{name}: stopped at epoch {diverged['epoch']}: the loss was NaN or inf in "
                               f"{diverged['nonfinite_batches']} batches (learning rate too high, or NaN/inf in the "
                               f"features?); {kept}")
    return summary


def unknown_label_ids(lookup: dict[str, str], meta) -> list[str]:
    """Recording ids of a --labels table that the feature set does not hold (sorted)."""
    present = set(meta.column("recording_id").to_pylist())
    return sorted(rid for rid in lookup if rid not in present)


def _unknown_text(unknown: list[str], labels_uri: str | None) -> str:
    shown = ", ".join(repr(rid) for rid in unknown[:3]) + (", ..." if len(unknown) > 3 else "")
    return f"{len(unknown)} recording ids of {labels_uri} are not in the feature set ({shown})"


def selection_line(meta, train_rows: int, val_rows: int, stage: str, from_table: bool,
                   unknown: list[str] | None = None, labels_uri: str | None = None, augmented: bool = True) -> str:
    """What training uses of the feature set and what it leaves out, in one line."""
    import pyarrow.compute as pc

    def count(split: str, originals: bool) -> int:
        keep = pc.equal(meta.column("split"), split)
        if originals:
            keep = pc.and_(keep, pc.equal(meta.column("augment"), ""))
        return int(pc.sum(keep).as_py() or 0)

    copies = count("train", False) - count("train", True)
    unlabelled = count("train", not augmented) - train_rows + count("val", True) - val_rows
    source = "the --labels table" if from_table else ("pseudo-labels" if stage == "pseudo" else "expert labels")
    line = f"training on {train_rows} train / {val_rows} val segments with {source}"
    if unlabelled:
        line += f"; {unlabelled} segments without a target for the {stage} stage left out"
    if copies and not augmented:
        line += f"; {copies} augmented copies left out (train.augmented=false)"
    if unknown:
        line += f"; {_unknown_text(unknown, labels_uri)}"
    return line


class TrainingDiverged(ValueError):
    """The loss became NaN or inf: the run stopped before that epoch could replace a checkpoint."""


RUN_FILE = "run.json"       # what a run trains on and with: a rerun by name must match it to resume
# config keys a resumed run may change: more epochs or patience, other resources
RESUMABLE_KEYS = {"train.epochs", "train.patience", "train.num_workers", "train.cpus_per_worker",
                  "train.max_failures", "train.checkpoints_to_keep", "train.feature_blend", "train.cache_datasets_mib",
                  "train.feature_rank"}


def cache_datasets(data_uri: str, limit_mib: float) -> bool:
    """Whether a run on `data_uri` reads its datasets once and keeps them in Ray's object store: when the
    published segment files total at most `limit_mib` MiB and at most a quarter of the object store.
    Otherwise every epoch reads the Parquet files again (Ray Data streams them), which costs each epoch a
    read and a filter of every row, and on a small machine the CPU those read tasks take from training."""
    import ray

    from pipelines.preprocess import published_segments

    if limit_mib <= 0:
        return False
    size = sum(f.size for f in storage.list_files(published_segments(data_uri), with_hash=False))
    store = ray.cluster_resources().get("object_store_memory", 0.0)
    return size <= limit_mib * 2 ** 20 and size <= store / 4


def run_fingerprint(config: Config, data_uri: str, init: str | None, labels_uri: str | None,
                    splits_uri: str | None = None) -> dict[str, Any]:
    def where(uri: str | None) -> str | None:
        return uri if uri is None or storage.is_s3(uri) else os.path.abspath(uri)

    flat = _flatten(config.to_dict())
    return {"config": {k: v for k, v in flat.items() if k not in RESUMABLE_KEYS}, "data": where(data_uri),
            "init": where(init), "labels": where(labels_uri),
            **({"splits": where(splits_uri)} if splits_uri else {})}


def check_resume(run_dir: str, fingerprint: dict[str, Any]) -> None:
    """Record what a new run trains on; refuse, in one line, to resume a run made with other settings."""
    if not check_rerun(run_dir, fingerprint):
        storage.write_text(storage.join(run_dir, RUN_FILE), json.dumps(fingerprint, indent=2, default=str))


def check_rerun(run_dir: str, fingerprint: dict[str, Any]) -> bool:
    """True when a run of this name exists and was made with these settings (it will resume), False when there
    is none; a one-line ConfigError when it was made with other settings. Writes nothing and needs no Ray, so
    `jobs/train.py` refuses such a rerun before it starts one."""
    uri = storage.join(run_dir, RUN_FILE)
    if not storage.exists(uri):
        return False
    saved = json.loads(storage.read_text(uri))
    changed = []
    for what in ("data", "init", "labels", "splits"):
        if saved.get(what) != fingerprint.get(what):
            changed.append(f"--{what} {saved.get(what)} -> {fingerprint.get(what)}")
    old, new = saved.get("config", {}), fingerprint["config"]
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            changed.append(f"{key} {old.get(key)!r} -> {new.get(key)!r}")
    if changed:
        more = f" (and {len(changed) - 2} more)" if len(changed) > 2 else ""
        raise ConfigError(f"{run_dir}: a run of this name was made with other settings ({'; '.join(changed[:2])}"
                          f"{more}); rerun with its settings to resume it, use --restart to start it over, "
                          "or pick a new --name")
    return True


def clear_run(run_dir: str) -> None:
    """Remove an earlier run's checkpoints and state (its logs/ stay: the current job writes there)."""
    if not storage.exists(run_dir):
        return
    removed = 0
    for entry in storage.list_files(run_dir):
        rel = entry.uri[len(run_dir.rstrip("/")):].lstrip("/")
        if not rel.startswith("logs/"):
            storage.delete(entry.uri)
            removed += 1
    print(f"restarting {run_dir}: removed {removed} files of the earlier run", flush=True)


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{path}."))
        else:
            out[path] = value
    return out


MIN_INIT_SHARE = 0.5     # --init needs at least this share of the trunk's tensors to fit


def epoch_progress_callback(name: str, epochs: int):
    """A Ray Train callback (it runs in the train controller) that prints one progress line per epoch,
    marked for the job's console (pipelines/console.py), which shows it while the workers' own output
    goes to the log."""
    import ray.train

    from pipelines.console import PROGRESS_MARK

    class EpochProgress(ray.train.UserCallback):
        def after_report(self, run_context, metrics, checkpoint) -> None:
            m = metrics[0] if metrics else {}
            if "epoch" not in m:
                return
            nan = float("nan")
            print(f"{PROGRESS_MARK}{name}: epoch {m['epoch']}/{epochs}  train loss {m.get('train_loss', nan):.3f}"
                  f"  val loss {m.get('val_loss', nan):.3f}  val MAE {m.get('val_mae', nan):.1f}"
                  f"  ({m.get('epoch_seconds', 0.0):.0f} s){'  early stop' if m.get('early_stopped') else ''}",
                  flush=True)

    return EpochProgress()


def check_init(init_uri: str, config: Config) -> str:
    """Before any worker starts: what the run will take from `init_uri` (a checkpoint of any dimension
    schema), printed as one line and returned; a ConfigError naming it when nothing fits."""
    import torch

    from model.builder import build_model
    from model.checkpoint import transfer_state, transfer_summary
    from model.errors import ConfigError
    from pipelines.io.model_files import load_checkpoint

    source, _, source_schema, _ = load_checkpoint(init_uri)
    schema = config.schema()
    with torch.device("meta"):          # shapes only: no weights, no download
        target = build_model(config.model, schema, dropout=config.train.dropout, pretrained=False)
    _, report = transfer_state(target.state_dict(), source.state_dict(), schema.names, source_schema.names)
    if report["trunk_loaded"] < MIN_INIT_SHARE * report["trunk_tensors"]:
        raise ConfigError(f"{init_uri}: only {report['trunk_loaded']} of the model's {report['trunk_tensors']} "
                          f"encoder, fusion and pooling tensors fit this checkpoint (another preset or architecture?); "
                          f"train without --init or pick a checkpoint of the same preset")
    line = transfer_summary(report, init_uri)
    print(line, flush=True)
    return line


def fit_feature_model_best(checkpoint_uri: str | None, data_uri: str, weight: float, *,
                           labels_lookup: dict[str, str] | None = None, splits: dict[str, str] | None = None,
                           seed: int = 0, rank: int = 0) -> dict[str, Any] | None:
    """Fit the feature model of the best checkpoint on the train and val recordings (before its calibration,
    which then calibrates the blend with the val recordings' out-of-sample trees);
    prints one line; on failure log it and return {"error": message} (the network's checkpoint stands)."""
    from pipelines.training.feature_model import fit_feature_model

    if checkpoint_uri is None:
        return None
    try:
        record = fit_feature_model(checkpoint_uri, data_uri, weight, labels_lookup=labels_lookup, splits=splits,
                                   seed=seed, rank=rank)
    except Exception as exc:  # an extra like the calibration: the trained network stands without it
        log.warning("fitting the feature model of %s failed: %s: %s", checkpoint_uri, type(exc).__name__, exc,
                    exc_info=True)
        return {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
    projected = f", projected on {record['rank']} components" if record["rank"] else ""
    print(f"feature model: gradient boosting on {len(record['features'])} descriptors (performance and score) of "
          f"{record['recordings']} train and val recordings, {len(record['fitted'])} of {len(record['dimensions'])} "
          f"dimensions{projected}, weight {weight:g} in each recording's score", flush=True)
    return record


def calibrate_best(checkpoint_uri: str | None, data_uri: str, *,
                   labels_lookup: dict[str, str] | None = None,
                   splits: dict[str, str] | None = None) -> dict[str, Any] | None:
    """Calibrate a checkpoint's sigma on the val split; on failure log it and return {"error": message}."""
    from pipelines.evaluation.calibration import calibrate_checkpoint

    if checkpoint_uri is None:
        return None
    try:
        result = calibrate_checkpoint(checkpoint_uri, data_uri, split="val", labels_lookup=labels_lookup,
                                      splits=splits)
    except Exception as exc:  # calibration is an extra: the trained checkpoint stands without it
        log.warning("calibrating %s failed: %s: %s", checkpoint_uri, type(exc).__name__, exc, exc_info=True)
        return {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
    if result.get("skipped"):
        log.warning("calibration of %s skipped: %s", checkpoint_uri, result["skipped"])
    return result


def _labels_lookup(labels_uri: str, names: list[str]) -> dict[str, str]:
    """{recording_id: labels JSON} of a labels table, restricted to the schema's dimensions."""
    labels = labels_for_dimensions(read_labels_table(labels_uri), names, labels_uri)
    return {rid: json.dumps(values) for rid, values in labels.items()}


def _checkpoint_uri(checkpoint, storage_uri: str) -> str | None:
    """The URI of a checkpoint's model directory (what jobs/evaluate.py and the scorer take)."""
    if checkpoint is None:
        return None
    path = checkpoint.path
    if storage.is_s3(storage_uri):
        return f"s3://{path.lstrip('/')}/{MODEL_DIR}"
    return os.path.join(path, MODEL_DIR)


def model_dir_uri(uri: str) -> str:
    """The model directory of a checkpoint URI: the `model/` directory itself or a Ray checkpoint holding it."""
    inner = storage.join(uri, MODEL_DIR)
    if storage.is_dir(inner) or storage.is_s3(uri) and storage.exists(inner):
        return inner
    if not storage.exists(uri):
        raise storage.StorageError(f"{uri}: no such checkpoint directory")
    return uri
