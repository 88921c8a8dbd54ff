"""A hyperparameter sweep over the real training job: Ray Tune + OptunaSearch (seeded) + ASHA.

Each trial is a Tune function that resolves its config (the base config with the sampled values set),
then builds and fits the training job's `TorchTrainer` (`pipelines.training.run.run_training`), reporting
each epoch to Tune through `TuneReportCallback`. Layout under `<storage>/<name>/`:

    sweep.json               what the sweep searches (base config, space, data, metric): a rerun must match
    <trial dirs>/            Tune's per-trial results and TensorBoard events (HParams tab)
    runs/<trial id>/         each trial's Ray Train run: checkpoints (`model/` in each)
    summary.csv              one row per trial: parameters, best metric, status, epochs run
    metric_vs_lr.png         the metric against the main learning rate
    best/                    config.yaml (resolved), model/ (calibrated on val), trial.json

A rerun with the same name resumes the sweep: finished trials are kept, unfinished ones continue from
their last checkpoint, and the search continues up to the requested number of samples.
"""
from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from typing import Any

from model.errors import ConfigError
from pipelines.config import Config, config_from_dict
from pipelines.io import storage
from tune.spaces import Param, apply_params, check_space, default_space_name, load_space, param_space

log = logging.getLogger("pianoeval.tune")

# Each trial's driver (the Tune function) only waits on its TorchTrainer: it holds no CPU, only a little memory
# (a bundle cannot be empty). Any CPU share it held would leave Ray Data, whose budget is the cluster minus the
# training workers, with less than the 1 CPU its read tasks ask for: the sweep then waits forever (seen here).
DRIVER_RESOURCES = {"CPU": 0, "memory": 64 * 2**20}
DATA_CPUS = 1.0             # kept free per running trial for the Ray Data read tasks that feed its workers
TRIAL_CONTROLLER_FAILURES = 3   # a trial whose worker group cannot start this often fails instead of waiting
SWEEP_FILE = "sweep.json"
RUNS_DIR = "runs"
BEST_DIR = "best"
METRICS = {"val_loss": "min", "val_mae": "min"}


