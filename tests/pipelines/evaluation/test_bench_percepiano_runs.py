"""The PercePiano benchmark finds a model's fold evaluations where the jobs write them."""
from __future__ import annotations

import json

import pytest

from benchmarks.bench_percepiano import METRICS, model_folds


def _evaluation(path, r2: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mean = {m: r2 if m == "r2" else 0.5 for m in METRICS}
    path.write_text(json.dumps({"results": {"model": {"mean": mean}},
                                "calibration": {"applied": True, "ece_calibrated_mean": 0.04}}))


def test_model_folds_read_train_and_evaluate_layouts(tmp_path):
    """jobs/train.py evaluates into <run>/evaluation/, jobs/evaluate.py --out into the fold folder: both count,
    by variant and fold."""
    _evaluation(tmp_path / "piece" / "preset" / "fold0" / "evaluation" / "evaluation.json", 0.3)   # train.py
    _evaluation(tmp_path / "piece" / "preset" / "fold3" / "evaluation" / "evaluation.json", 0.4)
    _evaluation(tmp_path / "piece" / "scratch" / "fold1" / "evaluation.json", 0.2)                  # evaluate.py --out
    found = model_folds(str(tmp_path), "piece")
    assert sorted(found) == ["preset", "scratch"]
    assert sorted(found["preset"]) == [0, 3] and found["scratch"][1]["r2"] == pytest.approx(0.2)
    assert found["preset"][3]["r2"] == pytest.approx(0.4) and found["preset"][0]["ece"] == pytest.approx(0.04)
