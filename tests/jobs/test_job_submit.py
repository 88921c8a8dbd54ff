"""`ray start --head` in the venv, then `ray job submit --working-dir . -- python jobs/train.py ...`,
`... jobs/tune.py ...` and `... jobs/score.py ...` with the sweep's best/ checkpoint, as a user and the nightly
schedule do.

Starts its own head on 127.0.0.1 with a private temp dir and stops it by PID (never a bare `ray stop`).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import soundfile as sf

from pipelines import constants as C
from tests.conftest import stop_processes_using
from tests.pipelines.scoring.conftest import SCALE, melody_midi, render

ROOT = Path(__file__).resolve().parents[2]


def _free_port(low: int = 20000) -> int:
    for port in range(low, low + 2000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port")


@pytest.mark.slow
def test_job_submit_runs_train_then_score_on_a_local_head(tmp_path):
    from tests.pipelines.training.conftest import make_synthetic_features   # the training tests' features

    features = make_synthetic_features(tmp_path / "features", n_pieces=4, takes=3, segments=1)
    bin_dir = Path(sys.executable).parent
    temp_dir = Path(tempfile.mkdtemp(prefix="pe-ray-", dir="/tmp"))   # short: AF_UNIX socket paths <= 107 bytes
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", RAY_AUTH_MODE="disabled",
               RAY_TMPDIR=str(temp_dir))
    env.pop("RAY_ADDRESS", None)
    port, dash = _free_port(20000), _free_port(23000)
    ports = [f"--dashboard-agent-listen-port={_free_port(24000)}", f"--dashboard-agent-grpc-port={_free_port(25000)}",
             f"--runtime-env-agent-port={_free_port(26000)}", f"--metrics-export-port={_free_port(27000)}",
             f"--node-manager-port={_free_port(28000)}", f"--object-manager-port={_free_port(29000)}"]
    start = subprocess.run([str(bin_dir / "ray"), "start", "--head", f"--port={port}", "--num-cpus=4",
                            "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true",
                            f"--temp-dir={temp_dir}", *ports], env=env, capture_output=True, text=True, timeout=120)
    try:
        assert start.returncode == 0, start.stderr[-2000:]
        submit = subprocess.run(
            [str(bin_dir / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir",
             str(ROOT), "--", "python", "jobs/train.py", "--config", "tiny", "--data", str(features),
             "--storage", str(tmp_path / "runs"), "--stage", "expert", "--name", "submitted",
             "--set", "train.epochs=1", "--set", "train.batch_size=4", "--set", "train.cpus_per_worker=0.5"],
            env=env, capture_output=True, text=True, timeout=600, cwd=str(ROOT))
        assert submit.returncode == 0, (submit.stdout + submit.stderr)[-4000:]
        assert "succeeded" in submit.stdout
        assert "best checkpoint" in submit.stdout and "log: " in submit.stdout
        summary = json.loads((tmp_path / "runs" / "submitted" / "summary.json").read_text())
        assert summary["best_checkpoint"]

        sweep = subprocess.run(     # a 2-trial sweep; its best/ is what the scoring job below takes
            [str(bin_dir / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir",
             str(ROOT), "--", "python", "jobs/tune.py", "--config", "tiny", "--data", str(features),
             "--storage", str(tmp_path / "tune"), "--stage", "expert", "--samples", "2", "--name", "sweep",
             "--set", "train.epochs=1", "--set", "train.batch_size=4"],
            env=env, capture_output=True, text=True, timeout=600, cwd=str(ROOT))
        assert sweep.returncode == 0, (sweep.stdout + sweep.stderr)[-4000:]
        assert "succeeded" in sweep.stdout and "2 trials in" in sweep.stdout
        best = tmp_path / "tune" / "sweep" / "best"
        assert (best / "config.yaml").exists() and (best / "model").is_dir()

        library = tmp_path / "library"
        library.mkdir()
        sf.write(library / "take.wav", render(melody_midi(SCALE[:30])), C.CQT_SAMPLE_RATE_HZ)
        (library / "broken.flac").write_bytes(b"fLaC not really")
        score = subprocess.run(
            [str(bin_dir / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir",
             str(ROOT), "--", "python", "jobs/score.py", "--input", str(library), "--out", str(tmp_path / "scores"),
             "--checkpoint", str(best), "--max-error-rate", "0.5",
             "--set", "scoring.actor_cpus=0.5", "--set", "scoring.prepare_cpus=0.5"],
            env=env, capture_output=True, text=True, timeout=600, cwd=str(ROOT))
        assert score.returncode == 0, (score.stdout + score.stderr)[-4000:]
        assert "succeeded" in score.stdout and "1 ok" in score.stdout and "broken.flac" in score.stdout
        from pipelines.scoring.publish import read_latest
        rows = {r["recording_id"]: r for r in read_latest(str(tmp_path / "scores")).to_pylist()}
        assert rows["take"]["status"] == "ok" and rows["broken"]["status"] == "error"
    finally:
        stop_processes_using(str(temp_dir))
        shutil.rmtree(temp_dir, ignore_errors=True)