def train_trial(params: dict[str, Any], *, base_config: dict, data_uri: str, runs_uri: str,
                init: str | None, labels_uri: str | None) -> None:
    """The Tune function: one training run with the sampled `params` ({config path: value})."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipelines.training.run import TrainingDiverged, run_training

    trial_id = ray.tune.get_context().get_trial_id()
    config = config_from_dict(apply_params(base_config, params))
    try:
        run_training(config, data_uri, runs_uri, name=f"trial_{trial_id}", init=init, labels_uri=labels_uri,
                     callbacks=[TuneReportCallback()], calibrate=False,
                     controller_failure_limit=TRIAL_CONTROLLER_FAILURES,
                     loop_extra={"tensorboard_local": None, "tensorboard_uri": None,
                                 "report_placement_group": True, "report_when_done": True})
    except TrainingDiverged as exc:     # its metrics say so (status "diverged"); a retry would diverge again
        log.warning("%s", exc)


def default_max_concurrent(config: Config, resources: dict[str, float]) -> int:
    """How many trials fit the cluster at once: each needs its driver, its training workers and a share
    for the Ray Data tasks that feed them (GPUs: one per worker)."""
    t = config.train
    workers = max(1, t.num_workers)
    if t.use_gpu:
        return max(1, int(resources.get("GPU", 0) // workers))
    need = workers * t.cpus_per_worker + DATA_CPUS
    return max(1, int(resources.get("CPU", 1) // need))


def sweep_fingerprint(config: Config, params: list[Param], data_uri: str, metric: str,
                      init: str | None, labels_uri: str | None) -> dict[str, Any]:
    """What a sweep searches: a resumed sweep must search the same thing."""
    return {"config": config.fingerprint(), "space": [p.describe() for p in params], "data": data_uri,
            "metric": metric, "init": init, "labels": labels_uri}


def check_sweep(config: Config, data_uri: str, storage_uri: str, *, name: str, samples: int,
                space: str | dict | None = None, metric: str = "val_loss", init: str | None = None,
                labels_uri: str | None = None) -> dict[str, Any]:
    """Every check a sweep makes before it starts (metric, samples, search space, bucket, and a rerun of the
    name with other settings), each failure a one-line ConfigError; needs no Ray, so `jobs/tune.py` calls
    it before starting one. Returns what `run_search` goes on with."""
    # trials run in their own working directories: relative local paths must not follow them there
    data_uri, storage_uri = _absolute(data_uri), _absolute(storage_uri)
    init, labels_uri = (_absolute(init) if init else None), (_absolute(labels_uri) if labels_uri else None)
    if metric not in METRICS:
        raise ConfigError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if samples < 1:
        raise ConfigError(f"--samples must be >= 1, got {samples}")
    params = load_space(space if space is not None else default_space_name(config))
    check_space(params, config)
    storage.check_bucket(storage_uri)
    sweep_uri = storage.join(storage_uri, name)
    fingerprint = sweep_fingerprint(config, params, data_uri, metric, init, labels_uri)
    fingerprint["samples"] = samples
    return {"data": data_uri, "storage": storage_uri, "init": init, "labels": labels_uri, "params": params,
            "sweep": sweep_uri, "fingerprint": fingerprint, "resuming": _check_resume(sweep_uri, fingerprint)}


def run_search(config: Config, data_uri: str, storage_uri: str, *, name: str, samples: int,
               space: str | dict | None = None, max_concurrent: int | None = None, metric: str = "val_loss",
               seed: int = 0, grace_period: int = 1, reduction_factor: int = 2, init: str | None = None,
               labels_uri: str | None = None, verbose: bool = False) -> dict[str, Any]:
    """Run (or resume) a sweep; returns its summary: rows per trial, the best trial and where best/ is."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    plan = check_sweep(config, data_uri, storage_uri, name=name, samples=samples, space=space, metric=metric,
                       init=init, labels_uri=labels_uri)
    data_uri, storage_uri, init, labels_uri = plan["data"], plan["storage"], plan["init"], plan["labels"]
    params, sweep_uri, fingerprint, resuming = plan["params"], plan["sweep"], plan["fingerprint"], plan["resuming"]
    if max_concurrent is None:
        max_concurrent = default_max_concurrent(config, ray.cluster_resources())
    epochs = config.train.epochs
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, base_config=config.to_dict(), data_uri=data_uri,
                             runs_uri=storage.join(sweep_uri, RUNS_DIR), init=init, labels_uri=labels_uri),
        DRIVER_RESOURCES)
    storage_path = storage.resolve(storage_uri)[1]
    storage_fs = storage.s3_filesystem() if storage.is_s3(storage_uri) else None
    mode = METRICS[metric]
    tune_config = tune.TuneConfig(
        metric=metric, mode=mode, num_samples=samples, max_concurrent_trials=max_concurrent,
        trial_dirname_creator=_trial_dirname, trial_name_creator=_trial_dirname,
        search_alg=OptunaSearch(seed=seed),
        scheduler=ASHAScheduler(time_attr="training_iteration", max_t=epochs,
                                grace_period=max(1, min(grace_period, epochs)), reduction_factor=reduction_factor))
    run_config = tune.RunConfig(
        name=name, storage_path=storage_path, storage_filesystem=storage_fs, verbose=1 if verbose else 0,
        callbacks=[ReleaseTrialWorkers(), TrialLines(metric, epochs)],
        failure_config=tune.FailureConfig(max_failures=1))
    print(f"sweep {name}: {samples} trials of {config.name} ({config.train.stage} stage, {epochs} epochs each), "
          f"{max_concurrent} at a time, Optuna (seed {seed}) + ASHA on {metric}; space:", flush=True)
    for param in params:
        print(f"  {param.describe()}", flush=True)
    if not verbose:     # Tune's own start banner names a TensorBoard path under /tmp/ray: ours is the sweep dir
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    started = time.time()
    if resuming:
        tuner = tune.Tuner.restore(storage.resolve(sweep_uri)[1], trainable, resume_unfinished=True,
                                   resume_errored=True, param_space=param_space(params),
                                   storage_filesystem=storage_fs)
    else:
        storage.write_text(storage.join(sweep_uri, SWEEP_FILE), json.dumps(fingerprint, indent=2))
        tuner = tune.Tuner(trainable, param_space=param_space(params), tune_config=tune_config,
                           run_config=run_config)
    grid = tuner.fit()
    rows = trial_rows(grid, params, metric, epochs)
    summary = {"name": name, "sweep": sweep_uri, "metric": metric, "mode": mode, "rows": rows,
               "space": [p.path for p in params], "seconds": time.time() - started, "resumed": resuming}
    write_summary(summary)
    best = pick_best(rows, mode)
    summary["best"] = export_best(best, config, sweep_uri, storage_uri, data_uri, labels_uri) if best else None
    storage.write_text(storage.join(sweep_uri, "summary.json"), json.dumps(summary, indent=2, default=str))
    return summary


