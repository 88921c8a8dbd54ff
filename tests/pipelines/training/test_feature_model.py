"""The feature model (train.feature_blend): gradient boosting on whole-performance descriptors, fitted on the
train split's recordings after the expert stage and blended into each recording's score by the evaluation,
the calibration and the scoring job alike."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from model.builder import build_model
from model.checkpoint import save_model
from pipelines.config import load_config
from pipelines.evaluation.calibration import calibrate_checkpoint
from pipelines.evaluation.evaluate import evaluate_checkpoint
from pipelines.training.feature_model import (FEATURE_MODEL_FILE, FEATURE_MODEL_META, N_FEATURES,
                                              check_feature_column, fit_feature_model, load_feature_model,
                                              remove_feature_model)
from tests.pipelines.training.conftest import make_synthetic_features


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    # 8 pieces x 4 takes: 24 train recordings (the trees need 20 labelled ones per dimension)
    return make_synthetic_features(tmp_path_factory.mktemp("feature_model") / "features", n_pieces=8)


def _checkpoint(path, seed: int = 0) -> str:
    config = load_config("tiny", ["train.stage=expert"])
    torch.manual_seed(seed)
    model = build_model(config.model, config.schema(), pretrained=False)
    save_model(str(path), model, config.to_dict(), config.schema(), {"stage": "expert"})
    return str(path)


def test_the_blend_mixes_trees_and_network_per_recording_and_dimension():
    from pipelines.evaluation.baselines import GradientBoostingFeatureBaseline
    from pipelines.training.feature_model import FeatureModel

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, N_FEATURES))
    Y = np.stack([50 + 10 * X[:, 0], np.full(60, np.nan)], axis=1)     # the second dimension has no labels
    Y[:45, 1] = np.nan
    model = FeatureModel(GradientBoostingFeatureBaseline().fit(X, Y), ["a", "b"], weight=0.25)
    assert model.fitted.tolist() == [True, False]
    network = np.array([[10.0, 20.0], [30.0, 40.0]])
    blended = model.blend(network, [X[0].astype(np.float32), None])
    trees = model.predict(X[:1])
    assert blended[0, 0] == pytest.approx(0.75 * 10.0 + 0.25 * trees[0, 0])
    assert blended[0, 1] == 20.0                 # no trees for this dimension: the network's score
    assert blended[1].tolist() == [30.0, 40.0]   # no descriptors (no aligned score): the network's scores
    assert network[0, 0] == 10.0                 # the input is left alone


def test_fitted_on_train_recordings_and_blended_by_evaluation_and_calibration(features, tmp_path):
    ckpt = _checkpoint(tmp_path / "model")
    plain = evaluate_checkpoint(ckpt, str(features))
    assert "model_network_only" not in plain["results"] and plain["feature_model"] is None

    record = fit_feature_model(ckpt, str(features), 0.5)
    assert record["recordings"] == 28 and record["splits"] == {"train": 24, "val": 4}
    assert record["fitted"] == load_config("tiny").schema().names and record["weight"] == 0.5
    assert json.loads((tmp_path / "model" / FEATURE_MODEL_META).read_text())["recordings"] == 28
    summary = evaluate_checkpoint(ckpt, str(features), str(tmp_path / "eval"))
    results = summary["results"]
    # the network alone is the untrained checkpoint's: the same numbers as before the feature model existed
    assert results["model_network_only"]["mean"]["mae"] == pytest.approx(plain["results"]["model"]["mean"]["mae"])
    # the test recordings' scores are the mean of the network's and the trees' (weight 0.5)
    fm = load_feature_model(ckpt)
    table = pq.read_table(features / "segments")
    blob = {r: b for r, b in zip(table.column("recording_id").to_pylist(), table.column("perf_features").to_pylist())}
    names = fm.names
    network = {r["recording_id"]: r for r in plain["per_recording"]}
    for row in summary["per_recording"]:
        trees = fm.predict(np.frombuffer(blob[row["recording_id"]], "<f4")[None])[0]
        expected = [0.5 * network[row["recording_id"]][n] + 0.5 * t for n, t in zip(names, trees)]
        assert [row[n] for n in names] == pytest.approx(expected)
        assert row["network"] == pytest.approx({n: network[row["recording_id"]][n] for n in names})
    # the descriptors follow the takes' quality, the untrained network does not: the blend ranks better
    assert results["model"]["mean"]["pearson"] > results["model_network_only"]["mean"]["pearson"] + 0.3
    assert summary["feature_model"] == {"weight": 0.5, "recordings": 28, "fitted": names}
    # the val recordings also have the predictions of trees fitted on train alone, which the calibration blends
    val_ids = sorted({r for r, s in zip(table.column("recording_id").to_pylist(), table.column("split").to_pylist())
                      if s == "val"})
    assert sorted(fm.holdout) == val_ids
    net = np.full((len(val_ids), len(names)), 50.0)
    described = [np.frombuffer(blob[r], "<f4") for r in val_ids]
    np.testing.assert_allclose(fm.blend(net, described, val_ids, holdout=True),
                               0.5 * net + 0.5 * np.stack([fm.holdout[r] for r in val_ids]))
    assert not np.allclose(fm.blend(net, described, val_ids), fm.blend(net, described, val_ids, holdout=True))

    # the calibration fits the blended scores' sigma, which the evaluation then applies
    calibrated = calibrate_checkpoint(ckpt, str(features))
    assert calibrated["recordings"] == 4
    after = evaluate_checkpoint(ckpt, str(features))
    assert after["calibration"]["applied"] and [r[n] for r in after["per_recording"] for n in names] == \
        pytest.approx([r[n] for r in summary["per_recording"] for n in names])

    assert remove_feature_model(ckpt) and not (tmp_path / "model" / FEATURE_MODEL_FILE).exists()
    assert load_feature_model(ckpt) is None


def test_a_feature_set_without_descriptors_is_refused_in_one_line(features, tmp_path):
    old = tmp_path / "old"
    (old / "segments").mkdir(parents=True)
    table = pq.read_table(features / "segments")
    pq.write_table(table.drop(["perf_features"]), old / "segments" / "part-0.parquet")
    with pytest.raises(ValueError) as refused:
        check_feature_column(str(old))
    text = str(refused.value)
    assert "\n" not in text and str(old) in text and "perf_features" in text and "jobs/preprocess.py" in text
    ckpt = _checkpoint(tmp_path / "model")
    with pytest.raises(ValueError, match="perf_features"):
        fit_feature_model(ckpt, str(old), 0.5)


def test_a_feature_model_of_other_dimensions_is_refused(features, tmp_path):
    from model.errors import CheckpointError

    ckpt = _checkpoint(tmp_path / "model")
    fit_feature_model(ckpt, str(features), 0.5)
    with pytest.raises(CheckpointError, match="dimensions"):
        load_feature_model(ckpt, ["only", "these"])
    (tmp_path / "model" / FEATURE_MODEL_FILE).write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match=FEATURE_MODEL_FILE):
        load_feature_model(ckpt)


def test_an_older_revisions_descriptors_and_feature_model_are_refused_in_one_line(features, tmp_path):
    """A feature set or a fitted feature model with the 13 descriptors of an older revision would blend nothing
    (or the wrong columns): each is refused with a one-line error that says what to run."""
    import pyarrow as pa

    from model.errors import CheckpointError
    from pipelines.features.rows import pack_array

    old = tmp_path / "old"
    (old / "segments").mkdir(parents=True)
    table = pq.read_table(features / "segments")
    short = [pack_array(np.frombuffer(b, "<f4")[:13], "f4") if b else b
             for b in table.column("perf_features").to_pylist()]
    index = table.column_names.index("perf_features")
    pq.write_table(table.set_column(index, "perf_features", pa.array(short, pa.binary())),
                   old / "segments" / "part-0.parquet")
    with pytest.raises(ValueError) as refused:
        check_feature_column(str(old))
    text = str(refused.value)
    assert "\n" not in text and "13 descriptors" in text and str(N_FEATURES) in text and "jobs/preprocess.py" in text
    check_feature_column(str(features))                 # this revision's set passes

    ckpt = _checkpoint(tmp_path / "model")
    fit_feature_model(ckpt, str(features), 0.5)
    import pickle

    from pipelines.evaluation.baselines import GradientBoostingFeatureBaseline
    rng = np.random.default_rng(0)
    names = load_feature_model(ckpt).names
    stale = GradientBoostingFeatureBaseline().fit(rng.normal(size=(30, 13)), rng.normal(50, 5, (30, len(names))))
    (tmp_path / "model" / FEATURE_MODEL_FILE).write_bytes(pickle.dumps(stale))
    with pytest.raises(CheckpointError) as stale_model:
        load_feature_model(ckpt)
    assert "13 descriptors" in str(stale_model.value) and "jobs/blend.py" in str(stale_model.value)


def test_unfamiliar_descriptors_widen_sigma_towards_the_labels_spread():
    from pipelines.training.feature_model import NOVELTY_FAR, NoveltyReference

    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, N_FEATURES))
    Y = np.stack([50 + 10 * rng.normal(size=300), 60 + 4 * rng.normal(size=300)], axis=1)
    ref = NoveltyReference.fit(X, Y)
    assert NoveltyReference.fit(X[:5], Y[:5]) is None                  # too few recordings to judge by
    familiar = ref.novelty(rng.normal(size=(200, N_FEATURES)))
    assert 0.8 < np.median(familiar) < 1.2                             # new draws of the same music: about 1
    away = ref.novelty(np.stack([X[0] + step * np.ones(N_FEATURES) for step in (0.0, 1.0, 2.0, 4.0, 8.0)]))
    assert np.all(np.diff(away) > 0) and away[-1] > NOVELTY_FAR       # farther is more novel
    sigma = np.array([[5.0, 6.0]] * 4)
    wide = ref.widen(sigma, np.array([0.5, 1.0 + (NOVELTY_FAR - 1) / 2, NOVELTY_FAR + 3, np.nan]))
    spread = Y.std(axis=0)
    assert wide[0].tolist() == [5.0, 6.0] and wide[3].tolist() == [5.0, 6.0]      # familiar or unknown: kept
    np.testing.assert_allclose(wide[1], np.sqrt(sigma[1] ** 2 + 0.5 * np.maximum(spread ** 2 - sigma[1] ** 2, 0)))
    np.testing.assert_allclose(wide[2], np.maximum(spread, sigma[2]))   # far away: what knowing nothing costs
    assert wide[2, 1] == 6.0                                           # never narrowed (spread 4 < sigma 6)
    again = NoveltyReference.from_bytes(ref.to_bytes())
    np.testing.assert_allclose(again.novelty(X[:3] + 1), ref.novelty(X[:3] + 1), rtol=1e-6)


def test_evaluation_widens_the_sigma_of_unfamiliar_recordings_only(features, tmp_path):
    from pipelines.training.feature_model import FEATURE_MODEL_NOVELTY

    ckpt = _checkpoint(tmp_path / "model")
    record = fit_feature_model(ckpt, str(features), 0.5)
    assert record["novelty"]["neighbours"] == 10 and record["novelty"]["typical_distance"] > 0
    assert load_feature_model(ckpt).reference is not None
    widened = evaluate_checkpoint(ckpt, str(features))
    (tmp_path / "model" / FEATURE_MODEL_NOVELTY).unlink()              # as fitted before the reference existed
    plain = evaluate_checkpoint(ckpt, str(features))
    assert plain["novelty"] is None and all(r["novelty"] is None for r in plain["per_recording"])
    assert widened["novelty"]["recordings"] == len(widened["per_recording"]) > 0
    # the ECE of the sigma shown is reported beside the raw one (only where sigma was widened)
    assert widened["calibration"]["ece_widened_mean"] is not None and plain["calibration"]["ece_widened"] is None
    names = load_feature_model(ckpt).names
    assert any(r["novelty"] > 1.0 for r in widened["per_recording"])      # the test pieces are not the fitted ones
    for w, p in zip(widened["per_recording"], plain["per_recording"]):
        assert [w[n] for n in names] == pytest.approx([p[n] for n in names])    # scores are left alone
        ratio = np.array([w["sigma"][n] / p["sigma"][n] for n in names])
        if w["novelty"] <= 1.0:
            np.testing.assert_allclose(ratio, 1.0)
        else:
            assert np.all(ratio >= 1.0 - 1e-9)


def test_a_large_training_side_keeps_a_sample_as_its_novelty_reference():
    from pipelines.training import feature_model as F

    rng = np.random.default_rng(2)
    X = rng.normal(size=(F.NOVELTY_MAX_POINTS + 700, N_FEATURES))
    ref = F.NoveltyReference.fit(X, rng.normal(size=(len(X), 3)))
    assert ref.points.shape == (F.NOVELTY_MAX_POINTS, N_FEATURES)
    assert 0.8 < np.median(ref.novelty(rng.normal(size=(100, N_FEATURES)))) < 1.2


def test_a_descriptor_the_training_side_never_varied_counts_as_far_whatever_its_unit():
    from pipelines.training.feature_model import NOVELTY_FAR, NoveltyReference

    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, N_FEATURES))
    X[:, -1] = 120.0                                   # every training score at one written tempo
    ref = NoveltyReference.fit(X, rng.normal(50, 10, (200, 2)))
    query = rng.normal(size=(20, N_FEATURES))
    slower, much_slower = query.copy(), query.copy()
    query[:, -1], slower[:, -1], much_slower[:, -1] = 120.0, 100.0, 40.0
    at, off, far_off = ref.novelty(query), ref.novelty(slower), ref.novelty(much_slower)
    assert np.all(off > at)                            # the new tempo makes every recording less familiar ...
    np.testing.assert_allclose(off, far_off)           # ... by as much whatever the difference in its unit
    assert np.median(off) < 3 * NOVELTY_FAR            # and one descriptor does not swamp all the others
