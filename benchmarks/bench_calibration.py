"""Calibration of the model's sigma on the demo corpus, and whether sigma tracks the error.

    .venv/bin/python -m benchmarks.bench_calibration [--demo-out demo_out]

Reads what `jobs/demo.py` wrote (running it first when `<demo-out>` holds no evaluation): the expert
checkpoint's `calibration.json` (temperature per dimension fitted on the val split, ECE there before and
after) and the held-out evaluation (`evaluation.json`: ECE on the test split with the raw and the
calibrated sigma, and the mean sigma on the half of the test recordings the model got most wrong vs the
half it got right). Per-item sigma (the default, `model.sigma_head=per_item`) is what the demo trains.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

from benchmarks.common import ROOT, machine


def _fmt(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.3f}"


def main(demo_out: str = "demo_out") -> dict:
    out = Path(demo_out)
    if not out.is_absolute():
        out = ROOT / out
    evaluation_path = out / "runs" / "expert" / "evaluation" / "evaluation.json"
    if not evaluation_path.exists():
        subprocess.run([sys.executable, str(ROOT / "jobs" / "demo.py"), "--out", str(out)], check=True, cwd=ROOT)
    evaluation = json.loads(evaluation_path.read_text())
    checkpoint = Path(evaluation["checkpoint"])
    fit = json.loads((checkpoint / "calibration.json").read_text())
    held_out = evaluation["calibration"]
    u = evaluation["uncertainty"]
    names = list(fit["temperature"])
    rows = [f"| {n} | {fit['temperature'][n]:.2f} | {_fmt(fit['ece_before'].get(n))} | "
            f"{_fmt(fit['ece_after'].get(n))} | {_fmt(held_out['ece_raw'].get(n))} | "
            f"{_fmt(held_out['ece_calibrated'].get(n))} |" for n in names]
    markdown = "\n".join([
        f"Demo corpus (`python jobs/demo.py --out {demo_out}`), tiny preset, per-item sigma; temperature fitted on "
        f"the val split ({fit['recordings']} recordings), ECE = mean |observed - nominal| coverage of Gaussian "
        f"intervals (pipelines/evaluation/metrics.py), test split: {evaluation['recordings']} held-out recordings.",
        "",
        "| dimension | temperature | ECE val, raw | ECE val, calibrated | ECE test, raw | ECE test, calibrated |",
        "|---|---|---|---|---|---|",
        *rows,
        f"| **mean** | | {_fmt(fit['ece_before_mean'])} | {_fmt(fit['ece_after_mean'])} | "
        f"{_fmt(held_out['ece_raw_mean'])} | {_fmt(held_out['ece_calibrated_mean'])} |",
        "",
        f"Sigma tracks the error on the test split: mean calibrated sigma {u['sigma_wrong_half']:.2f} on the half of "
        f"the recordings the model got most wrong vs {u['sigma_right_half']:.2f} on the half it got right "
        f"(per dimension, split at the median absolute error; Spearman of sigma with the absolute error "
        f"{u['sigma_error_spearman']:.2f}, mean over {u['dimensions']} dimensions).",
        "",
        f"{machine()}.",
    ])
    print(markdown)
    return {"markdown": markdown, "fit": fit, "held_out": held_out, "uncertainty": u}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-out", default="demo_out")
    main(parser.parse_args().demo_out)
