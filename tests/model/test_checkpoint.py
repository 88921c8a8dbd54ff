"""Checkpoint round trips (local and s3://) and the messages of broken checkpoints."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from model.builder import build_model
from model.checkpoint import load_model, save_model
from model.errors import CheckpointError
from tests.model.conftest import SCHEMA3, make_batch, save_tiny_mert


def _run(model, batch):
    with torch.no_grad():
        return model.eval()(batch)


def test_round_trip_gives_identical_outputs(tiny_cfg, schema, tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_cfg, schema, pretrained=False)
    batch = make_batch(tiny_cfg, [1.0, 0.6], [12, 0])
    run_config = {"name": "test", "model": tiny_cfg.to_dict(), "train": {"epochs": 1}}
    save_model(str(tmp_path / "ckpt"), model, run_config, schema, {"label_mean": torch.tensor([50.0, float("nan")]),
                                                                    "version": "0.1"})
    loaded, config, loaded_schema, extra = load_model(str(tmp_path / "ckpt"))
    assert not loaded.training and loaded_schema == schema
    assert config["train"] == {"epochs": 1} and config["model"] == tiny_cfg.to_dict()
    assert extra == {"label_mean": [50.0, None], "version": "0.1"}
    a, b = _run(model, batch), _run(loaded, batch)
    assert torch.equal(a.scores, b.scores) and torch.equal(a.attention, b.attention)


def test_checkpoint_carries_the_resolved_mert_layout(tiny_cfg, tmp_path):
    large = dataclasses.replace(tiny_cfg, mert_feat_extract_norm="layer", mert_do_stable_layer_norm=True)
    save_tiny_mert(tmp_path / "mert", large, mert_style=True)
    model = build_model(dataclasses.replace(tiny_cfg, mert_source=str(tmp_path / "mert")), SCHEMA3)
    save_model(str(tmp_path / "ckpt"), model, {"model": tiny_cfg.to_dict()}, SCHEMA3, {})
    (tmp_path / "mert" / "config.json").unlink()                          # the source is not needed again
    loaded, config, _, _ = load_model(str(tmp_path / "ckpt"))
    assert config["model"]["mert_feat_extract_norm"] == "layer"
    batch = make_batch(tiny_cfg, [0.8], [5], n_dims=3)
    assert torch.equal(_run(model, batch).scores, _run(loaded, batch).scores)


def test_remote_uris_are_refused_with_a_pointer_to_the_fetching_layer(tiny_cfg, schema):
    model = build_model(dataclasses.replace(tiny_cfg, audio_encoder="cqt"), schema, pretrained=False)
    for call in (lambda: save_model("s3://b/run", model, {}, schema, {}), lambda: load_model("s3://b/run")):
        with pytest.raises(CheckpointError, match="s3://b/run: model/ reads and writes local directories"):
            call()


def test_weights_load_with_weights_only(tiny_cfg, schema, tmp_path, monkeypatch):
    model = build_model(dataclasses.replace(tiny_cfg, audio_encoder="cqt"), schema, pretrained=False)
    save_model(str(tmp_path / "c"), model, {}, schema, {})
    seen = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: seen.append(k.get("weights_only")) or real(*a, **k))
    load_model(str(tmp_path / "c"))
    assert seen == [True]


def test_wrapped_models_save_their_inner_module(tiny_cfg, schema, tmp_path):
    model = build_model(dataclasses.replace(tiny_cfg, audio_encoder="cqt"), schema, pretrained=False)
    wrapper = torch.nn.Module()
    wrapper.module = model                                                  # what DDP looks like
    save_model(str(tmp_path / "c"), wrapper, {}, schema, {})
    state = torch.load(tmp_path / "c" / "model.pt", weights_only=True)["state_dict"]
    assert not any(k.startswith("module.") for k in state)


def test_broken_checkpoints_say_what_was_expected(tiny_cfg, schema, tmp_path):
    with pytest.raises(CheckpointError, match="expected a directory written by model.checkpoint.save_model"):
        load_model(str(tmp_path / "absent"))
    model = build_model(dataclasses.replace(tiny_cfg, audio_encoder="cqt"), schema, pretrained=False)
    save_model(str(tmp_path / "c"), model, {}, schema, {})
    meta = json.loads((tmp_path / "c" / "model.json").read_text())
    meta["config"]["model"]["lstm_hidden_size"] = 8
    (tmp_path / "c" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="weights do not fit the saved config"):
        load_model(str(tmp_path / "c"))
    meta["config"]["model"]["lstm_hidden_size"] = "big"
    (tmp_path / "c" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="saved model config or schema is invalid"):
        load_model(str(tmp_path / "c"))
    (tmp_path / "c" / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        load_model(str(tmp_path / "c"))


def test_a_saved_config_with_an_unknown_key_names_it(tiny_cfg, schema, tmp_path):
    model = build_model(dataclasses.replace(tiny_cfg, audio_encoder="cqt"), schema, pretrained=False)
    save_model(str(tmp_path / "c"), model, {}, schema, {})
    meta = json.loads((tmp_path / "c" / "model.json").read_text())
    meta["config"]["model"]["lstm_size"] = 8
    (tmp_path / "c" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="unknown config key model.lstm_size"):
        load_model(str(tmp_path / "c"))


def test_a_checkpoint_from_before_sigma_head_loads_with_its_per_dimension_sigma(tiny_cfg, schema, tmp_path):
    cfg = dataclasses.replace(tiny_cfg, audio_encoder="cqt", sigma_head="per_dimension")
    model = build_model(cfg, schema, pretrained=False)
    with torch.no_grad():
        model.heads.log_sigma.copy_(torch.linspace(-3.0, -1.0, len(schema)))
    save_model(str(tmp_path / "c"), model, {"model": cfg.to_dict()}, schema, {})
    meta = json.loads((tmp_path / "c" / "model.json").read_text())
    del meta["config"]["model"]["sigma_head"]                               # as written before the field
    (tmp_path / "c" / "model.json").write_text(json.dumps(meta))
    state = torch.load(tmp_path / "c" / "model.pt", weights_only=True)["state_dict"]
    assert "heads.log_sigma" in state and not any(k.startswith("heads.log_sigma_head") for k in state)
    loaded, config, _, _ = load_model(str(tmp_path / "c"))
    assert loaded.config.sigma_head == "per_dimension" and config["model"]["sigma_head"] == "per_dimension"
    batch = make_batch(tiny_cfg, [1.0, 0.6], [12, 0])
    a, b = _run(model, batch), _run(loaded, batch)
    assert torch.equal(a.sigma, b.sigma) and torch.equal(a.scores, b.scores)
    assert torch.equal(b.sigma[0], b.sigma[1])


def test_per_item_sigma_round_trips(tiny_cfg, schema, tmp_path):
    model = build_model(dataclasses.replace(tiny_cfg, audio_encoder="cqt"), schema, pretrained=False)
    with torch.no_grad():
        model.heads.log_sigma_head.weight.normal_(0.0, 0.3)
    save_model(str(tmp_path / "c"), model, {}, schema, {})
    loaded, config, _, _ = load_model(str(tmp_path / "c"))
    assert config["model"]["sigma_head"] == "per_item"
    batch = make_batch(tiny_cfg, [1.0, 0.6], [12, 0])
    a, b = _run(model, batch), _run(loaded, batch)
    assert torch.equal(a.sigma, b.sigma) and not torch.equal(b.sigma[0], b.sigma[1])
