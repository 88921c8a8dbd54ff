"""Training on Ray Train: DDP over gloo on 2 CPU workers, checkpoints, resume by name, fault tolerance."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch

from pipelines.config import load_config
from pipelines.training.run import cosine_with_warmup, resolve_precision, run_training

FAST = ["train.epochs=2", "train.batch_size=4", "train.num_workers=2", "train.cpus_per_worker=0.5",
        "train.patience=5", "data.augment.copies=0"]


def _history(summary: dict) -> list[dict]:
    from model.checkpoint import load_model  # noqa: F401  (the model package must import)
    state_path = os.path.join(os.path.dirname(summary["latest_checkpoint"]), "train_state.pt")
    saved = torch.load(state_path, map_location="cpu", weights_only=True)
    return json.loads(saved["state"])["history"]


def test_precision_resolution():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("auto", cuda) == "fp16"
    assert resolve_precision("fp16", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"


def test_cosine_schedule_warms_up_then_decays():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = cosine_with_warmup(opt, total_steps=100, warmup_fraction=0.1)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[50] < lrs[10] and lrs[-1] < 0.01


@pytest.mark.slow
def test_two_worker_ddp_training_writes_checkpoints_and_resumes_by_name(ray_cluster, synthetic_features, tmp_path):
    storage_dir = tmp_path / "runs"
    config = load_config("tiny", FAST + ["train.stage=expert", "train.checkpoints_to_keep=1"])
    first = run_training(config, str(synthetic_features), str(storage_dir), name="run")
    assert first["final_metrics"]["epoch"] == 2
    assert math.isfinite(first["final_metrics"]["val_loss"])
    assert os.path.isfile(os.path.join(first["best_checkpoint"], "model.pt")) or \
        os.listdir(first["best_checkpoint"])
    events = [f for _, _, files in os.walk(storage_dir / "run" / "tensorboard") for f in files]
    assert any(f.startswith("events.out.tfevents") for f in events)
    # rerun the finished run by name: it resumes, finds nothing left to do and keeps its checkpoint
    again = run_training(config, str(synthetic_features), str(storage_dir), name="run")
    assert again["latest_checkpoint"] == first["latest_checkpoint"]
    assert [h["epoch"] for h in _history(again)] == [1, 2]
    # rerun the same name with more epochs: it resumes at epoch 3 instead of restarting
    config3 = load_config("tiny", FAST + ["train.stage=expert", "train.epochs=3", "train.checkpoints_to_keep=1"])
    second = run_training(config3, str(synthetic_features), str(storage_dir), name="run")
    history = _history(second)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert [h["attempt"] for h in history] == [1, 1, 2]
    # the pseudo checkpoint initialises an expert run
    expert = run_training(config, str(synthetic_features), str(storage_dir), name="from-init",
                          init=second["best_checkpoint"])
    assert expert["final_metrics"]["epoch"] == 2


@pytest.mark.slow
def test_a_killed_worker_is_restored_from_the_last_checkpoint(ray_cluster, synthetic_features, tmp_path,
                                                              monkeypatch):
    marker = tmp_path / "killed"
    monkeypatch.setenv("PIANOEVAL_KILL_AT", f"1:{marker}")
    config = load_config("tiny", FAST + ["train.stage=pseudo", "train.epochs=3", "train.max_failures=2"])
    summary = run_training(config, str(synthetic_features), str(tmp_path / "runs"), name="faulty")
    assert marker.exists()                                   # a worker really died at epoch 1 (0-based)
    history = _history(summary)
    assert [h["epoch"] for h in history] == [1, 2, 3]        # no epoch lost or repeated
    assert history[0]["attempt"] == 1 and history[-1]["attempt"] == 2


def test_missing_split_is_a_clear_error(ray_cluster, synthetic_features, tmp_path):
    config = load_config("tiny", FAST + ["data.split_fractions=[1.0, 0.0, 0.0]"])
    import pyarrow.parquet as pq
    import pyarrow.compute as pc
    path = synthetic_features / "segments" / "part-0.parquet"
    table = pq.read_table(path)
    pq.write_table(table.filter(pc.equal(table["split"], "train")), path)
    with pytest.raises(ValueError, match="needs labelled train and val segments"):
        run_training(config, str(synthetic_features), str(tmp_path / "runs"), name="x")
