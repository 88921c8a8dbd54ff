"""Training on Ray Train: DDP over gloo on 2 CPU workers, checkpoints, resume by name, fault tolerance
(a training worker process killed from outside, by PID, as a lost node would be)."""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from model.errors import ConfigError
from pipelines.config import load_config
from pipelines.io.model_files import load_checkpoint
from pipelines.training.run import run_training

FAST = ["train.epochs=2", "train.batch_size=4", "train.num_workers=2", "train.cpus_per_worker=0.5",
        "train.patience=5", "data.augment.copies=0"]


def _history(summary: dict) -> list[dict]:
    state_path = os.path.join(os.path.dirname(summary["latest_checkpoint"]), "train_state.pt")
    saved = torch.load(state_path, map_location="cpu", weights_only=True)
    return json.loads(saved["state"])["history"]


@pytest.mark.slow
def test_two_worker_ddp_training_writes_checkpoints_and_resumes_by_name(ray_cluster, synthetic_features, tmp_path):
    storage_dir = tmp_path / "runs"
    config = load_config("tiny", FAST + ["train.stage=expert", "train.checkpoints_to_keep=1"])
    first = run_training(config, str(synthetic_features), str(storage_dir), name="run")
    assert first["final_metrics"]["epoch"] == 2
    assert math.isfinite(first["final_metrics"]["val_loss"])
    # best/ is the model directory of the epoch with the lowest validation loss, and it rebuilds its model
    best_model, _, schema, extra = load_checkpoint(first["best_checkpoint"])
    assert schema.names == config.schema().names and not best_model.training
    val_losses = [h["val_loss"] for h in _history(first)]
    assert extra["metrics"]["val_loss"] == pytest.approx(min(val_losses))
    assert extra["epoch"] == 1 + val_losses.index(min(val_losses))
    events = [f for _, _, files in os.walk(storage_dir / "run" / "tensorboard") for f in files]
    assert any(f.startswith("events.out.tfevents") for f in events)
    # rerun the finished run by name: it resumes, finds nothing left to do and keeps its checkpoint; with
    # train.feature_blend it fits the feature model on the train recordings and calibrates the blend
    blended = load_config("tiny", FAST + ["train.stage=expert", "train.checkpoints_to_keep=1",
                                          "train.feature_blend=0.5"])
    again = run_training(blended, str(synthetic_features), str(storage_dir), name="run")
    assert again["latest_checkpoint"] == first["latest_checkpoint"]
    assert [h["epoch"] for h in _history(again)] == [1, 2]
    assert again["feature_model"]["recordings"] == 20 and again["feature_model"]["weight"] == 0.5
    assert os.path.exists(os.path.join(again["best_checkpoint"], "feature_model.pkl"))
    assert again["calibration"]["recordings"] == 4
    # rerun the same name with more epochs: it resumes at epoch 3 instead of restarting
    config3 = load_config("tiny", FAST + ["train.stage=expert", "train.epochs=3", "train.checkpoints_to_keep=1"])
    second = run_training(config3, str(synthetic_features), str(storage_dir), name="run")
    history = _history(second)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert second["feature_model"] is None             # train.feature_blend 0: the network's scores alone
    assert not os.path.exists(os.path.join(second["best_checkpoint"], "feature_model.pkl"))
    assert [h["attempt"] for h in history] == [1, 1, 2]
    # rerun the same name with another learning rate or other data: refused in one line, nothing trained
    other = load_config("tiny", FAST + ["train.stage=expert", "train.lr_head=0.01", "train.checkpoints_to_keep=1"])
    with pytest.raises(ConfigError) as refused:
        run_training(other, str(synthetic_features), str(storage_dir), name="run")
    assert "train.lr_head 0.002 -> 0.01" in str(refused.value) and "--restart" in str(refused.value)
    elsewhere = shutil.copytree(synthetic_features, tmp_path / "other-features")
    with pytest.raises(ConfigError, match="--data"):
        run_training(config3, str(elsewhere), str(storage_dir), name="run")
    assert [h["epoch"] for h in _history(second)] == [1, 2, 3]
    # the seed10 checkpoint initialises a percepiano19 run: the trunk comes over, the heads start fresh, the
    # encoders stay frozen for the first epoch
    _check_init_across_schemas(second["best_checkpoint"], synthetic_features, storage_dir)


