"""model.recording_statistics through the scoring job's own objects: the span preparation gives every window
the same whole-recording statistics as the preprocessing, so a checkpoint scores a library as it was trained."""
from __future__ import annotations

import json

import numpy as np
import torch

from pipelines import constants as C
from pipelines.training.feature_model import N_FEATURES
from tests.pipelines.scoring.conftest import SCALE, melody_midi, save_checkpoint


def test_scoring_windows_get_the_preprocessings_recording_statistics_and_the_same_scores(tmp_path):
    from pipelines.config import config_from_dict, load_config
    from pipelines.features.processor import RecordingProcessor
    from pipelines.features.rows import unpack_array
    from pipelines.io.model_files import load_checkpoint, read_checkpoint_meta
    from pipelines.scoring.infer import load_span_model
    from pipelines.scoring.prepare import SpanPreparer
    from pipelines.scoring.run import model_flags
    from pipelines.training.batches import collate

    melody_midi(SCALE[:50]).write(str(tmp_path / "played.mid"))
    melody_midi(SCALE[:50]).write(str(tmp_path / "score.mid"))
    ckpt = save_checkpoint(tmp_path / "model", audio_encoder="none", input_statistics="true",
                           recording_statistics="true")
    meta = read_checkpoint_meta(str(ckpt))
    flags = model_flags(meta["config"])
    assert flags["use_recording_stats"]
    base = config_from_dict(meta["config"])
    window = base.data.train_window_s
    config = load_config(None, [f"scoring.window_s={window}", f"scoring.overlap={base.data.window_overlap}"],
                         extra={k: v for k, v in base.to_dict().items() if k != "scoring"})
    entry = {"recording_id": "r", "midi_uri": str(tmp_path / "played.mid"), "score_uri": str(tmp_path / "score.mid")}
    spans = list(SpanPreparer(config, **flags)(entry))
    assert all(s["status"] == "ok" for s in spans), spans[0]["message"]
    record = {**entry, "audio_uri": None, "split": "test", "labels": {}, "piece_id": "p", "performer_id": "x"}
    rows = [r for r in RecordingProcessor(config)(record) if not r["augment"]]
    assert rows and {r["recording_stats"] for r in rows} == {s["recording_stats"] for s in spans} != {b""}
    assert sum(len(s["win_index"]) for s in spans) == len(rows)

    span_model = load_span_model(str(ckpt), config, use_gpu=False)
    scored = np.concatenate([np.asarray(span_model.predict_span(s)["win_scores"]) for s in spans])
    model, _, schema, _ = load_checkpoint(str(ckpt))
    batch = collate({k: [r[k] for r in rows] for k in rows[0]}, schema.names)
    with torch.no_grad():
        direct = model.eval()(batch).scores.numpy()
    np.testing.assert_allclose(scored, direct, atol=1e-4)
    assert unpack_array(rows[0]["recording_stats"], "f4").shape[0] == 2 * (2 * C.N_PERF_ATTRS + 5)


