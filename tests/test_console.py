"""The job console: the job's own lines on the terminal, Ray's forwarded worker output, C-level stderr and
library warnings in the log file, progress lines from workers shown, errors in one line."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import os, sys, warnings
    sys.path.insert(0, {root!r})
    from pipelines.console import CONSOLE, PROGRESS_MARK, progress
    CONSOLE.start("job", {out!r}, verbose={verbose})
    print("stage 1/2: reading")
    print("\\x1b[36m(RayTrainWorker pid=12)\\x1b[0m Reporting training result 1: TrainingReport(...)")
    print("(raylet) WARNING: 8 PYTHON worker processes have been started")
    print("(TrainController pid=7) " + PROGRESS_MARK + "run: epoch 1/2  val loss 0.5")
    os.write(2, b"core_worker.cc:2465: Actor has constructor arguments in the object store\\n")
    warnings.warn("a library's deprecation", DeprecationWarning)
    import logging
    for _ in range(2):                     # the project's own warnings: on the console once
        logging.getLogger("pipelines.training.run").warning("calibration of x skipped: no val rows")
    logging.getLogger("ray.data").warning("a Ray warning")
    progress("scored 3/3 recordings")
    for _ in range(3):                     # counted progress from workers: first and last shown
        print("(MapWorker pid=9) " + PROGRESS_MARK + "+1 3 recordings preprocessed")
    print("summary: 3 ok")
    CONSOLE.error("error: /x/y.wav: not a readable audio file")
    CONSOLE.close()
    print("after close")
    print("(MapWorker pid=9) a worker line Ray flushes at exit")
""")


def _run(tmp_path: Path, verbose: bool) -> tuple[subprocess.CompletedProcess, str]:
    out = tmp_path / ("v" if verbose else "q")
    code = SCRIPT.format(root=str(ROOT), out=str(out), verbose=verbose)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    logs = list((out / "logs").glob("job-*.log"))
    assert result.returncode == 0, result.stderr
    assert len(logs) == 1
    return result, logs[0].read_text()


def test_the_console_keeps_the_jobs_lines_and_the_log_keeps_the_rest(tmp_path):
    result, log = _run(tmp_path, verbose=False)
    assert result.stdout.splitlines() == ["stage 1/2: reading", "  run: epoch 1/2  val loss 0.5",
                                          "  scored 3/3 recordings", "  recordings preprocessed 1/3",
                                          "  recordings preprocessed 3/3", "summary: 3 ok", "after close"]
    assert result.stderr.splitlines() == ["warning: calibration of x skipped: no val rows",
                                          "error: /x/y.wav: not a readable audio file"]
    for noise in ("TrainingReport", "(raylet) WARNING", "core_worker.cc", "a library's deprecation",
                  "a Ray warning"):
        assert noise in log and noise not in result.stdout + result.stderr
    assert "stage 1/2: reading" in log and "progress: run: epoch 1/2" in log and "not a readable" in log


def test_verbose_brings_everything_back_to_the_console(tmp_path):
    result, log = _run(tmp_path, verbose=True)
    both = result.stdout + result.stderr
    for line in ("TrainingReport", "(raylet) WARNING", "core_worker.cc", "stage 1/2: reading"):
        assert line in both
    assert "TrainingReport" in log