def _absolute(uri: str) -> str:
    return uri if storage.is_s3(uri) else os.path.abspath(os.path.expanduser(uri))


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def _check_resume(sweep_uri: str, fingerprint: dict[str, Any]) -> bool:
    """True when a sweep of this name exists and searches the same thing; a ConfigError when it differs."""
    from ray import tune

    saved_uri = storage.join(sweep_uri, SWEEP_FILE)
    if not storage.exists(saved_uri):
        return False
    saved = json.loads(storage.read_text(saved_uri))
    changed = [key for key in fingerprint if key != "samples" and saved.get(key) != fingerprint[key]]
    if changed:
        raise ConfigError(f"{sweep_uri}: a sweep of this name searched another {', '.join(changed)}; "
                          "resume it with the same settings or pick a new --name")
    if saved.get("samples") != fingerprint["samples"]:
        raise ConfigError(f"{sweep_uri}: this sweep was started with --samples {saved.get('samples')}; "
                          "resume it with the same number or pick a new --name")
    return tune.Tuner.can_restore(storage.resolve(sweep_uri)[1],
                                  storage_filesystem=storage.s3_filesystem() if storage.is_s3(sweep_uri) else None)


# --- trial bookkeeping on the driver -------------------------------------------------------------

def _tune_callback_base():
    from ray import tune
    return tune.Callback


