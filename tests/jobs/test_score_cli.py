"""jobs/score.py's one-line errors for wrong paths and flags, before any Ray work."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "jobs" / "score.py"), *args], capture_output=True, text=True,
                          timeout=120, cwd=str(ROOT))


@pytest.mark.parametrize("which", ["input", "checkpoint"])
def test_missing_paths_fail_with_one_line(tmp_path, which):
    (tmp_path / "lib").mkdir()
    (tmp_path / "ckpt").mkdir()
    paths = {"input": str(tmp_path / "lib"), "checkpoint": str(tmp_path / "ckpt")}
    paths[which] = str(tmp_path / "nowhere")
    result = _run("--input", paths["input"], "--out", str(tmp_path / "out"), "--checkpoint", paths["checkpoint"])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "nowhere" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_a_directory_that_is_not_a_checkpoint_is_named(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "ckpt").mkdir()
    result = _run("--input", str(tmp_path / "lib"), "--out", str(tmp_path / "out"), "--checkpoint",
                  str(tmp_path / "ckpt"))
    assert result.returncode == 2 and "ckpt" in result.stderr and "Traceback" not in result.stderr


def test_flag_ranges_are_checked(tmp_path):
    result = _run("--input", "x", "--out", "y", "--checkpoint", "z", "--max-error-rate", "1.5")
    assert result.returncode == 2 and "--max-error-rate" in result.stderr
