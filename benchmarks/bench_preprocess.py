"""Preprocessing throughput: one process vs Ray Data on 2 CPUs, side by side on the same corpus.

Throughput = seconds of audio processed per wall second (decode, resample, CQT, performance MIDI,
alignment, pseudo-labels, segmentation, Parquet rows; no augmentation). Medians of `repeats` runs.
"""
from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time

from benchmarks.common import markdown_table


def main(pieces: int = 3, takes: int = 4, repeats: int = 2) -> str:
    import torch

    from pipelines.config import load_config
    from pipelines.corpus import make_corpus
    from pipelines.datasets import load_records, run_preprocess
    from pipelines.process import RecordingProcessor

    tmp = tempfile.mkdtemp(prefix="bench-pre-")
    corpus = os.path.join(tmp, "corpus")
    make_corpus(corpus, pieces=pieces, takes=takes, seed=0)
    config = load_config("tiny", ["data.augment.enabled=false", "data.num_cpus_per_task=1"])
    records = load_records(corpus, config)

    torch.set_num_threads(1)
    processor = RecordingProcessor(config)
    processor(records[0])                      # warm-up: CQT kernels, imports
    single_times, audio_s = [], 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        rows = [row for record in records for row in processor(record)]
        single_times.append(time.perf_counter() - started)
    errors = [r["error"] for r in rows if r["status"] == "error"]
    if errors:
        raise RuntimeError(f"benchmark corpus failed to preprocess: {errors[0]}")
    durations = {}
    for r in rows:
        durations[r["recording_id"]] = max(durations.get(r["recording_id"], 0.0), r["end_s"])
    audio_s = sum(durations.values())

    import ray
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": os.getcwd()}})
    ray_times = []
    try:
        for i in range(repeats):
            out = os.path.join(tmp, f"features{i}")
            started = time.perf_counter()
            run_preprocess(corpus, out, config, num_actors=2)
            ray_times.append(time.perf_counter() - started)
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    single, parallel = statistics.median(single_times), statistics.median(ray_times)
    table = markdown_table(
        ["runner", "recordings", "audio (s)", "wall (s, median)", "x real time", "speed-up"],
        [["one process, 1 thread", len(records), round(audio_s, 1), single, audio_s / single, 1.0],
         ["Ray Data, 2 actors x 1 CPU", len(records), round(audio_s, 1), parallel, audio_s / parallel,
          single / parallel]])
    return ("### Preprocessing throughput (demo corpus, tiny preset, no augmentation)\n\n" + table +
            f"\n\nRay Data wall time includes actor start-up and the Parquet write; medians of {repeats} runs.\n")


if __name__ == "__main__":
    print(main())
