"""A 4-trial sweep on the demo corpus with the tiny preset, as a user runs it:

    python jobs/tune.py --config tiny --data demo_out/features --storage <tmp>/tune --samples 4

Uses demo_out/features when `make demo` has made it (else generates the demo corpus and preprocesses it
first, which takes a few minutes more). Reports the wall time, each trial's values, best metric, epochs
run and how it ended (ASHA), and the time per epoch.
"""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO_FEATURES = ROOT / "demo_out" / "features"


def _features(tmp: str) -> Path:
    if (DEMO_FEATURES / "manifest.json").exists():
        return DEMO_FEATURES
    corpus, features = Path(tmp) / "corpus", Path(tmp) / "features"
    subprocess.run([sys.executable, "jobs/make_corpus.py", "--out", str(corpus), "--pieces", "6", "--takes", "6"],
                   cwd=ROOT, check=True)
    subprocess.run([sys.executable, "jobs/preprocess.py", "--input", str(corpus), "--out", str(features),
                    "--config", "tiny"], cwd=ROOT, check=True)
    return features


def main() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        features = _features(tmp)
        command = [sys.executable, "jobs/tune.py", "--config", "tiny", "--data", str(features),
                   "--storage", os.path.join(tmp, "tune"), "--samples", "4", "--name", "bench"]
        started = time.time()
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=3600)
        wall = time.time() - started
        if result.returncode != 0:
            raise RuntimeError(f"jobs/tune.py failed ({result.returncode}): {(result.stdout + result.stderr)[-2000:]}")
        sweep = Path(tmp) / "tune" / "bench"
        rows = list(csv.DictReader((sweep / "summary.csv").open()))
        best = json.loads((sweep / "best" / "trial.json").read_text())
        epochs = [float(m) for m in re.findall(r"epoch \d+/\d+ .*\((\d+) s\)", result.stdout)]
    manifest = json.loads((features / "manifest.json").read_text())
    lines = [
        f"### Sweep on the demo corpus (tiny preset, {manifest['segments_per_split']['train']} train / "
        f"{manifest['segments_per_split']['val']} val segments incl. augmented copies)",
        "",
        "`python jobs/tune.py --config tiny --data demo_out/features --storage ... --samples 4` "
        "(Optuna seed 0, ASHA grace 1 epoch, rung factor 2, 8 epochs max, 1 trial at a time on 2 CPUs)",
        "",
        "| trial | lr_audio | lr_symbolic | lr_head | dropouts (fusion/LSTM/head) | best val_loss | best epoch | "
        "epochs run | status |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        drop = "/".join(f"{float(r[k]):.2f}" for k in ("model.fusion_dropout", "model.lstm_dropout",
                                                        "model.head_dropout"))
        lines.append(f"| {r['trial']} | {float(r['train.lr_audio']):.2g} | {float(r['train.lr_symbolic']):.2g} | "
                     f"{float(r['train.lr_head']):.2g} | {drop} | {float(r['val_loss']):.3f} | {r['best_epoch']} | "
                     f"{r['epochs_run']} | {r['status']} |")
    run = sum(int(r["epochs_run"]) for r in rows)
    stopped = sum(r["status"] == "stopped by ASHA" for r in rows)
    epochs.sort()
    median_epoch = epochs[len(epochs) // 2] if epochs else float("nan")
    lines += ["", f"Wall time {wall:.0f} s for {len(rows)} trials ({run} epochs run of {8 * len(rows)} possible: "
                  f"ASHA stopped {stopped}); median epoch {median_epoch:.0f} s (the first epoch of each trial "
                  f"includes starting its workers and datasets). Best: trial {best['trial']} "
                  f"(val_loss {best['val_loss']:.3f}, epoch {best['best_epoch']}), exported to best/ "
                  f"(sigma: {best['calibration']})."]
    return "\n".join(lines)


if __name__ == "__main__":
    print(main())
