"""Training throughput: the tiny preset with 1 and 2 Ray Train workers (samples/s, side by side) against
the model's own forward + backward + optimiser step on the same rows in one process (where the time goes:
reading and collating vs the model), and the mert-v1-95m preset's optimiser step time and peak memory on
CPU (random weights).

    .venv/bin/python benchmarks/bench_train.py [--data FEATURES --stage expert --set dimensions=percepiano19]
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time

from benchmarks.common import markdown_table, median_time, peak_rss_mb


def _synthetic(tmp: str):
    from pathlib import Path

    from tests.pipelines.training.conftest import make_synthetic_features    # the training tests' features
    return make_synthetic_features(Path(tmp) / "features", n_pieces=8, takes=6, segments=2, seconds=10.0,
                                   n_notes=64)


def own_step(features: str, overrides: list[str], batches: int = 12) -> dict[str, float]:
    """Median seconds per window of collate and of the model's forward + backward + AdamW step (1 thread,
    batches of train.batch_size train rows), outside Ray."""
    import torch

    from model.builder import build_model
    from model.losses import MultiTaskLoss
    from pipelines.config import load_config
    from pipelines.preprocess import read_segments_table
    from pipelines.training.batches import collate, columns_for
    from pipelines.training.run import select_rows

    torch.set_num_threads(1)
    config = load_config("tiny", overrides)
    schema, t = config.schema(), config.train
    table = select_rows(read_segments_table(features, columns=columns_for(
        config.model.audio_encoder, config.model.recording_statistics),
                                            filter_ok=False),
                        split="train", originals_only=False, stage=t.stage, names=schema.names)
    model = build_model(config.model, schema, pretrained=False)
    loss_fn = MultiTaskLoss(schema)
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(loss_fn.parameters()), lr=1e-4)
    collate_s, step_s = [], []
    for i in range(min(batches, table.num_rows // t.batch_size)):
        chunk = table.slice(i * t.batch_size, t.batch_size)
        started = time.perf_counter()
        batch = collate({c: chunk.column(c).to_numpy(zero_copy_only=False) for c in chunk.column_names},
                        schema.names, stage=t.stage, max_notes=config.model.max_notes)
        labels = batch.pop("labels")
        collated = time.perf_counter()
        loss, _ = loss_fn(model(batch), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        collate_s.append(collated - started)
        step_s.append(time.perf_counter() - collated)
    per = float(t.batch_size)
    return {"collate": statistics.median(collate_s[1:]) / per, "step": statistics.median(step_s[1:]) / per}


def tiny_workers(repeats: int = 1, features: str | None = None, overrides: list[str] | None = None
                 ) -> list[list[object]]:
    import ray

    from pipelines.config import load_config
    from pipelines.training.run import run_training

    tmp = tempfile.mkdtemp(prefix="bench-train-")
    features = features or str(_synthetic(tmp))
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": os.getcwd()}})
    rows = []
    try:
        for workers in (1, 2):
            rates = []
            for r in range(repeats):
                config = load_config("tiny", ["train.stage=expert", "train.batch_size=8", "train.epochs=3",
                                              *(overrides or []), f"train.num_workers={workers}",
                                              "train.cpus_per_worker=1"])
                summary = run_training(config, str(features), os.path.join(tmp, "runs"), name=f"w{workers}-{r}",
                                       calibrate=False)
                rates.append(summary["final_metrics"]["train_samples_per_s"] * workers)
            rows.append([f"tiny, {workers} worker(s) x 1 CPU", statistics.median(rates)])
    finally:
        ray.shutdown()
    return rows


def mert95_step(seconds: float = 10.0, batch: int = 2) -> list[object]:
    import torch

    from model.builder import build_model
    from model.losses import MultiTaskLoss
    from pipelines.config import load_config

    torch.set_num_threads(os.cpu_count() or 2)
    config = load_config("mert-v1-95m", ["model.audio_encoder=mert"])
    schema = config.schema()
    model = build_model(config.model, schema, pretrained=False)
    loss_fn = MultiTaskLoss(schema)
    opt = torch.optim.AdamW(list(model.parameters()) + list(loss_fn.parameters()), lr=1e-5)
    n = int(seconds * 24000)
    data = {"audio": torch.randn(batch, n) * 0.1, "audio_lengths": torch.full((batch,), n),
            "notes": torch.randint(2, 7, (batch, 128, 8)), "note_attrs": torch.zeros(batch, 128, 10),
            "note_times": torch.linspace(0, seconds, 128).repeat(batch, 1), "note_lengths": torch.full((batch,), 128)}
    labels = torch.rand(batch, len(schema)) * 100

    def step():
        opt.zero_grad()
        loss, _ = loss_fn(model(data), labels)
        loss.backward()
        opt.step()

    t = median_time(step, repeats=3, warmup=1)
    return [f"mert-v1-95m, batch {batch} x {seconds:.0f} s, fp32 CPU", t, peak_rss_mb()]


def main(features: str | None = None, overrides: list[str] | None = None, mert: bool = True) -> str:
    overrides = ["train.stage=expert", "train.batch_size=8", *(overrides or [])]
    tmp = tempfile.mkdtemp(prefix="bench-train-own-")
    data = features or str(_synthetic(tmp))
    own = own_step(data, overrides)
    rows = tiny_workers(features=data, overrides=overrides)
    speedup = rows[1][1] / rows[0][1]
    own_rate = 1.0 / (own["collate"] + own["step"])
    where = features or "synthetic 10 s segments"
    text = (f"### Training throughput (CPU, Ray Train, {where})\n\n" +
            markdown_table(["run", "samples/s (median)"], rows) +
            f"\n\n2 workers / 1 worker: {speedup:.2f}x (DDP over gloo on a 2-core machine).\n\n"
            f"The model's own forward + backward + AdamW step on the same rows, one process, 1 thread: "
            f"{1000 * own['step']:.1f} ms a window, plus {1000 * own['collate']:.1f} ms of collation "
            f"({own_rate:.1f} windows/s). One Ray Train worker (1 CPU) takes "
            f"{1.0 / rows[0][1] / own['step']:.2f}x the model's own step time per window "
            f"(goal: within 3x).\n\n")
    if mert:
        text += markdown_table(["model", "optimiser step (s, median of 3)", "peak RSS (MiB)"], [mert95_step()]) + "\n"
    return text


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="a feature set (default: synthetic rows)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--no-mert", dest="mert", action="store_false")
    args = parser.parse_args()
    print(main(args.data, args.overrides, args.mert))