def _check_init_across_schemas(init: str, features, runs) -> None:
    from model.checkpoint import part_of
    from model.schema import PERCEPIANO19

    config = load_config("tiny", FAST + ["train.stage=expert", "dimensions=percepiano19",
                                         "train.freeze=[audio_encoder,symbolic]", "train.unfreeze_after_epochs=1"])
    expert = run_training(config, str(features), str(runs), name="expert", init=init)
    assert expert["init"].startswith("initialised from ") and "heads kept for 0 of 19 dimensions" in expert["init"]
    assert expert["final_metrics"]["epoch"] == 2 and math.isfinite(expert["final_metrics"]["val_loss"])
    source = load_checkpoint(init)[0].state_dict()
    by_epoch = {}
    for ckpt in sorted(p for p in (runs / "expert").glob("checkpoint_*") if p.is_dir()):
        model, _, schema, extra = load_checkpoint(str(ckpt / "model"))
        by_epoch[extra["epoch"]] = model.state_dict()
        assert schema.names == PERCEPIANO19.names
    first, last = by_epoch[1], by_epoch[2]
    # epoch 1: the frozen encoders are the initialising checkpoint's own tensors; the rest came over and trained
    for key, value in first.items():
        if part_of(key) in ("audio_encoder", "symbolic") and value.is_floating_point():
            assert torch.equal(value, source[key]), key
    assert any(not torch.equal(first[k], source[k]) for k in first if part_of(k) == "aggregation")
    # epoch 2: unfrozen, the encoders move on
    assert any(not torch.equal(last[k], first[k]) for k in last if part_of(k) == "audio_encoder"
               and last[k].is_floating_point())


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (this test's own Ray cluster), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _train_worker_pids() -> list[int]:
    pids = []
    for pid in _descendants(os.getpid()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().startswith(b"ray::RayTrainWorker"):
                    pids.append(pid)
        except OSError:
            continue
    return sorted(pids)


def _kill_a_worker_after_first_checkpoint(run_dir: Path, killed: list[int], stop: threading.Event) -> None:
    """Wait until Ray Train has registered the first checkpoint (every worker reported it, and the
    controller wrote its snapshot), then SIGKILL one training worker of this session's cluster."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    while not stop.is_set():
        workers = _train_worker_pids()
        if snapshot.is_file() and len(workers) >= 2:
            time.sleep(0.5)                          # into the next epoch
            os.kill(workers[-1], signal.SIGKILL)
            killed.append(workers[-1])
            return
        time.sleep(0.05)


@pytest.mark.slow
def test_a_killed_worker_is_restored_from_the_last_checkpoint(ray_cluster, synthetic_features, tmp_path):
    config = load_config("tiny", FAST + ["train.stage=pseudo", "train.epochs=3", "train.max_failures=2"])
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_a_worker_after_first_checkpoint,
                              args=(tmp_path / "runs" / "faulty", killed, stop), daemon=True)
    killer.start()
    try:
        summary = run_training(config, str(synthetic_features), str(tmp_path / "runs"), name="faulty")
    finally:
        stop.set()
        killer.join(timeout=5)
    assert len(killed) == 1                                  # a worker process really died mid-run
    history = _history(summary)
    assert [h["epoch"] for h in history] == [1, 2, 3]        # no epoch lost or repeated
    assert history[0]["attempt"] == 1 and history[-1]["attempt"] == 2


def test_missing_split_is_a_clear_error(ray_cluster, synthetic_features, tmp_path):
    config = load_config("tiny", FAST + ["data.split_fractions=[1.0, 0.0, 0.0]"])
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    path = synthetic_features / "segments" / "part-0.parquet"
    table = pq.read_table(path)
    pq.write_table(table.filter(pc.equal(table["split"], "train")), path)
    with pytest.raises(ValueError, match="needs labelled train and val segments"):
        run_training(config, str(synthetic_features), str(tmp_path / "runs"), name="x")



def test_small_feature_sets_are_read_once_and_large_ones_streamed(ray_cluster, synthetic_features):
    import ray

    from pipelines.training.run import cache_datasets

    size = sum(p.stat().st_size for p in (synthetic_features / "segments").rglob("*") if p.is_file())
    assert size < ray.cluster_resources()["object_store_memory"] / 4
    assert cache_datasets(str(synthetic_features), 1024)
    assert not cache_datasets(str(synthetic_features), 0)                    # switched off
    assert not cache_datasets(str(synthetic_features), size / 2 ** 20 * 0.9)  # over the limit: streamed
    assert cache_datasets(str(synthetic_features), size / 2 ** 20 * 1.1)


@pytest.mark.slow
def test_a_nan_loss_stops_the_run_in_one_line_and_restart_starts_it_over(ray_cluster, synthetic_features, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.features.rows import pack_array, unpack_array
    from pipelines.training.run import TrainingDiverged

    good = tmp_path / "good"
    shutil.copytree(synthetic_features, good)
    path = synthetic_features / "segments" / "part-0.parquet"        # inf in every training CQT
    table = pq.read_table(path)
    rows = table.to_pylist()
    for row in rows:
        if row["split"] == "train":
            cqt = unpack_array(row["cqt"], "f2")
            row["cqt"] = pack_array(np.full(cqt.shape, np.inf, dtype=np.float32), "f2")
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)
    # the datasets streamed from the Parquet files each epoch (not kept in the object store): that path too
    config = load_config("tiny", FAST + ["train.stage=expert", "train.cache_datasets_mib=0"])
    with pytest.raises(TrainingDiverged) as diverged:
        run_training(config, str(synthetic_features), str(tmp_path / "runs"), name="nan")
    message = str(diverged.value)
    assert "\n" not in message and "stopped at epoch 1" in message and "NaN or inf" in message
    assert "no checkpoint was kept" in message                     # the diverged epoch wrote none
    assert not list((tmp_path / "runs" / "nan").glob("checkpoint_*"))
    # the same name on good data is refused (other data) unless restarted; restarted, it trains
    with pytest.raises(ConfigError, match="--restart"):
        run_training(config, str(good), str(tmp_path / "runs"), name="nan")
    (tmp_path / "runs" / "nan" / "logs").mkdir()
    (tmp_path / "runs" / "nan" / "logs" / "train.log").write_text("kept")
    summary = run_training(config, str(good), str(tmp_path / "runs"), name="nan", restart=True)
    assert summary["final_metrics"]["epoch"] == 2 and math.isfinite(summary["final_metrics"]["val_loss"])
    assert (tmp_path / "runs" / "nan" / "logs" / "train.log").read_text() == "kept"
