"""Sweeps as a user runs them: `python jobs/tune.py ...` in its own process with its own local Ray (and
dashboard), on synthetic features of the real Parquet contract.

- a 4-trial sweep: ASHA stops at least one trial and the next trial still starts; every trial's TensorBoard
  events (scalars and HParams) read back with tensorboard's own reader; summary CSV and PNG; best/ taken
  by jobs/evaluate.py as it is;
- a sweep whose driver is killed (SIGKILL, by PID) midway resumes when rerun with the same name: finished
  trials are kept, not run again; a rerun with other settings is refused in one line.

Each job gets a private RAY_TMPDIR; its Ray processes are stopped by PID (found through that directory).
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import stop_processes_using

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


class Job:
    """jobs/tune.py in a subprocess with a private Ray temp dir."""

    def __init__(self, tmp: Path, args: list[str], env: dict[str, str] | None = None):
        self.temp_dir = Path(tempfile.mkdtemp(prefix="pe-tune-", dir="/tmp"))   # short AF_UNIX socket paths
        self.log = tmp / f"tune-{time.time_ns()}.out"
        env = dict(os.environ, RAY_TMPDIR=str(self.temp_dir), RAY_AUTH_MODE="disabled", **(env or {}))
        env.pop("RAY_ADDRESS", None)
        self.out = open(self.log, "w")
        self.proc = subprocess.Popen([sys.executable, "jobs/tune.py", *args], cwd=ROOT, env=env,
                                     stdout=self.out, stderr=subprocess.STDOUT, text=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.close()

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)         # the driver, by PID
        self.proc.wait(timeout=30)
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.out.close()
        stop_processes_using(str(self.temp_dir))
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    from tests.pipelines.training.conftest import make_synthetic_features
    return make_synthetic_features(tmp_path_factory.mktemp("tune") / "features", n_pieces=4, takes=3, segments=1)


@pytest.fixture(scope="module")
def sweep(features, tmp_path_factory):
    """A 4-trial sweep of the tiny preset, 2 epochs a trial; data and storage given as relative paths (the
    trials run in working directories of their own)."""
    tmp = tmp_path_factory.mktemp("sweep")
    job = Job(tmp, ["--config", "tiny", "--data", os.path.relpath(features, ROOT),
                    "--storage", os.path.relpath(tmp / "tune", ROOT), "--samples", "4",
                    "--name", "s4", "--set", "train.epochs=2"])
    code = job.wait(timeout=900)
    text = job.text()
    assert code == 0, text[-4000:]
    return {"dir": tmp / "tune" / "s4", "console": text, "features": features}


def _trial_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in sweep_dir.glob("trial_*") if p.is_dir())


def test_asha_stops_a_trial_early_and_the_next_trial_still_starts(sweep):
    rows = list(csv.DictReader((sweep["dir"] / "summary.csv").open()))
    assert len(rows) == 4
    statuses = [r["status"] for r in rows]
    assert "stopped by ASHA" in statuses, statuses
    assert all(int(r["epochs_run"]) >= 1 for r in rows)
    for row in rows:
        assert (int(row["epochs_run"]) < 2) == (row["status"] == "stopped by ASHA")
    # console order: some trial started after a trial that ASHA stopped (its placement group was released)
    lines = sweep["console"].splitlines()
    stopped = [i for i, line in enumerate(lines) if "stopped by ASHA after" in line]
    started = [i for i, line in enumerate(lines) if re.search(r"trial \w+ started", line)]
    assert len(started) == 4 and stopped and min(stopped) < max(started), sweep["console"][-3000:]
    assert re.search(r"4 trials in \d+ s: .*stopped by ASHA", sweep["console"])


def test_every_trial_writes_tensorboard_scalars_and_hparams(sweep):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    trials = _trial_dirs(sweep["dir"])
    assert len(trials) == 4
    rows = {r["trial"]: r for r in csv.DictReader((sweep["dir"] / "summary.csv").open())}
    for trial in trials:
        events = EventAccumulator(str(trial), size_guidance={"scalars": 0, "tensors": 0})
        events.Reload()
        val = events.Scalars("ray/tune/val_loss")
        row = rows[trial.name.removeprefix("trial_")]
        assert len(val) == int(row["epochs_run"])
        assert min(v.value for v in val) == pytest.approx(float(row["val_loss"]), rel=1e-5)
        hparams = events.PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/session_start_info"])
        logged = {k: v.number_value for k, v in start.session_start_info.hparams.items()}
        assert set(logged) == {"train.lr_audio", "train.lr_symbolic", "train.lr_head", "model.fusion_dropout",
                               "model.lstm_dropout", "model.head_dropout"}
        assert logged["train.lr_head"] == pytest.approx(float(row["train.lr_head"]))


def test_summary_plot_and_best_trial_agree(sweep):
    rows = list(csv.DictReader((sweep["dir"] / "summary.csv").open()))
    best = json.loads((sweep["dir"] / "best" / "trial.json").read_text())
    by_metric = min(rows, key=lambda r: float(r["val_loss"]))
    assert best["trial"] == by_metric["trial"] and rows[0]["trial"] == best["trial"]
    assert best["val_loss"] == pytest.approx(float(by_metric["val_loss"]))
    assert best["params"]["train.lr_head"] == pytest.approx(float(by_metric["train.lr_head"]))
    assert (sweep["dir"] / "metric_vs_lr.png").read_bytes()[:4] == b"\x89PNG"
    # the exported model is the best epoch's checkpoint of that trial, calibrated on val
    from pipelines.io.model_files import read_checkpoint_meta
    meta = read_checkpoint_meta(str(sweep["dir"] / "best" / "model"))
    assert meta["extra"]["epoch"] == int(by_metric["best_epoch"])
    assert (sweep["dir"] / "best" / "model" / "calibration.json").exists()
    from pipelines.config import load_config
    config = load_config(str(sweep["dir"] / "best"))
    assert config.train.lr_head == pytest.approx(best["params"]["train.lr_head"])
    assert config.model.head_dropout == pytest.approx(best["params"]["model.head_dropout"])


def test_best_directory_feeds_evaluation(sweep, tmp_path):
    out = tmp_path / "evaluation"
    result = subprocess.run([sys.executable, "jobs/evaluate.py", "--checkpoint", str(sweep["dir"] / "best"),
                             "--data", str(sweep["features"]), "--split", "val", "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    summary = json.loads((out / "evaluation.json").read_text())
    assert summary["recordings"] >= 1


def test_killed_sweep_resumes_and_keeps_finished_trials(features, tmp_path):
    args = ["--config", "tiny", "--data", str(features), "--storage", str(tmp_path / "tune"), "--samples", "2",
            "--name", "resumable", "--set", "train.epochs=2", "--grace-period", "2"]
    first = Job(tmp_path, args, env={"TUNE_GLOBAL_CHECKPOINT_S": "2"})   # Tune saves its state this often
    deadline = time.time() + 600
    try:
        while time.time() < deadline and first.proc.poll() is None:
            text = first.text()
            started = re.findall(r"trial (\w+) started", text)
            if re.search(r"trial \w+ finished", text) and len(started) >= 2 and \
                    re.search(rf"trial_{started[1]}: epoch 1/", text):     # the second trial is under way
                break
            time.sleep(1)
        assert first.proc.poll() is None, first.text()[-3000:]
    finally:
        first.kill()
    before = first.text()
    finished = re.findall(r"trial (\w+) finished", before)
    assert finished, before[-3000:]
    assert "summary.csv" not in before

    changed = Job(tmp_path, [*args[:-2], "--grace-period", "2", "--set", "train.lr_head=0.01"])
    assert changed.wait(timeout=300) == 2
    refusal = changed.text().strip().splitlines()[-1]
    assert refusal.startswith("error: ") and "another config" in refusal and "--name" in refusal
    assert "Ray dashboard" not in changed.text()          # refused before a Ray is started for it

    second = Job(tmp_path, args)
    code = second.wait(timeout=900)
    after = second.text()
    assert code == 0, after[-4000:]
    rows = list(csv.DictReader((tmp_path / "tune" / "resumable" / "summary.csv").open()))
    assert len(rows) == 2 and {r["status"] for r in rows} == {"completed"}
    assert set(finished) <= {r["trial"] for r in rows}
    for trial in finished:                               # kept, not trained again
        assert f"trial {trial} started" not in after
    runs = tmp_path / "tune" / "resumable" / "runs"
    assert sorted(p.name for p in runs.iterdir()) == sorted(f"trial_{r['trial']}" for r in rows)


def test_sweep_on_a_ray_without_dashboard_releases_every_trials_workers(ray_cluster, features, tmp_path):
    """The session's Ray has no dashboard, so Ray Train's own cleaner cannot release an ended trial's
    placement group; the sweep must (or the next trials wait for CPUs that never come)."""
    from ray.util import placement_group_table

    from pipelines.config import load_config
    from tune.search import run_search

    before = set(placement_group_table())
    summary = run_search(load_config("tiny", ["train.epochs=1"]), str(features), str(tmp_path / "tune"),
                         name="nodash", samples=2, max_concurrent=1)
    assert [r["status"] for r in summary["rows"]] == ["completed", "completed"]
    deadline = time.time() + 30
    while True:
        left = {pg: info["state"] for pg, info in placement_group_table().items()
                if pg not in before and info["state"] != "REMOVED"}
        if not left or time.time() > deadline:
            break
        time.sleep(1)
    assert not left, left
