"""Configs: presets resolve, overrides apply, bad values are rejected with a clear message."""
from __future__ import annotations

import pytest
import yaml

from model.errors import ConfigError
from model.schema import SEED10
from pipelines.config import (
    AugmentConfig,
    Config,
    ScoringConfig,
    available_presets,
    config_from_dict,
    load_config,
    parse_override,
)


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
    ("model.fusion_heads=abc", "model.fusion_heads: expected an integer, got 'abc'"),
    ("model.mert_source=3", "model.mert_source: expected a string"),
    ("model.symbolic_encoder=1", "model.symbolic_encoder: expected true or false, got 1"),
    ("model.audio_encoder=wav2vec", "model.audio_encoder: 'wav2vec' is not one of"),
    ("model.xyz=1", "unknown config key model.xyz (known: "),
    ("model.cqt_layers=true", "model.cqt_layers: expected a number, got True"),
    ("model.mert_conv_dim=[512, x, 512, 512, 512, 512, 512]", "model.mert_conv_dim[1]: expected an integer, got 'x'"),
    ("train.use_gpu=1", "train.use_gpu: expected true or false, got 1"),
    ("train.epochs=true", "train.epochs: expected a number, got True"),
    ("train.epochs=2.5", "train.epochs: expected an integer, got 2.5"),
    ("train.dropout=abc", "train.dropout: expected a number, got 'abc'"),
    ("data.split_fractions=[0.5, 'a', 0.5]", "data.split_fractions[1]: expected a number, got 'a'"),
    ("data.augment=3", "data.augment: expected a mapping, got 3"),
    ("scoring.window_s=4", "scoring.window_s must be 5..60 s, got 4.0"),
    ("scoring.use_gpu=yes please", "scoring.use_gpu: expected true or false"),
    ("score.use_gpu=true", "unknown config key score (known: aggregate_weights, data, dimensions, model, name, "
                           "scoring, train)"),
    ("aggregate_weights=[1, 0]", "aggregate_weights: schema 'seed10' has 4 aggregate groups, got 2 weights"),
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


def test_unknown_key_lists_the_known_keys_of_its_section():
    with pytest.raises(ConfigError) as info:
        load_config("tiny", ["train.epochz=3"])
    message = str(info.value)
    assert message.startswith("unknown config key train.epochz (known: ")
    assert "epochs" in message and "lr_head" in message and "mert_hidden_size" not in message


def test_several_bad_values_are_reported_on_one_line():
    with pytest.raises(ConfigError) as info:
        load_config("tiny", ["train.epochs=ten", "data.num_actors=many"])
    message = str(info.value)
    assert "train.epochs: expected an integer" in message and "data.num_actors: expected an integer" in message
    assert "\n" not in message


def test_yaml_number_forms_are_read_as_numbers():
    cfg = load_config("tiny", ["train.lr_audio=1e-4", "train.epochs=3.0"])   # YAML 1.1: "1e-4" is a string
    assert cfg.train.lr_audio == pytest.approx(1e-4) and isinstance(cfg.train.lr_audio, float)
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)


def test_bad_yaml_file_is_one_config_error(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train: {epochs: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_config(str(path))
    assert "\n" not in str(info.value)
    path.write_text("train:\n  1: 2\n")
    with pytest.raises(ConfigError, match="unknown config key train.1"):
        load_config(str(path))


def test_scoring_section():
    cfg = load_config("mert-v1-95m", ["scoring.batch_size=16"])
    assert isinstance(cfg.scoring, ScoringConfig)
    assert cfg.scoring.use_gpu is True and cfg.scoring.batch_size == 16       # preset, then override
    assert "scoring" in cfg.to_dict() and "score" not in cfg.to_dict()
    assert load_config("tiny").scoring.use_gpu is False


@pytest.mark.parametrize("backend", ["basic-pitch", "transkun"])
def test_every_transcription_backend_can_be_chosen(backend):
    from pipelines.features.transcribe import Transcriber
    assert backend in Transcriber.BACKENDS
    assert load_config("tiny", [f"data.transcriber={backend}"]).data.transcriber == backend


def test_config_offers_exactly_the_transcription_backends():
    from pipelines.features.transcribe import Transcriber
    with pytest.raises(ConfigError) as info:
        load_config("tiny", ["data.transcriber=crepe"])
    message = str(info.value)
    assert message.startswith("data.transcriber: 'crepe' is not one of") and "\n" not in message
    assert all(repr(name) in message for name in Transcriber.BACKENDS)


def test_processor_uses_the_configured_transcriber(monkeypatch):
    from pipelines.features import transcribe
    from pipelines.features.processor import RecordingProcessor

    made = []
    monkeypatch.setattr(transcribe, "Transcriber", lambda backend="basic-pitch", **_: made.append(backend) or backend)
    config = load_config("tiny", ["data.transcriber=transkun", "data.store_cqt=false", "data.augment.enabled=false"])
    assert RecordingProcessor(config).transcriber == "transkun" and made == ["transkun"]


def test_fingerprint_is_stable_and_follows_the_values():
    first, second = load_config("tiny", ["train.epochs=4"]), load_config("tiny", ["train.epochs=4"])
    assert first is not second and first.fingerprint() == second.fingerprint()
    assert load_config("tiny", ["train.epochs=5"]).fingerprint() != first.fingerprint()


@pytest.mark.parametrize("preset", ["tiny", "mert-v1-95m", "mert-v1-330m"])
def test_to_dict_round_trips_and_is_plain_data(preset):
    cfg = load_config(preset)
    plain = cfg.to_dict()
    assert config_from_dict(plain) == cfg
    assert isinstance(plain["model"], dict) and isinstance(plain["model"]["mert_conv_dim"], list)
    assert isinstance(plain["data"]["split_fractions"], list)
    assert yaml.safe_load(yaml.safe_dump(plain)) == plain


def test_sections_check_construction_and_assignment():
    with pytest.raises(ConfigError, match=r"data.augment.p_noise must be a probability in \[0, 1\], got 2.0"):
        AugmentConfig(p_noise=2)
    augment = AugmentConfig()
    with pytest.raises(ConfigError, match="data.augment.p_noise must be a probability"):
        augment.p_noise = 3
    assert augment.p_noise == AugmentConfig().p_noise                      # a failed assignment changes nothing
    cfg = load_config("tiny")
    with pytest.raises(ConfigError, match="train.epochs must be >= 1"):
        cfg.train.epochs = 0
    with pytest.raises(ConfigError, match="unknown config key train.epochz"):
        cfg.train.epochz = 3
