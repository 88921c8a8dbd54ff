"""Preprocessing throughput: one process vs Ray Data on 2 CPUs, side by side on the same corpus.

Throughput = seconds of audio processed per wall second for the whole per-recording chain (decode,
resample, CQT, performance notes, alignment, pseudo-labels, segmentation into feature rows; no
augmentation). Figures, medians of `repeats` runs:
- one process, one thread: a warmed-up `RecordingProcessor` over every recording, with the default notes
  (`data.performance_source=auto`: the audio's transcription, the MIDI for the pseudo-labels) and, side by
  side, with the MIDI as the notes (`prefer_midi`, the earlier default);
- Ray Data steady state: the same processor in 2 actors x 1 CPU (warmed up in their constructor), timed
  from the first recording's start to the last one's end, as a long library run sees it;
- Ray Data end to end: `run_preprocess` as the job runs it, including actor start-up and the Parquet
  write, which a small corpus does not amortise.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time

import numpy as np

from benchmarks.common import markdown_table


class TimedProcessor:
    """Ray Data callable: processes records, returns (start, end, audio seconds) per record."""

    def __init__(self, config_dict: dict, warmup_record: str) -> None:
        import torch

        from pipelines.config import config_from_dict
        from pipelines.features.processor import RecordingProcessor

        torch.set_num_threads(1)
        self.processor = RecordingProcessor(config_from_dict(config_dict))
        self.processor(json.loads(warmup_record))

    def __call__(self, batch: dict) -> dict:
        starts, ends, audio = [], [], []
        for text in batch["record"]:
            starts.append(time.time())
            rows = self.processor(json.loads(text))
            ends.append(time.time())
            audio.append(max(r["end_s"] for r in rows) if rows[0]["status"] == "ok" else 0.0)
        return {"start": np.array(starts), "end": np.array(ends), "audio_s": np.array(audio)}


def main(pieces: int = 6, takes: int = 6, repeats: int = 2) -> str:
    import ray
    import torch

    from pipelines.config import load_config
    from pipelines.demo_corpus.generate import make_corpus
    from pipelines.features.processor import RecordingProcessor
    from pipelines.preprocess import load_records, run_preprocess

    tmp = tempfile.mkdtemp(prefix="bench-pre-")
    corpus = os.path.join(tmp, "corpus")
    make_corpus(corpus, pieces=pieces, takes=takes, seed=0)
    config = load_config("tiny", ["data.augment.enabled=false", "data.num_cpus_per_task=1"])
    records = load_records(corpus, config)

    torch.set_num_threads(1)
    single_by_source: dict[str, list[float]] = {}
    for source in ("prefer_midi", "auto"):
        processor = RecordingProcessor(load_config("tiny", ["data.augment.enabled=false",
                                                            f"data.performance_source={source}"]))
        processor(records[0])                  # warm-up: CQT kernels, transcription model, lazy imports
        for _ in range(repeats):
            started = time.perf_counter()
            rows = [row for record in records for row in processor(record)]
            single_by_source.setdefault(source, []).append(time.perf_counter() - started)
        errors = [r["error"] for r in rows if r["status"] == "error"]
        if errors:
            raise RuntimeError(f"benchmark corpus failed to preprocess: {errors[0]}")
    single_times = single_by_source["auto"]
    durations: dict[str, float] = {}
    for r in rows:
        durations[r["recording_id"]] = max(durations.get(r["recording_id"], 0.0), r["end_s"])
    audio_s = sum(durations.values())

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": os.getcwd()}})
    steady, end_to_end = [], []
    try:
        items = [{"record": json.dumps(r)} for r in records]
        for i in range(repeats):
            ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
                TimedProcessor, fn_constructor_kwargs={"config_dict": config.to_dict(), "warmup_record": items[0]["record"]},
                batch_size=1, compute=ray.data.ActorPoolStrategy(size=2), num_cpus=1)
            timings = ds.to_pandas()
            steady.append(float(timings["end"].max() - timings["start"].min()))
            out = os.path.join(tmp, f"features{i}")
            started = time.perf_counter()
            run_preprocess(corpus, out, config, num_actors=2)
            end_to_end.append(time.perf_counter() - started)
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    single = statistics.median(single_times)
    midi = statistics.median(single_by_source["prefer_midi"])
    rows_out = [["one process, 1 thread, notes from the MIDI (prefer_midi)", midi, audio_s / midi, single / midi],
                ["one process, 1 thread (default: transcribed notes, MIDI labels)", single, audio_s / single, 1.0]]
    for name, times in (("Ray Data, 2 actors x 1 CPU, steady state", steady),
                        ("Ray Data, 2 actors x 1 CPU, end to end (job incl. start-up + Parquet write)", end_to_end)):
        t = statistics.median(times)
        rows_out.append([name, t, audio_s / t, single / t])
    table = markdown_table(["runner", "wall (s, median)", "x real time", "speed-up vs one process"], rows_out)
    return (f"### Preprocessing throughput ({len(records)} demo recordings, {audio_s:.0f} s of audio, tiny preset, "
            f"no augmentation; medians of {repeats} runs; Ray rows with the default notes)\n\n" + table + "\n")


if __name__ == "__main__":
    print(main())
