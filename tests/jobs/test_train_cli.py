"""jobs/train.py as a user runs it: a rerun of a run's name with other settings is refused in one line, before
a Ray is started for it; the same settings resume."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from jobs._common import training_config  # noqa: E402


def test_a_rerun_with_other_settings_is_refused_before_ray_starts(tmp_path):
    from pipelines.config import ConfigError
    from pipelines.training.run import check_rerun, check_resume, run_fingerprint

    data, runs = tmp_path / "features", tmp_path / "runs"
    data.mkdir()
    args = argparse.Namespace(config="tiny", stage="expert", num_workers=None, gpu=False, overrides=[])
    made = run_fingerprint(training_config(args), str(data), None, None)
    assert check_rerun(str(runs / "run"), made) is False              # nothing there yet: a new run
    check_resume(str(runs / "run"), made)                               # ... which records its settings
    assert check_rerun(str(runs / "run"), made) is True                 # the same settings resume it
    args.overrides = ["train.lr_head=0.01"]
    with pytest.raises(ConfigError, match="train.lr_head 0.002 -> 0.01"):
        check_rerun(str(runs / "run"), run_fingerprint(training_config(args), str(data), None, None))

    result = subprocess.run([sys.executable, "jobs/train.py", "--config", "tiny", "--stage", "expert",
                             "--data", str(data), "--storage", str(runs), "--name", "run",
                             "--set", "train.lr_head=0.01"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    refusal = output.strip().splitlines()[-1]
    assert refusal.startswith("error: ") and "other settings" in refusal and "--restart" in refusal, output
    assert "train.lr_head 0.002 -> 0.01" in refusal
    assert "Ray dashboard" not in output and "Started a local Ray instance" not in output
