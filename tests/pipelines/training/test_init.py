"""Initialising a run from a checkpoint of another dimension schema: what transfers, what starts fresh."""
from __future__ import annotations

import pytest
import torch

from model.builder import build_model
from model.checkpoint import part_of, transfer_state, transfer_summary
from model.config import MODEL_PARTS
from model.schema import SEED10, DimensionSchema, load_schema
from pipelines.config import load_config

PERCEPIANO = load_schema("percepiano19")


def _model(schema: DimensionSchema, seed: int):
    torch.manual_seed(seed)
    return build_model(load_config("tiny").model, schema, pretrained=False)


def test_a_seed10_model_initialises_a_percepiano19_model_but_its_heads():
    source, target = _model(SEED10, 0), _model(PERCEPIANO, 1)
    state, report = transfer_state(target.state_dict(), source.state_dict(), PERCEPIANO.names, SEED10.names)
    target.load_state_dict(state, strict=False)
    src = source.state_dict()
    for key, value in target.state_dict().items():
        part = part_of(key)
        if part in ("audio_encoder", "symbolic", "fusion", "aggregation", "shared_head"):
            assert torch.equal(value, src[key]), key                       # every trunk tensor came over
        elif key.startswith("heads.dims."):
            assert key not in state                                        # no dimension in common: fresh
    assert report["kept_dimensions"] == [] and report["fresh_dimensions"] == PERCEPIANO.names
    assert set(report["loaded_parts"]) == {"audio_encoder", "symbolic", "fusion", "aggregation", "shared_head"}
    line = transfer_summary(report, "ckpt")
    assert line.startswith("initialised from ckpt: ") and "heads kept for 0 of 19 dimensions" in line


def test_a_dimension_in_both_schemas_keeps_its_head_and_sigma_row():
    mixed = DimensionSchema.from_dict({"name": "mixed", "dimensions": [
        {"name": "timing", "group": "technical"}, {"name": "note_accuracy", "group": "technical"},
        {"name": "pedaling", "group": "technical"}]})
    source, target = _model(SEED10, 0), _model(mixed, 1)
    state, report = transfer_state(target.state_dict(), source.state_dict(), mixed.names, SEED10.names)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    target.load_state_dict(state, strict=False)
    after, src = target.state_dict(), source.state_dict()
    assert report["kept_dimensions"] == ["note_accuracy", "pedaling"] and report["fresh_dimensions"] == ["timing"]
    i_note, i_ped = SEED10.names.index("note_accuracy"), SEED10.names.index("pedaling")
    for key, value in after.items():
        if key.startswith("heads.dims.1."):
            assert torch.equal(value, src[key.replace("dims.1.", f"dims.{i_note}.")])
        if key.startswith("heads.dims.2."):
            assert torch.equal(value, src[key.replace("dims.2.", f"dims.{i_ped}.")])
        if key.startswith("heads.dims.0."):
            assert torch.equal(value, before[key])                            # timing: untouched
    rows = after["heads.log_sigma_head.weight"]
    assert torch.equal(rows[1], src["heads.log_sigma_head.weight"][i_note])
    assert torch.equal(rows[0], before["heads.log_sigma_head.weight"][0])


def test_checkpoints_of_another_architecture_are_refused_in_one_line(tmp_path):
    from model.checkpoint import save_model
    from model.errors import ConfigError
    from pipelines.training.run import check_init

    other = load_config("tiny", ["model.cqt_hidden_size=32", "model.symbolic_hidden_size=32", "model.fusion_dim=32",
                                 "model.lstm_hidden_size=16", "model.head_shared_size=32", "model.audio_encoder=cqt",
                                 "model.cqt_channels=2"])
    net = build_model(other.model, SEED10, pretrained=False)
    save_model(str(tmp_path / "m"), net, other.to_dict(), SEED10, {})
    with pytest.raises(ConfigError, match="tensors fit this checkpoint .another preset or architecture"):
        check_init(str(tmp_path / "m"), load_config("tiny"))
    save_model(str(tmp_path / "same"), _model(SEED10, 0), load_config("tiny").to_dict(), SEED10, {})
    line = check_init(str(tmp_path / "same"), load_config("tiny", ["dimensions=percepiano19"]))
    assert "heads kept for 0 of 19 dimensions" in line


def test_freeze_names_are_checked():
    from model.errors import ConfigError
    assert load_config("tiny", ["train.freeze=[audio_encoder]"]).train.freeze == ["audio_encoder"]
    with pytest.raises(ConfigError, match="train.freeze names unknown part"):
        load_config("tiny", ["train.freeze=[encoder]"])
    assert "audio_encoder" in MODEL_PARTS
