"""The plain-torch pieces of the per-worker training loop: precision, schedule, optimizer steps."""
from __future__ import annotations

import pytest
import torch

from model.builder import build_model
from model.losses import MultiTaskLoss
from pipelines.config import load_config
from pipelines.training.loop import _optimizer_step, build_optimizer, cosine_with_warmup, resolve_precision
from tests.model.conftest import make_batch


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


def test_tiny_preset_takes_optimizer_steps_that_lower_the_loss():
    """The tiny preset with the loop's own optimizer, schedule and step: every learning-rate group
    moves, and a few steps on one batch (one item has no score notes) lower its loss."""
    torch.manual_seed(0)
    config = load_config("tiny", ["train.lr_audio=1e-3", "train.lr_symbolic=1e-3", "train.lr_head=1e-3",
                                  "train.warmup_fraction=0.0"])
    schema = config.schema()
    model = build_model(config.model, schema, pretrained=False).eval()      # eval: no dropout noise
    loss_fn = MultiTaskLoss(schema)
    optimizer = build_optimizer(model, loss_fn, config)
    assert {g["name"] for g in optimizer.param_groups} >= {"audio", "symbolic", "head"}
    scheduler = cosine_with_warmup(optimizer, total_steps=100, warmup_fraction=0.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    batch = make_batch(config.model, [2.0, 1.5], [30, 0])
    labels = batch.pop("labels")
    before = {g["name"]: [p.detach().clone() for p in g["params"]] for g in optimizer.param_groups}
    losses = []
    for _ in range(5):
        loss, _ = loss_fn(model(batch), labels)
        loss.backward()
        _optimizer_step(optimizer, scheduler, scaler, config.train.grad_clip)
        losses.append(float(loss.detach()))
    for group in optimizer.param_groups:
        moved = sum(not torch.equal(p, q) for p, q in zip(group["params"], before[group["name"]]))
        assert moved > 0, f"no parameter of the {group['name']} group changed"
    assert all(p.grad is None for g in optimizer.param_groups for p in g["params"])     # zeroed after a step
    assert losses[-1] < losses[0]


def test_an_fp16_step_skipped_for_inf_gradients_leaves_the_schedule_where_it_was():
    param = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = cosine_with_warmup(opt, total_steps=10, warmup_fraction=0.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)      # GradScaler's CPU path, as fp16 on CUDA
    scaler.scale((param * float("inf")).sum()).backward()
    _optimizer_step(opt, sched, scaler, grad_clip=1.0)
    assert torch.equal(param.detach(), torch.ones(2)) and sched.last_epoch == 0    # skipped: nothing moved
    scaler.scale(param.sum()).backward()
    _optimizer_step(opt, sched, scaler, grad_clip=1.0)
    assert not torch.equal(param.detach(), torch.ones(2)) and sched.last_epoch == 1


def test_a_long_epoch_reports_its_steps_for_the_console(synthetic_features, monkeypatch, capsys):
    import numpy as np
    import pyarrow.parquet as pq

    from model.schema import SEED10
    from pipelines import console
    from pipelines.training import loop

    table = pq.read_table(synthetic_features / "segments" / "part-0.parquet").slice(0, 8)

    class Shard:                                   # what _run_epoch reads of a Ray Data shard
        def iter_batches(self, batch_size, **_):
            for start in range(0, table.num_rows, batch_size):
                part = table.slice(start, batch_size)
                yield {c: np.asarray(part.column(c).to_pylist(), dtype=object) for c in part.column_names}

    config = load_config("tiny", ["train.stage=expert", "train.batch_size=4"])
    model = build_model(config.model, SEED10, pretrained=False)
    loss_fn = MultiTaskLoss(SEED10)
    loss_fn.set_target_mean(torch.full((len(SEED10.names),), 50.0))
    optimizer = build_optimizer(model, loss_fn, config)
    scheduler = cosine_with_warmup(optimizer, 10, 0.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    monkeypatch.setattr(loop, "STEP_PROGRESS_EVERY_S", 0.0)
    loop._run_epoch(model, loss_fn, optimizer, scheduler, scaler, Shard(), SEED10.names, config,
                    torch.device("cpu"), "fp32", train=True, progress=("run: epoch 1/3", 2))
    lines = [line for line in capsys.readouterr().out.splitlines() if console.PROGRESS_MARK in line]
    assert [line.split(console.PROGRESS_MARK)[1].split("  train")[0] for line in lines] == [
        "run: epoch 1/3  batch 1/2", "run: epoch 1/3  batch 2/2"]
