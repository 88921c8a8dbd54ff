"""Training throughput: the tiny preset with 1 and 2 Ray Train workers (samples/s, side by side), and
the mert-v1-95m preset's optimiser step time and peak memory on CPU (random weights)."""
from __future__ import annotations

import os
import statistics
import tempfile

from benchmarks.common import markdown_table, median_time, peak_rss_mb


def _synthetic(tmp: str):
    from pathlib import Path

    from tests.pipelines.training.conftest import make_synthetic_features    # the training tests' features
    return make_synthetic_features(Path(tmp) / "features", n_pieces=8, takes=6, segments=2, seconds=10.0,
                                   n_notes=64)


def tiny_workers(repeats: int = 1) -> list[list[object]]:
    import ray

    from pipelines.config import load_config
    from pipelines.training.run import run_training

    tmp = tempfile.mkdtemp(prefix="bench-train-")
    features = _synthetic(tmp)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": os.getcwd()}})
    rows = []
    try:
        for workers in (1, 2):
            rates = []
            for r in range(repeats):
                config = load_config("tiny", [f"train.num_workers={workers}", "train.epochs=3",
                                              "train.cpus_per_worker=1", "train.stage=expert",
                                              "train.batch_size=8"])
                summary = run_training(config, str(features), os.path.join(tmp, "runs"), name=f"w{workers}-{r}")
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


def main() -> str:
    rows = tiny_workers()
    speedup = rows[1][1] / rows[0][1]
    step = mert95_step()
    return ("### Training throughput (CPU, Ray Train, synthetic 10 s segments)\n\n" +
            markdown_table(["run", "samples/s (median)"], rows) +
            f"\n\n2 workers / 1 worker: {speedup:.2f}x (DDP over gloo on a 2-core machine).\n\n" +
            markdown_table(["model", "optimiser step (s, median of 3)", "peak RSS (MiB)"], [step]) + "\n")


if __name__ == "__main__":
    print(main())
