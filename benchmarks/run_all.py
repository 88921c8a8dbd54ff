"""Run every benchmark and write benchmarks/RESULTS.md (machine, date, revision, command).

    make bench                                   # all of them
    .venv/bin/python benchmarks/run_all.py audio model   # a subset, by name

Each benchmark module has a `main()` returning Markdown (or a dict with a "markdown" key). Ratios
(Ray Data vs one process, 2 vs 1 workers, nnAudio vs librosa) are measured side by side in one run;
figures are medians.
"""
from __future__ import annotations

import importlib
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import git_revision, machine  # noqa: E402

BENCHMARKS = {
    "audio": "benchmarks.bench_audio",
    "preprocess": "benchmarks.bench_preprocess",
    "transcription": "benchmarks.bench_transcription",
    "alignment": "benchmarks.bench_alignment",
    "pseudo_labels": "benchmarks.bench_pseudo_labels",
    "model": "benchmarks.bench_model",
    "train": "benchmarks.bench_train",
    "audio_stream": "benchmarks.bench_audio_stream",
    "calibration": "benchmarks.bench_calibration",
    "scoring": "benchmarks.bench_scoring",
    "score_match": "benchmarks.bench_score_match",
    "bar_feedback": "benchmarks.bench_bar_feedback",
    "tune": "benchmarks.bench_tune",
    "percepiano": "benchmarks.bench_percepiano",
}
RESULTS = ROOT / "benchmarks" / "RESULTS.md"


def run(name: str) -> str:
    started = time.time()
    try:
        out = importlib.import_module(BENCHMARKS[name]).main()
        text = out["markdown"] if isinstance(out, dict) else str(out)
    except Exception:
        text = f"benchmark failed:\n\n```\n{traceback.format_exc()[-3000:]}\n```\n"
    return f"## {name}\n\n_{time.time() - started:.0f} s_\n\n{text.strip()}\n"


def main(argv: list[str]) -> int:
    names = argv or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    sections = []
    for name in names:
        print(f"running {name} ...", flush=True)
        sections.append(run(name))
        print(sections[-1], flush=True)
    header = (f"# Benchmark results\n\nMachine: {machine()}\n\nDate: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
              f", revision {git_revision()}\n\nCommand: `.venv/bin/python benchmarks/run_all.py {' '.join(names)}`"
              " (`make bench` runs all; a subset replaces its own sections and keeps the others, each with its"
              " run time)\n")
    import torch
    if not torch.cuda.is_available():
        header += ("\nNo GPU on this machine: the fp16 (autocast + GradScaler) training and GPU forward figures are not"
                   " measured here; the `gpu` section comes from `benchmarks/gpu_check.py`, run on a GPU machine.\n")
    if names != list(BENCHMARKS) and RESULTS.exists():
        # a subset: replace its sections, keep the others
        old = RESULTS.read_text()
        kept = [s for s in old.split("\n## ")[1:] if s.split("\n", 1)[0].strip() not in names]
        sections = ["## " + s.rstrip() + "\n" for s in kept] + sections
        order = list(BENCHMARKS)
        sections.sort(key=lambda s: order.index(s[3:].split("\n", 1)[0].strip())
                      if s[3:].split("\n", 1)[0].strip() in order else len(order))
    RESULTS.write_text(header + "\n" + "\n".join(sections))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
