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


def test_a_blended_checkpoint_adds_its_network_alone_and_other_weights(tmp_path):
    """An evaluation with a feature model (weight 0.5) also reports its network alone, and re-blends the
    per-recording scores at other weights: weight 1 is the trees alone, recovered exactly."""
    import numpy as np

    from benchmarks.bench_percepiano import weight_folds
    from pipelines.evaluation import metrics as E

    names = ["a", "b"]
    rng = np.random.default_rng(0)
    truth = rng.uniform(20, 80, (12, 2))
    net, trees = truth + rng.normal(0, 15, (12, 2)), truth + rng.normal(0, 5, (12, 2))
    blend = 0.5 * net + 0.5 * trees
    ids = [f"r{i}" for i in range(12)]
    per = [{"recording_id": r, **dict(zip(names, b)), "network": dict(zip(names, n))}
           for r, b, n in zip(ids, blend, net)]
    path = tmp_path / "piece" / "preset" / "fold2" / "evaluation" / "evaluation.json"
    path.parent.mkdir(parents=True)
    mean = {m: 0.5 for m in METRICS}
    path.write_text(json.dumps({"results": {"model": {"mean": mean}, "model_network_only": {"mean": mean}},
                                "feature_model": {"weight": 0.5}, "per_recording": per}))
    assert sorted(model_folds(str(tmp_path), "piece")) == ["preset", "preset, its network alone"]
    table = {"names": names, "ids": ids, "Y": truth, "groups": np.array(["p1", "p2"] * 6)}
    found = weight_folds(str(tmp_path), "piece", table)
    assert sorted(found) == [f"preset, feature model weight {w} instead of 0.5" for w in ("0.25", "0.75", "1")]
    alone = E.evaluate(truth, trees, None, table["groups"], names)["mean"]["r2"]
    assert found["preset, feature model weight 1 instead of 0.5"][2]["r2"] == pytest.approx(alone)
