"""jobs/blend.py: a trained checkpoint gains a feature model and a calibration of its blend; --weight 0 takes
the feature model away again; --rank refits it with its predictions projected on the ratings' leading
components; a feature set without descriptors is refused in one line."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import torch

from tests.pipelines.training.conftest import make_synthetic_features

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "jobs" / "blend.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_blend_adds_and_removes_the_feature_model(tmp_path):
    from model.builder import build_model
    from model.checkpoint import save_model
    from pipelines.config import load_config

    features = make_synthetic_features(tmp_path / "features", n_pieces=8)
    config = load_config("tiny", ["train.stage=expert"])
    torch.manual_seed(0)
    ckpt = tmp_path / "run" / "checkpoint_000001"
    save_model(str(ckpt / "model"), build_model(config.model, config.schema(), pretrained=False), config.to_dict(),
               config.schema(), {"stage": "expert"})
    done = _run("--checkpoint", str(ckpt), "--data", str(features), "--weight", "0.3")
    assert done.returncode == 0, done.stderr
    assert "28 train and val recordings" in done.stdout and "weight 0.3" in done.stdout and "calibrated on 4 val" in done.stdout
    assert json.loads((ckpt / "model" / "feature_model.json").read_text())["weight"] == 0.3
    assert (ckpt / "model" / "calibration.json").exists()

    # refitted with the trees' predictions projected on the ratings' 2 leading components
    ranked = _run("--checkpoint", str(ckpt), "--data", str(features), "--weight", "0.3", "--rank", "2")
    assert ranked.returncode == 0 and "projected on 2 components" in ranked.stdout, ranked.stderr
    assert json.loads((ckpt / "model" / "feature_model.json").read_text())["rank"] == 2
    bad = _run("--checkpoint", str(ckpt), "--data", str(features), "--rank", "-1")
    assert bad.returncode == 2 and "--rank must be >= 0" in bad.stderr

    removed = _run("--checkpoint", str(ckpt), "--data", str(features), "--weight", "0")
    assert removed.returncode == 0 and "feature model removed" in removed.stdout
    assert not (ckpt / "model" / "feature_model.json").exists()

    old = tmp_path / "old" / "segments"
    old.mkdir(parents=True)
    pq.write_table(pq.read_table(features / "segments").drop(["perf_features"]), old / "part-0.parquet")
    refused = _run("--checkpoint", str(ckpt), "--data", str(old.parent))
    assert refused.returncode != 0
    message = (refused.stdout + refused.stderr).strip().splitlines()
    assert any("perf_features" in line and "jobs/preprocess.py" in line for line in message)
    assert "Traceback" not in refused.stderr
