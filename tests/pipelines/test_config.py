"""Configs: presets resolve, overrides apply, bad values are rejected with a clear message."""
from __future__ import annotations

import pytest
import yaml

from model.schema import SEED10
from model.typed_config import ConfigError
from pipelines.config import Config, available_presets, config_from_dict, load_config, parse_override


def test_presets_resolve_and_validate():
    assert {"tiny", "mert-v1-95m", "mert-v1-330m"} <= set(available_presets())
    for name in available_presets():
        cfg = load_config(name)
        assert isinstance(cfg, Config)
        assert cfg.name == name


def test_mert_95m_preset_has_published_shape():
    cfg = load_config("mert-v1-95m")
    assert (cfg.model.mert_num_layers, cfg.model.mert_hidden_size) == (12, 768)
    assert cfg.model.mert_hop_samples == 320          # 75 frames/s at 24 kHz
    assert cfg.model.mert_source == "m-a-p/MERT-v1-95M"


def test_330m_preset_inherits_from_95m():
    cfg = load_config("mert-v1-330m")
    assert (cfg.model.mert_num_layers, cfg.model.mert_hidden_size) == (24, 1024)
    assert cfg.model.gradient_checkpointing is True     # inherited from mert-v1-95m


def test_overrides_are_parsed_as_yaml_values():
    cfg = load_config("tiny", ["train.epochs=3", "train.lr_head=5e-4", "model.mert_source=null",
                               "data.split_fractions=[0.6, 0.2, 0.2]"])
    assert cfg.train.epochs == 3 and cfg.train.lr_head == pytest.approx(5e-4)
    assert cfg.model.mert_source is None
    assert cfg.data.split_fractions == (0.6, 0.2, 0.2)


@pytest.mark.parametrize("override, fragment", [
    ("train.epochs=0", "train.epochs must be >= 1"),
    ("train.epochs=ten", "train.epochs: expected an integer"),
    ("model.fusion_heads=7", "not divisible by fusion_heads 7"),
    ("train.precision=fp8", "train.precision: 'fp8' is not one of"),
    ("train.bogus=1", "unknown config key train.bogus"),
    ("data.split_fractions=[0.5, 0.2, 0.2]", "sum to 1"),
    ("data.augment.p_noise=1.5", "augment.p_noise must be a probability"),
    ("dimensions=nonsense", "unknown dimension schema 'nonsense'"),
    ("model.mert_conv_stride=[5, 2]", "must have the same length"),
])
def test_bad_values_are_rejected_with_a_clear_message(override, fragment):
    with pytest.raises(ConfigError) as info:
        load_config("tiny", [override])
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("train.epochs")


def test_yaml_file_with_preset_chain(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"preset": "tiny", "train": {"epochs": 2}, "dimensions": "percepiano19"}))
    cfg = load_config(str(path))
    assert cfg.train.epochs == 2
    assert cfg.model.mert_hidden_size == 64            # from tiny
    assert len(cfg.schema()) == 19


def test_unknown_preset_names_the_choices():
    with pytest.raises(ConfigError, match="tiny"):
        load_config("does-not-exist")


def test_resolved_config_round_trips_through_a_dict():
    cfg = load_config("tiny", ["train.epochs=4"])
    again = config_from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg
    assert again.fingerprint() == cfg.fingerprint()


def test_aggregate_weights_override_the_schema():
    cfg = load_config("tiny", ["aggregate_weights=[1, 0, 0, 0]"])
    schema = cfg.schema()
    scores = {name: 50.0 for name in SEED10.names}
    scores.update(note_accuracy=90.0, rhythmic_precision=70.0)
    assert schema.aggregate_score(scores) == pytest.approx(80.0)
    assert SEED10.aggregate_score(scores) == pytest.approx(0.35 * 80 + 0.25 * 50 + 0.25 * 50 + 0.15 * 50)