def test_scoring_blends_the_feature_model_with_the_preprocessings_descriptors(tmp_path):
    """A checkpoint with a feature model: the span preparation computes the same descriptors as the
    preprocessing stored, and the recording's score is the blend of the network's and the trees'."""
    from model.schema import DimensionSchema
    from pipelines.config import config_from_dict, load_config
    from pipelines.evaluation.baselines import GradientBoostingFeatureBaseline
    from pipelines.features.processor import RecordingProcessor
    from pipelines.io.model_files import read_checkpoint_meta
    from pipelines.scoring.infer import load_span_model
    from pipelines.scoring.prepare import SpanPreparer
    from pipelines.scoring.run import Aggregator, model_flags
    from pipelines.training.feature_model import FeatureModel

    melody_midi(SCALE[:50]).write(str(tmp_path / "played.mid"))
    melody_midi(SCALE[:50]).write(str(tmp_path / "score.mid"))
    ckpt = save_checkpoint(tmp_path / "model", audio_encoder="none")
    meta = read_checkpoint_meta(str(ckpt))
    names = DimensionSchema.from_dict(meta["schema"]).names
    flags = {**model_flags(meta["config"]), "use_perf_features": True}
    base = config_from_dict(meta["config"])
    config = load_config(None, [f"scoring.window_s={base.data.train_window_s}",
                                f"scoring.overlap={base.data.window_overlap}"],
                         extra={k: v for k, v in base.to_dict().items() if k != "scoring"})
    entry = {"recording_id": "r", "midi_uri": str(tmp_path / "played.mid"), "score_uri": str(tmp_path / "score.mid")}
    spans = list(SpanPreparer(config, **flags)(entry))
    described = json.loads(spans[0]["info_json"])["perf_features"]
    record = {**entry, "audio_uri": None, "split": "test", "labels": {}, "piece_id": "p", "performer_id": "x"}
    rows = [r for r in RecordingProcessor(config)(record) if not r["augment"]]
    assert np.frombuffer(rows[0]["perf_features"], "<f4").tolist() == described and len(described) == N_FEATURES

    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, N_FEATURES)) + np.asarray(described)[None]
    trees = FeatureModel(GradientBoostingFeatureBaseline().fit(X, 30 + 5 * X[:, [0]] + np.zeros((40, len(names)))),
                         names, weight=0.5)
    span_model = load_span_model(str(ckpt), config, use_gpu=False)
    preds = [span_model(s) for s in spans]
    entries = {"r": {**entry, "content_hash": "h", "model_version": "v"}}
    plain = Aggregator(entries, names, config.schema(), config, "run").add
    blended = Aggregator(entries, names, config.schema(), config, "run", feature_model=trees).add
    network = [plain(p) for p in preds][-1]
    mixed = [blended(p) for p in preds][-1]
    assert network["status"] == mixed["status"] == "ok"
    expected = 0.5 * np.asarray(network["scores"]) + 0.5 * trees.predict(np.asarray(described)[None])[0]
    np.testing.assert_allclose(mixed["scores"], expected, rtol=1e-9)
    assert mixed["window_scores"] == network["window_scores"]        # windows stay the network's
    assert np.isnan(network["novelty"]) and np.isnan(mixed["novelty"])   # no novelty reference: sigma unchanged
    assert mixed["sigma"] == network["sigma"]

    # with the fitted recordings' reference: familiar playing keeps its sigma, unfamiliar playing widens it
    from pipelines.training.feature_model import NoveltyReference
    for shift, widened in ((0.0, False), (40.0, True)):
        targets = 50 + 20 * rng.normal(size=(40, len(names)))
        reference = NoveltyReference.fit(X + shift, targets)
        known = FeatureModel(trees.baseline, names, weight=0.5, reference=reference)
        row = [Aggregator(entries, names, config.schema(), config, "run", feature_model=known).add(p)
               for p in preds][-1]
        assert (row["novelty"] > 2.0) == widened and np.isfinite(row["novelty"])
        assert row["scores"] == mixed["scores"]                         # scores are left alone
        if widened:         # as far as knowing nothing: sigma is the fitted labels' spread
            np.testing.assert_allclose(row["sigma"], np.maximum(reference.spread, network["sigma"]), rtol=1e-6)
            assert all(np.all(np.asarray(w) >= np.asarray(n) - 1e-9)
                       for w, n in zip(row["window_sigma"], network["window_sigma"]))
        else:
            assert row["novelty"] < 1.5


def test_the_run_summary_counts_unfamiliar_recordings():
    from pipelines.scoring.run import format_summary
    from pipelines.training.feature_model import count_unfamiliar

    manifest = {"inputs": 4, "seconds": 3.0, "counts": {"ok": 4, "skipped": 0, "error": 0}, "model_version": "v",
                "errors": [], "other_files_count": 0, "unmatched_scores": [], "run_id": "r",
                "unfamiliar": count_unfamiliar([0.9, 1.3, 2.0, 3.5])}
    assert manifest["unfamiliar"] == {"recordings": 4, "widened": 3, "far": 2, "median_novelty": 1.65}
    text = format_summary(manifest, "/tmp/out")
    assert "unfamiliar music: 2 of 4 recordings" in text and "3 have a widened sigma" in text
    manifest["unfamiliar"] = count_unfamiliar([0.9, 1.2])
    assert "unfamiliar" not in format_summary(manifest, "/tmp/out")        # nothing far: no line
