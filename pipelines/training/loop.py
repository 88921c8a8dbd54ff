"""The training loop that every Ray Train worker runs, and the plain-torch pieces it is made of.

Per worker: build the model (pretrained encoders from hub ids, local or s3:// paths), wrap it in DDP
(`ray.train.torch.prepare_model`: gloo on CPU, nccl on GPU), AdamW with three parameter groups, a
cosine schedule with warmup, gradient accumulation and clipping, fp16 autocast + GradScaler on GPU (bf16
when asked, fp32 on CPU), early stopping on validation loss, TensorBoard scalars from rank 0, and a
checkpoint every epoch (training state + a model directory) reported from rank 0. A restored or resumed
run continues from the latest checkpoint. The driver that starts it is `pipelines.training.run`.
"""
from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from model.checkpoint import unwrap
from pipelines.config import Config, config_from_dict
from pipelines.io import storage
from pipelines.training.batches import collate, to_device

log = logging.getLogger("pianoeval.train")
TRAIN_STATE = "train_state.pt"      # optimizer, scheduler, scaler and loop state in each Ray checkpoint
MODEL_DIR = "model"                 # the model directory (model.checkpoint format) in each Ray checkpoint
DIVERGED_FILE = "diverged.json"     # written in the run directory when the loss became NaN or inf


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto -> fp16 on CUDA, fp32 elsewhere; fp16 on CPU falls back to fp32 (no CPU GradScaler use)."""
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        return "fp32"
    return precision


def autocast_context(precision: str, device: torch.device):
    if precision == "fp16":
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def build_optimizer(model: torch.nn.Module, loss_fn: torch.nn.Module, config: Config) -> torch.optim.Optimizer:
    """AdamW over the audio backbone, symbolic encoder and the rest, each at its own learning rate."""
    t = config.train
    groups = unwrap(model).parameter_groups()
    lrs = {"audio": t.lr_audio, "symbolic": t.lr_symbolic, "head": t.lr_head}
    param_groups = [{"params": params, "lr": lrs[name], "name": name}
                    for name, params in groups.items() if params]
    extra = [p for p in loss_fn.parameters() if p.requires_grad]
    if extra:
        param_groups.append({"params": extra, "lr": t.lr_head, "name": "loss"})
    return torch.optim.AdamW(param_groups, weight_decay=t.weight_decay)


def cosine_with_warmup(optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float):
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch as rtt

    from model.checkpoint import save_model
    from model.losses import MultiTaskLoss
    from model.schema import DimensionSchema
    from pipelines.io.model_files import build_model_from_sources, load_checkpoint

    config = config_from_dict(loop_config["config"])
    schema = DimensionSchema.from_dict(loop_config["schema"])
    t = config.train
    torch.set_num_threads(max(1, int(loop_config.get("threads", 1))))
    torch.manual_seed(t.seed)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = rtt.get_device()
    precision = resolve_precision(t.precision, device)

    model = build_model_from_sources(config.model, schema, dropout=t.dropout, pretrained=t.pretrained)
    if loop_config.get("init_dir"):
        from model.checkpoint import transfer_state, transfer_summary
        init_model, _, init_schema, _ = load_checkpoint(loop_config["init_dir"])
        state, report = transfer_state(model.state_dict(), init_model.state_dict(), schema.names,
                                       init_schema.names)
        model.load_state_dict(state, strict=False)
        del init_model
        if rank == 0:
            log.info(transfer_summary(report, loop_config["init_dir"]))
    model.to(device)
    loss_fn = MultiTaskLoss(schema, weighting=t.loss_weighting, label_smoothing=t.label_smoothing).to(device)
    loss_fn.set_target_mean(torch.tensor(loop_config["label_mean"], dtype=torch.float32, device=device))
    model = rtt.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True}) \
        if world > 1 else model
    optimizer = build_optimizer(model, loss_fn, config)
    steps_per_epoch = max(1, math.ceil(loop_config["train_rows"] / (t.batch_size * world * t.grad_accum_steps)))
    scheduler = cosine_with_warmup(optimizer, steps_per_epoch * t.epochs, t.warmup_fraction)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    state = {"epoch": 0, "best_val": math.inf, "bad_epochs": 0, "history": [], "attempt": 0}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as ckpt_dir:
            saved = torch.load(os.path.join(ckpt_dir, TRAIN_STATE), map_location=device, weights_only=True)
            unwrap(model).load_state_dict(saved["model"])
            loss_fn.load_state_dict(saved["loss"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            scaler.load_state_dict(saved["scaler"])
            state = json.loads(saved["state"])
        if rank == 0:
            log.info("resumed from the checkpoint of epoch %d", state["epoch"])
    state["attempt"] = state.get("attempt", 0) + 1        # 1 on a fresh start, +1 per restore/resume

    writer = _tensorboard_writer(loop_config) if rank == 0 and loop_config.get("tensorboard_local") else None
    # a Tune trial names its workers' placement group in each report, so the sweep can release it if Tune
    # stops the trial before Ray Train does (ray-project/ray#54305; tune/search.py)
    placement_group = _placement_group_id() if loop_config.get("report_placement_group") else None
    names = schema.names
    stopped = state.get("stopped", False)
    if (state["epoch"] >= t.epochs or stopped) and state["history"] and loop_config.get("report_when_done"):
        # resumed with nothing left to do (the run ended before its Tune trial learned so): say how it ended
        ray.train.report({**state["history"][-1], **({"placement_group": placement_group} if placement_group
                                                     else {})})
    while state["epoch"] < t.epochs and not stopped:
        epoch = state["epoch"]
        started = time.time()
        frozen = frozen_parameters(model, t.freeze) if t.freeze and (
            t.unfreeze_after_epochs == 0 or epoch < t.unfreeze_after_epochs) else []
        label = (f"{loop_config.get('name', 'training')}: epoch {epoch + 1}/{t.epochs}",
                 math.ceil(loop_config["train_rows"] / (t.batch_size * world)))
        train_metrics = _run_epoch(model, loss_fn, optimizer, scheduler, scaler, ray.train.get_dataset_shard("train"),
                                   names, config, device, precision, train=True, frozen=frozen,
                                   progress=label if rank == 0 else None)
        val_metrics = _run_epoch(model, loss_fn, None, None, None, ray.train.get_dataset_shard("val"),
                                 names, config, device, precision, train=False)
        nonfinite = train_metrics["nonfinite"] + val_metrics["nonfinite"]
        if nonfinite or not math.isfinite(val_metrics["loss"]):
            # diverged: report it (the driver stops with one line) and keep this epoch out of the checkpoints
            if rank == 0:
                log.error("epoch %d: the loss was NaN or inf in %d batches; stopping", epoch + 1, nonfinite)
                if loop_config.get("run_dir"):      # for the driver (Ray Train's result keeps checkpointed metrics)
                    storage.write_text(storage.join(loop_config["run_dir"], DIVERGED_FILE),
                                       json.dumps({"epoch": epoch + 1, "nonfinite_batches": max(1, int(nonfinite))}))
            ray.train.report({"epoch": epoch + 1, "nonfinite_batches": max(1, int(nonfinite)),
                              "train_loss": train_metrics["loss"], "val_loss": val_metrics["loss"],
                              "early_stopped": True, "attempt": state["attempt"]})
            break
        state["epoch"] = epoch + 1
        improved = val_metrics["loss"] < state["best_val"] - 1e-6
        if improved:
            state["best_val"], state["bad_epochs"] = val_metrics["loss"], 0
        else:
            state["bad_epochs"] += 1
        stopped = state["bad_epochs"] >= t.patience
        state["stopped"] = stopped
        metrics = {"epoch": epoch + 1, "train_loss": train_metrics["loss"], "val_loss": val_metrics["loss"],
                   "val_mae": val_metrics["mae"], "train_samples_per_s": train_metrics["samples_per_s"],
                   "lr_head": optimizer.param_groups[-1]["lr"], "epoch_seconds": time.time() - started,
                   "best_val_loss": state["best_val"], "early_stopped": stopped, "attempt": state["attempt"]}
        metrics.update({f"val_mae/{n}": v for n, v in val_metrics["mae_per_dim"].items()})
        state["history"].append({k: v for k, v in metrics.items() if "/" not in k})
        if placement_group:
            metrics["placement_group"] = placement_group
        if writer is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    writer.add_scalar(key, value, epoch + 1)
            writer.flush()
            _sync_tensorboard(loop_config)
        if rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                core = unwrap(model)
                torch.save({"model": core.state_dict(), "loss": loss_fn.state_dict(),
                            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                            "scaler": scaler.state_dict(), "state": json.dumps(state)},
                           os.path.join(tmp, TRAIN_STATE))
                extra = {"label_mean": loop_config["label_mean"], "label_std": loop_config["label_std"],
                         "stage": t.stage, "metrics": state["history"][-1],
                         "epoch": epoch + 1, "version": loop_config.get("version", "0")}
                save_model(os.path.join(tmp, MODEL_DIR), core, loop_config["config"], schema, extra)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)
    if writer is not None:
        writer.close()


def frozen_parameters(model: torch.nn.Module, parts: list[str]) -> list[torch.nn.Parameter]:
    """The parameters of the named parts (`model.config.MODEL_PARTS`) of a (possibly DDP-wrapped) model."""
    from model.checkpoint import part_of

    return [p for key, p in unwrap(model).named_parameters() if part_of(key) in parts]


STEP_PROGRESS_EVERY_S = 30.0     # rank 0 reports the steps of a long epoch this often (the job's console shows it)


def _run_epoch(model, loss_fn, optimizer, scheduler, scaler, shard, names, config: Config, device, precision,
               *, train: bool, frozen: list[torch.nn.Parameter] | None = None,
               progress: tuple[str, int] | None = None) -> dict[str, Any]:
    """One pass over `shard`. progress: (label, batches expected) to report steps from (rank 0, training)."""
    t = config.train
    last_report = time.time()
    model.train(train)
    total_loss, total_items, started = 0.0, 0, time.time()
    abs_err = np.zeros(len(names))
    counts = np.zeros(len(names))
    micro = nonfinite = 0
    iterator = shard.iter_batches(batch_size=t.batch_size, batch_format="numpy", prefetch_batches=1,
                                  local_shuffle_buffer_size=4 * t.batch_size if train else None,
                                  local_shuffle_seed=t.seed if train else None)
    if train:
        optimizer.zero_grad(set_to_none=True)
    for numpy_batch in iterator:
        batch = to_device(collate(numpy_batch, names, stage=t.stage, audio_only=t.audio_only,
                                  max_notes=config.model.max_notes), device)
        labels = batch.pop("labels")
        sync = (micro + 1) % t.grad_accum_steps == 0
        no_sync = model.no_sync if (train and not sync and hasattr(model, "no_sync")) else nullcontext
        with torch.set_grad_enabled(train), no_sync():
            with autocast_context(precision, device):
                output = model(batch)
            loss, _ = loss_fn(output, labels)
            if train:      # every rank runs backward (DDP's all-reduce); a non-finite step is skipped below
                scaler.scale(loss / t.grad_accum_steps).backward()
        micro += 1
        if train and sync:
            _optimizer_step(optimizer, scheduler, scaler, t.grad_clip, frozen)
        n = labels.shape[0]
        if not torch.isfinite(loss.detach()):
            nonfinite += 1
            continue
        total_loss += float(loss.detach()) * n
        total_items += n
        if progress is not None and time.time() - last_report >= STEP_PROGRESS_EVERY_S:
            from pipelines.console import PROGRESS_MARK
            print(f"{PROGRESS_MARK}{progress[0]}  batch {micro}/{progress[1]}  train loss so far "
                  f"{total_loss / max(total_items, 1):.3f}", flush=True)
            last_report = time.time()
        valid = ~torch.isnan(labels)
        err = torch.where(valid, (output.scores.float() - torch.nan_to_num(labels)).abs(), torch.zeros_like(labels))
        abs_err += err.sum(0).detach().cpu().numpy()
        counts += valid.sum(0).cpu().numpy()
    if train and micro % t.grad_accum_steps != 0:
        _optimizer_step(optimizer, scheduler, scaler, t.grad_clip, frozen)
    sums = _all_reduce_sum([total_loss, total_items, nonfinite, *abs_err.tolist(), *counts.tolist()], device)
    loss_sum, items, nonfinite = sums[0], sums[1], int(sums[2])
    abs_err = np.asarray(sums[3:3 + len(names)])
    counts = np.asarray(sums[3 + len(names):])
    mae_per_dim = {n: float(e / c) for n, e, c in zip(names, abs_err, counts) if c > 0}
    elapsed = max(time.time() - started, 1e-9)
    return {"loss": loss_sum / max(items, 1), "mae": float(abs_err.sum() / max(counts.sum(), 1)),
            "mae_per_dim": mae_per_dim, "samples_per_s": total_items / elapsed, "nonfinite": nonfinite}


def _optimizer_step(optimizer, scheduler, scaler, grad_clip: float, frozen=None) -> None:
    for p in frozen or ():           # a frozen part: no gradient, so AdamW leaves it (weight decay included)
        p.grad = None
    scaler.unscale_(optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    if not scaler.is_enabled() and not torch.isfinite(norm):   # fp32/bf16: NaN/inf gradients would reach the
        optimizer.zero_grad(set_to_none=True)                 # weights (fp16's GradScaler skips such steps)
        return
    scale = scaler.get_scale() if scaler.is_enabled() else None
    scaler.step(optimizer)
    scaler.update()
    if scale is None or scaler.get_scale() >= scale:   # fp16: a step skipped for inf/NaN gradients (the scale
        scheduler.step()                                # went down) leaves the schedule where it was
    optimizer.zero_grad(set_to_none=True)


def _placement_group_id() -> str | None:
    from ray.util import get_current_placement_group

    group = get_current_placement_group()
    return group.id.hex() if group is not None else None


def _tensorboard_writer(loop_config: dict[str, Any]):
    from tensorboardX import SummaryWriter
    return SummaryWriter(loop_config["tensorboard_local"])


def _sync_tensorboard(loop_config: dict[str, Any]) -> None:
    if loop_config.get("tensorboard_uri") and storage.is_s3(loop_config["tensorboard_uri"]):
        storage.upload_dir(loop_config["tensorboard_local"], loop_config["tensorboard_uri"])