class ReleaseTrialWorkers(_tune_callback_base()):
    """Removes each ended trial's training placement group. Ray Train 2.60 leaves that to a cleaner actor that
    needs the State API (the dashboard); without it the group outlives its trial and the next trial's data
    tasks wait forever for CPUs (ray-project/ray#54305; measured here on a 2-CPU Ray without the dashboard:
    the second trial hung, after a trial that finished as well as after one ASHA stopped; with this callback
    all trials ran). Each trial reports its group's id with its metrics."""

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._release(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._release(trial)

    @staticmethod
    def _release(trial) -> None:
        group_id = (trial.last_result or {}).get("placement_group")
        if not group_id:
            return
        from ray._raylet import PlacementGroupID
        from ray.util import placement_group_table
        from ray.util.placement_group import PlacementGroup, remove_placement_group

        group = PlacementGroup(PlacementGroupID(bytes.fromhex(group_id)))
        try:
            if placement_group_table(group).get("state") not in (None, "REMOVED"):
                remove_placement_group(group)
                log.info("released the placement group of trial %s", trial.trial_id)
        except Exception as exc:     # the group went away on its own meanwhile
            log.info("placement group of trial %s: %s", trial.trial_id, exc)


class TrialLines(_tune_callback_base()):
    """One console line when a trial starts and when it ends (how, after how many epochs, its best metric)."""

    def __init__(self, metric: str, epochs: int):
        self.metric, self.epochs = metric, epochs
        self.best: dict[str, float] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        from pipelines.console import PROGRESS_MARK
        values = ", ".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in (trial.config or {}).items())
        print(f"{PROGRESS_MARK}trial {trial.trial_id} started: {values}", flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        if _finite(value):
            self.best[trial.trial_id] = min(value, self.best.get(trial.trial_id, math.inf))

    def on_trial_complete(self, iteration, trials, trial, **info):
        from pipelines.console import PROGRESS_MARK
        result = trial.last_result or {}
        epoch = int(result.get("epoch", 0) or 0)
        why = "finished" if epoch >= self.epochs else \
            "early-stopped (patience)" if result.get("early_stopped") else "stopped by ASHA"
        best = self.best.get(trial.trial_id, result.get(self.metric, math.nan))
        print(f"{PROGRESS_MARK}trial {trial.trial_id} {why} after {epoch} epoch{'s' if epoch != 1 else ''}: "
              f"best {self.metric} {best:.3f}", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        from pipelines.console import PROGRESS_MARK
        print(f"{PROGRESS_MARK}trial {trial.trial_id} failed (details in {trial.path})", flush=True)


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def trial_rows(grid, params: list[Param], metric: str, epochs: int) -> list[dict[str, Any]]:
    """One row per trial: id, parameters, best metric and its epoch and checkpoint, status, epochs run."""
    rows = []
    for result in grid:
        frame = result.metrics_dataframe
        history = frame.to_dict("records") if frame is not None and len(frame) else []
        last = history[-1] if history else (result.metrics or {})
        config = result.config or {}
        scored = [r for r in history if _finite(r.get(metric))]
        best = min(scored, key=lambda r: r[metric]) if scored else {}
        run = int(last.get("epoch", 0) or 0)
        if result.error is not None:
            status = "error"
        elif last.get("nonfinite_batches"):
            status = "diverged (NaN loss)"
        elif run >= epochs:
            status = "completed"
        elif last.get("early_stopped"):
            status = "early-stopped (patience)"
        elif run > 0:
            status = "stopped by ASHA"
        else:
            status = "not started"
        rows.append({
            "trial": (result.metrics or {}).get("trial_id") or os.path.basename(result.path.rstrip("/")),
            **{p.path: config.get(p.path) for p in params},
            metric: best.get(metric, math.nan), "best_epoch": int(best.get("epoch", 0) or 0),
            "status": status, "epochs_run": run,
            "checkpoints": [r["checkpoint_path"] for r in sorted(scored, key=lambda r: r[metric])
                            if r.get("checkpoint_path")],
            "error": str(result.error).splitlines()[0] if result.error is not None else "",
        })
    rows.sort(key=lambda r: (not _finite(r[metric]), r[metric] if _finite(r[metric]) else 0.0))
    return rows


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def pick_best(rows: list[dict[str, Any]], mode: str) -> dict[str, Any] | None:
    metric_rows = [r for r in rows if r["checkpoints"]]
    return metric_rows[0] if metric_rows else None      # rows are sorted best first (min metrics)


# --- summary, plot, best/ ------------------------------------------------------------------------

def summary_table(summary: dict[str, Any]) -> str:
    """The printed table: one line per trial, the searched values under their short names."""
    metric, space = summary["metric"], summary["space"]
    header = ["trial", *(path.split(".")[-1] for path in space), metric, "best epoch", "epochs run", "status"]
    lines = [[r["trial"], *(_fmt(r[path]) for path in space), f"{r[metric]:.4f}" if _finite(r[metric]) else "-",
              str(r["best_epoch"] or "-"), str(r["epochs_run"]), r["status"]] for r in summary["rows"]]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
    return "\n".join(out)


def write_summary(summary: dict[str, Any]) -> None:
    """summary.csv and metric_vs_lr.png in the sweep directory."""
    import csv
    import io

    metric, space = summary["metric"], summary["space"]
    columns = ["trial", *space, metric, "best_epoch", "epochs_run", "status", "error"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in summary["rows"]:
        writer.writerow(row)
    storage.write_text(storage.join(summary["sweep"], "summary.csv"), buffer.getvalue())
    lr = "train.lr_head" if "train.lr_head" in space else next((path for path in space if "lr" in path), None)
    if lr:
        storage.write_bytes(storage.join(summary["sweep"], "metric_vs_lr.png"),
                            metric_plot(summary["rows"], lr, metric))


def metric_plot(rows: list[dict[str, Any]], lr: str, metric: str) -> bytes:
    """PNG: each trial's best metric against its learning rate (log axis), coloured by how it ended."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"completed": "tab:blue", "early-stopped (patience)": "tab:green", "stopped by ASHA": "tab:orange",
               "diverged (NaN loss)": "tab:purple", "error": "tab:red", "not started": "tab:gray"}
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for status, colour in colours.items():
        points = [(r[lr], r[metric]) for r in rows if r["status"] == status and _finite(r[metric])
                  and _finite(r[lr])]
        if points:
            ax.scatter(*zip(*points), c=colour, label=status, s=36)
    ax.set_xscale("log")
    ax.set_xlabel(lr)
    ax.set_ylabel(f"best {metric}")
    ax.set_title(f"{metric} against {lr} ({len(rows)} trials)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def export_best(best: dict[str, Any], config: Config, sweep_uri: str, storage_uri: str, data_uri: str,
                labels_uri: str | None) -> dict[str, Any]:
    """best/: the best trial's resolved config, its best surviving checkpoint's model/ (calibrated on the val
    split) and trial.json. What jobs/train.py --config, evaluate.py --checkpoint and score.py --checkpoint take."""
    from pipelines.evaluation.calibration import calibrate_checkpoint
    from pipelines.training.loop import MODEL_DIR
    from pipelines.training.run import _labels_lookup

    source = next((uri for uri in (_checkpoint_uri(p, storage_uri) for p in best["checkpoints"])
                   if storage.exists(storage.join(uri, MODEL_DIR))), None)
    if source is None:
        raise FileNotFoundError(f"{sweep_uri}: the best trial's checkpoints are gone ({best['trial']})")
    best_uri = storage.join(sweep_uri, BEST_DIR)
    values = {k: best[k] for k in best if "." in k}
    resolved = config_from_dict(apply_params(config.to_dict(), values))
    if storage.exists(best_uri):
        storage.delete(best_uri)
    with tempfile.TemporaryDirectory() as tmp:
        storage.download_dir(storage.join(source, MODEL_DIR), os.path.join(tmp, MODEL_DIR))
        storage.upload_dir(os.path.join(tmp, MODEL_DIR), storage.join(best_uri, MODEL_DIR))
    storage.write_text(storage.join(best_uri, "config.yaml"), resolved.to_yaml())
    info = {"trial": best["trial"], "params": values, "status": best["status"], "best_epoch": best["best_epoch"],
            "epochs_run": best["epochs_run"], "source_checkpoint": source, "sweep": sweep_uri,
            "config": storage.join(best_uri, "config.yaml"), "model": storage.join(best_uri, MODEL_DIR)}
    info.update({k: best[k] for k in METRICS if k in best})
    lookup = _labels_lookup(labels_uri, resolved.schema().names) if labels_uri else None
    try:
        calibration = calibrate_checkpoint(info["model"], data_uri, split="val", labels_lookup=lookup)
        info["calibration"] = calibration.get("skipped") or "calibrated on the val split"
    except Exception as exc:     # the checkpoint stands without calibration (as after training)
        log.warning("calibrating %s failed: %s", info["model"], exc, exc_info=True)
        info["calibration"] = f"failed: {type(exc).__name__}: {exc}".splitlines()[0]
    storage.write_text(storage.join(best_uri, "trial.json"), json.dumps(info, indent=2, default=str))
    return info


def _checkpoint_uri(path: str, storage_uri: str) -> str:
    """A checkpoint path as Tune reports it (a filesystem path; bucket/key on S3) -> a URI."""
    if storage.is_s3(storage_uri) and not path.startswith("s3://"):
        return f"s3://{path.lstrip('/')}"
    return path
