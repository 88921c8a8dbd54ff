"""Temperature calibration of sigma: the fit on synthetic Gaussians, calibration.json of a checkpoint
(local and s3://), evaluation picking it up, and the window aggregation shared with scoring."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from model.builder import build_model
from model.checkpoint import save_model
from model.errors import CheckpointError
from pipelines.config import load_config
from pipelines.evaluation.calibration import (
    CALIBRATION_FILE,
    apply_temperature,
    calibrate_checkpoint,
    ece_per_dimension,
    fit_temperature,
    load_calibration,
)
from pipelines.evaluation.evaluate import aggregate_by_recording, evaluate_checkpoint
from pipelines.scoring.aggregate import aggregate_windows
from pipelines.training.run import calibrate_best
from tests.pipelines.training.conftest import make_synthetic_features

NAMES = ["a", "b", "c"]


def _synthetic(rng: np.random.Generator, scale: list[float], n: int = 4000):
    """Predictions whose true errors are `scale` times the predicted sigma, per dimension."""
    sigma = rng.uniform(3.0, 12.0, size=(n, len(scale)))
    y_pred = rng.uniform(20.0, 80.0, size=(n, len(scale)))
    y_true = y_pred + rng.normal(size=(n, len(scale))) * sigma * np.asarray(scale)[None]
    return y_true, y_pred, sigma


def test_fit_temperature_recovers_a_known_scale(rng):
    y_true, y_pred, sigma = _synthetic(rng, [2.0, 0.5, 1.0])
    temperature = fit_temperature(y_true, y_pred, sigma)
    assert temperature.shape == (3,)
    assert temperature == pytest.approx([2.0, 0.5, 1.0], rel=0.05)
    before = ece_per_dimension(y_true, y_pred, sigma, NAMES)
    after = ece_per_dimension(y_true, y_pred, sigma * temperature[None], NAMES)
    assert after["a"] < before["a"] - 0.1 and after["b"] < before["b"] - 0.1    # far off -> close
    assert max(after.values()) < 0.03


def test_fit_temperature_uses_finite_rows_and_needs_three(rng):
    y_true, y_pred, sigma = _synthetic(rng, [2.0, 2.0, 2.0], n=500)
    y_true[::2, 0] = np.nan                                                   # half the labels missing
    sigma[1::2, 0] = np.nan                                                   # and sigma of the others
    y_true[2:, 1] = np.nan                                                    # two rows left
    temperature = fit_temperature(y_true, y_pred, sigma)
    assert temperature[0] == 1.0 and temperature[1] == 1.0                   # no / two finite rows
    assert temperature[2] == pytest.approx(2.0, rel=0.1)
    one = fit_temperature([[50.0], [60.0], [70.0]], [[52.0], [57.0], [70.0]], [[1.0], [1.0], [1.0]])
    assert one[0] == pytest.approx(np.sqrt((4 + 9 + 0) / 3))
    with pytest.raises(ValueError, match="sigma has shape"):
        fit_temperature(y_true, y_pred, sigma[:, :2])


def test_aggregation_by_recording_is_the_scoring_rule():
    ids = ["r2", "r1", "r1", "r1"]
    starts, ends = [0.0, 0.0, 5.0, 10.0], [10.0, 10.0, 15.0, 12.0]
    scores = np.array([[50.0, 60.0], [40.0, 70.0], [60.0, 30.0], [90.0, 10.0]])
    sigma = np.array([[5.0, 6.0], [4.0, 3.0], [8.0, 2.0], [1.0, 1.0]])
    rec_ids, agg, agg_sigma = aggregate_by_recording(ids, starts, ends, scores, sigma)
    assert rec_ids == ["r1", "r2"]
    expected = aggregate_windows(starts[1:], ends[1:], scores[1:], sigma[1:])
    assert np.allclose(agg[0], expected[0]) and np.allclose(agg_sigma[0], expected[1])
    assert np.allclose(agg[1], scores[0]) and np.allclose(agg_sigma[1], sigma[0])
    assert not np.allclose(agg[0], scores[1:].mean(0))                        # centre-weighted, not the mean
    _, agg_again, none = aggregate_by_recording(ids, starts, ends, scores, None)
    assert none is None and np.allclose(agg_again, agg)


def _checkpoint(tmp_path: Path, seed: int = 0) -> tuple[Path, list[str]]:
    """An untrained tiny checkpoint inside a Ray-style checkpoint directory -> (that directory, names)."""
    config = load_config("tiny")
    torch.manual_seed(seed)
    model = build_model(config.model, config.schema(), pretrained=False)
    ray_dir = tmp_path / "run" / "checkpoint_000001"
    save_model(str(ray_dir / "model"), model, config.to_dict(), config.schema(), {"stage": "expert"})
    return ray_dir, config.schema().names


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    return make_synthetic_features(tmp_path_factory.mktemp("calibration") / "features")


def test_calibrate_checkpoint_writes_calibration_json_and_evaluation_applies_it(features, tmp_path):
    ray_dir, names = _checkpoint(tmp_path)
    model_dir = ray_dir / "model"
    raw = evaluate_checkpoint(str(model_dir), str(features))
    assert raw["calibration"]["applied"] is False and raw["calibration"]["ece_calibrated"] is None
    result = calibrate_checkpoint(str(ray_dir), str(features))                  # the Ray checkpoint directory
    path = model_dir / CALIBRATION_FILE
    assert result["uri"] == str(path) and path.exists()
    written = json.loads(path.read_text())
    assert {k: v for k, v in result.items() if k != "uri"} == written
    assert set(written) == {"temperature", "split", "target", "recordings", "ece_before", "ece_after",
                            "ece_before_mean", "ece_after_mean", "created"}
    assert written["split"] == "val" and written["target"] == "expert" and written["recordings"] == 4
    assert list(written["temperature"]) == names and all(t > 0 for t in written["temperature"].values())
    assert load_calibration(str(model_dir))["temperature"] == written["temperature"]

    out = tmp_path / "evaluation"
    summary = evaluate_checkpoint(str(model_dir), str(features), str(out))
    cal = summary["calibration"]
    assert cal["applied"] is True and cal["file"] == str(path) and cal["fit_split"] == "val"
    assert cal["temperature"] == written["temperature"]
    assert cal["ece_raw"] == pytest.approx(
        {n: raw["results"]["model"]["per_dimension"][n]["ece"] for n in names}, nan_ok=True)
    for n in names:                                                            # sigma of the model scaled by T
        assert summary["results"]["model"]["per_dimension"][n]["ece"] == pytest.approx(cal["ece_calibrated"][n])
        ratio = summary["results"]["model"]["per_dimension"][n]["sharpness"] / \
            raw["results"]["model"]["per_dimension"][n]["sharpness"]
        assert ratio == pytest.approx(written["temperature"][n], rel=1e-6)
    assert "Calibration of sigma" in (out / "evaluation.md").read_text()
    assert json.loads((out / "evaluation.json").read_text())["calibration"]["applied"] is True


def test_a_split_without_labels_writes_nothing(features, tmp_path):
    ray_dir, _ = _checkpoint(tmp_path)
    result = calibrate_checkpoint(str(ray_dir), str(features), labels_lookup={})   # no recording rated
    assert result["uri"] is None and "no recording of the 'val' split has expert labels" in result["skipped"]
    empty = calibrate_checkpoint(str(ray_dir), str(features), split="holdout")
    assert empty["recordings"] == 0 and "no segments in the 'holdout' split" in empty["skipped"]
    assert not (ray_dir / "model" / CALIBRATION_FILE).exists()
    assert load_calibration(str(ray_dir / "model")) is None


def test_calibration_on_s3(features, tmp_path, s3_bucket):
    from pipelines.io import storage
    from pipelines.io.model_files import load_checkpoint, save_checkpoint

    ray_dir, names = _checkpoint(tmp_path)
    model, config_dict, schema, extra = load_checkpoint(str(ray_dir / "model"))
    uri = save_checkpoint(f"{s3_bucket}/runs/checkpoint_000001/model", model, config_dict, schema, extra)
    result = calibrate_checkpoint(storage.parent(uri), str(features))
    assert result["uri"] == storage.join(uri, CALIBRATION_FILE) and storage.exists(result["uri"])
    assert load_calibration(uri)["temperature"] == result["temperature"]
    assert list(result["temperature"]) == names


def test_calibration_files_are_checked(tmp_path):
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps({"temperature": {"a": 2.0, "b": 0.5}}))
    calibration = load_calibration(str(tmp_path))
    sigma = np.ones((4, 3, 2))
    assert np.allclose(apply_temperature(sigma, calibration, ["b", "a"])[..., 0], 0.5)
    with pytest.raises(CheckpointError, match=f"{tmp_path / CALIBRATION_FILE}: calibrated for dimensions"):
        apply_temperature(np.ones((4, 3)), calibration, ["a", "b", "c"])
    for bad in ("{not json", json.dumps({"temperature": {"a": -1.0}}), json.dumps([1, 2])):
        (tmp_path / CALIBRATION_FILE).write_text(bad)
        with pytest.raises(CheckpointError, match=CALIBRATION_FILE):
            load_calibration(str(tmp_path))


def test_a_failed_calibration_after_training_is_reported_not_raised(tmp_path):
    result = calibrate_best(str(tmp_path / "nowhere"), str(tmp_path / "no-features"))
    assert "no such checkpoint directory" in result["error"]
    assert calibrate_best(None, str(tmp_path)) is None


def test_evaluation_says_when_it_leaves_the_linear_baseline_out(features, tmp_path):
    """Train segments without CQT (e.g. preprocessed with store_cqt=false for a MERT model): the linear
    baseline cannot be fitted, and the table says so."""
    import shutil

    import pyarrow.parquet as pq

    from pipelines.evaluation.evaluate import comparison_table

    ray_dir, _ = _checkpoint(tmp_path)
    no_cqt = tmp_path / "no-cqt"
    shutil.copytree(features, no_cqt)
    path = next((no_cqt / "segments").glob("*.parquet"))
    table = pq.read_table(path)
    empty = pa.array([b"" if split == "train" else blob for split, blob in
                      zip(table["split"].to_pylist(), table["cqt"].to_pylist())], table.schema.field("cqt").type)
    pq.write_table(table.set_column(table.column_names.index("cqt"), "cqt", empty), path)
    summary = evaluate_checkpoint(str(ray_dir / "model"), str(no_cqt))
    assert "baseline_linear" not in summary["results"] and "baseline_mean" in summary["results"]
    assert "no CQT for 0 of 4 test and 16 of 16 train recordings" in summary["omitted"]["baseline_linear"]
    assert "| baseline_linear | omitted: no CQT for" in comparison_table(summary)
    full = evaluate_checkpoint(str(ray_dir / "model"), str(features))
    assert "baseline_linear" in full["results"] and full["omitted"] == {}


def test_evaluation_of_all_recordings_or_by_a_splits_table(features, tmp_path):
    """--split all: every recording of the feature set; --splits: the table's test recordings."""
    from pipelines.io.splits_table import read_splits_table, write_splits_table
    from pipelines.preprocess import read_segments_table

    ray_dir, _ = _checkpoint(tmp_path)
    table = read_segments_table(str(features), columns=["recording_id", "split", "augment"])
    originals = {r for r, a in zip(table["recording_id"].to_pylist(), table["augment"].to_pylist()) if a == ""}
    test = evaluate_checkpoint(str(ray_dir / "model"), str(features))
    every = evaluate_checkpoint(str(ray_dir / "model"), str(features), split="all")
    assert every["recordings"] == len(originals) > test["recordings"] > 0
    ids = sorted(originals)
    uri = str(tmp_path / "fold.csv")
    write_splits_table({r: ("test" if i < 3 else "train") for i, r in enumerate(ids)}, uri)
    folded = evaluate_checkpoint(str(ray_dir / "model"), str(features), splits=read_splits_table(uri))
    assert [row["recording_id"] for row in folded["per_recording"]] == ids[:3]
