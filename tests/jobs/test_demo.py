"""`make demo`'s job end to end: corpus -> Ray Data preprocessing -> pseudo stage -> expert stage on
2 CPU workers (DDP over gloo), its feature model blended in -> evaluation on held-out pieces, where the model
must beat the training-mean and linear-feature baselines -> scoring a small library, where the take with
errors must score below the clean take and its flagged bars must be the bars with the errors."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(1800)    # the whole demo: 383-595 s on the machine of the README's console, ~900 s on a slower one
def test_demo_job_trains_both_stages_and_beats_the_baselines(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run([sys.executable, str(ROOT / "jobs" / "demo.py"), "--out", str(out)],
                            capture_output=True, text=True, timeout=1800,
                            env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "demo finished" in result.stdout
    # a console a person can read: a line per stage, its summary, progress, where things are; the rest is
    # in the log file it names
    lines = (result.stdout + result.stderr).splitlines()
    assert len(lines) <= 200, "\n".join(lines)
    for stage in ("1/6 demo corpus", "2/6 preprocessing", "3/6 training", "4/6 training", "5/6 evaluation",
                  "6/6 scoring"):
        assert sum(stage in line for line in lines) == 1, stage
    assert "pseudo: epoch 1/" in result.stdout and "expert: best epoch" in result.stdout
    assert not any("pid=" in line or "TrainingReport" in line or "core_worker" in line for line in lines)
    log = next(line.split("log: ", 1)[1] for line in lines if "log: " in line)
    assert Path(log).is_file() and "TrainingReport" in Path(log).read_text()
    evaluation = json.loads((out / "runs" / "expert" / "evaluation" / "evaluation.json").read_text())
    results = evaluation["results"]
    model, mean, linear = results["model"]["mean"], results["baseline_mean"]["mean"], results["baseline_linear"]["mean"]
    assert evaluation["split"] == "test" and evaluation["recordings"] >= 4
    assert "model_network_only" in results         # the feature model is blended in, the network shown beside it
    assert model["mae"] < mean["mae"] and model["mae"] < linear["mae"]
    assert model["pairwise_accuracy"] > max(mean["pairwise_accuracy"], linear["pairwise_accuracy"])
    assert (out / "runs" / "expert" / "evaluation" / "reliability.png").stat().st_size > 1000
    manifest = json.loads((out / "features" / "manifest.json").read_text())
    assert manifest["error_recordings"] == 0 and manifest["augmented_segments"] > 0
    # the held-out pieces were never trained on
    import pyarrow.parquet as pq
    from pipelines.preprocess import published_segments
    table = pq.read_table(published_segments(str(out / "features")), columns=["piece_id", "split"]).to_pylist()
    test_pieces = {r["piece_id"] for r in table if r["split"] == "test"}
    train_pieces = {r["piece_id"] for r in table if r["split"] == "train"}
    assert test_pieces and not test_pieces & train_pieces
    # sigma against the error is measured and reported; its sign on the 6 held-out recordings is not stable
    # from run to run (README, "Status and known limits"), so it is not asserted here
    uncertainty = evaluation["uncertainty"]
    assert all(math.isfinite(uncertainty[k]) for k in ("sigma_wrong_half", "sigma_right_half")), uncertainty
    calibration = evaluation["calibration"]
    assert calibration["applied"] and 0.0 <= calibration["ece_calibrated_mean"] <= 1.0
    # the demo ends by scoring a library: a clean take and a take with known errors (with their score), a
    # held-out recording without a score, and a corrupt file; the flagged bars are the bars with the errors
    from pipelines.scoring.publish import read_latest
    rows = {r["recording_id"]: r for r in read_latest(str(out / "scores")).to_pylist()}
    truth = json.loads((out / "library_truth.json").read_text())
    for rid in ("clean take", "take with errors"):
        assert rows[rid]["status"] == "ok" and rows[rid]["has_score"], rows[rid]["message"]
    assert rows["clean take"]["bar_flags"] == [] and rows["clean take"]["observation"] == ""
    # the take with a missed note, a wrong note and a dragged bar scores below the clean take of the same music
    assert rows["take with errors"]["aggregate"] < rows["clean take"]["aggregate"], \
        (rows["take with errors"]["aggregate"], rows["clean take"]["aggregate"])
    found = {}
    for flag in rows["take with errors"]["bar_flags"]:
        for bar in range(flag["bar"], flag["last_bar"] + 1):
            found.setdefault(str(bar), []).append(flag["kind"])
    assert truth["take with errors"] and found == truth["take with errors"], (found, truth)
    assert rows["take with errors"]["observation"].startswith(("Note accuracy: ", "Rhythmic precision: "))
    assert rows["audio only"]["status"] == "ok" and not rows["audio only"]["has_score"]
    assert rows["audio only"]["bars"] == []
    assert rows["corrupt"]["status"] == "error" and "corrupt.wav" in rows["corrupt"]["message"]
    assert "scored 4 recordings" in result.stdout and "latest.json" in result.stdout
    report = next(line.split()[-1] for line in result.stdout.splitlines() if line.strip().startswith("report"))
    assert Path(report).exists() and "take with errors" in Path(report).read_text()
