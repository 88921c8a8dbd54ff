"""ModelConfig: agreement with pipelines.constants, validation, presets, and the published MERT-95M shapes."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from model import config as model_config
from model.builder import build_model
from model.config import ModelConfig
from model.errors import ConfigError
from model.mert import hubert_config
from pipelines import constants as C
from pipelines.config import load_config


def test_constants_agree_with_the_pipelines():
    assert model_config.DEFAULT_OCTUPLE_VOCAB_SIZES == C.OCTUPLE_VOCAB_SIZES
    assert model_config.DEFAULT_N_NOTE_ATTRS == C.N_PERF_ATTRS
    assert model_config.OCTUPLE_N_SPECIAL == C.OCTUPLE_N_SPECIAL
    assert model_config.OCTUPLE_TICKS_PER_QUARTER == C.OCTUPLE_TICKS_PER_QUARTER
    assert model_config.OCTUPLE_TS_DENOMINATORS == C.OCTUPLE_TS_DENOMINATORS
    assert model_config.MERT_SAMPLE_RATE_HZ == C.MERT_SAMPLE_RATE_HZ
    assert model_config.CQT_FRAMES_PER_S == C.CQT_FRAMES_PER_S
    assert ModelConfig().cqt_bins == C.CQT_N_BINS
    assert ModelConfig().mert_hop_samples == C.MERT_HOP_SAMPLES
    assert ModelConfig().mert_frames_per_s == C.MERT_FRAMES_PER_S == 75.0


def test_derived_sizes():
    cfg = ModelConfig()
    assert cfg.pooled_size == 512 and cfg.mert_receptive_field_samples == 400
    # the conv-stack formula agrees with transformers' own
    from transformers import HubertModel
    lengths = torch.tensor([400, 24_000, 240_000, 720_000])
    expected = HubertModel(hubert_config(dataclasses.replace(cfg, mert_num_layers=1, mert_hidden_size=16,
                                                             mert_num_heads=1, mert_intermediate_size=8,
                                                             mert_conv_dim=(4,) * 7,
                                                             mert_num_conv_pos_embedding_groups=1))
                           )._get_feat_extract_output_lengths(lengths)
    assert [cfg.mert_frames(int(n)) for n in lengths] == expected.tolist() == [1, 74, 749, 2249]


@pytest.mark.parametrize("change, message", [
    ({"fusion_heads": 7}, "fusion_dim 256 is not divisible by fusion_heads 7"),
    ({"mert_conv_stride": [5, 2]}, "must have the same length"),
    ({"cqt_bins": 170}, "cqt_bins must be divisible by 4"),
    ({"symbolic_dropout": 1.0}, r"symbolic_dropout must be in \[0, 1\)"),
    ({"audio_encoder": "none", "symbolic_encoder": False}, "the model would have no input"),
    ({"mert_feat_extract_norm": "batch"}, "mert_feat_extract_norm: 'batch' is not one of 'group', 'layer'"),
])
def test_invalid_configs_fail_with_one_line(change, message):
    with pytest.raises(ConfigError, match=message) as info:
        ModelConfig.from_dict(change)
    assert "\n" not in str(info.value)


def test_construction_validates():
    with pytest.raises(ConfigError, match="not divisible by fusion_heads 7"):
        ModelConfig(fusion_heads=7)
    with pytest.raises(ConfigError, match="not divisible by fusion_heads 5"):
        dataclasses.replace(ModelConfig(), fusion_heads=5)


def test_from_dict_rejects_unknown_keys_and_names_the_known_ones():
    with pytest.raises(ConfigError) as info:
        ModelConfig.from_dict({"fusion_dim": 64, "xyz": 1})
    message = str(info.value)
    assert message.startswith("unknown config key model.xyz (known: ")
    assert "fusion_dim" in message and "audio_encoder" in message and "\n" not in message
    with pytest.raises(ConfigError, match="model: expected a mapping"):
        ModelConfig.from_dict([("fusion_dim", 64)])


def test_dict_round_trip_keeps_tuples():
    cfg = ModelConfig(mert_conv_dim=(8,) * 7, fusion_dim=64, mert_source="m-a-p/MERT-v1-95M")
    plain = cfg.to_dict()
    assert plain["mert_conv_dim"] == [8] * 7 and plain["fusion_dim"] == 64
    again = ModelConfig.from_dict(json.loads(json.dumps(plain)))
    assert again == cfg and isinstance(again.mert_conv_dim, tuple)


def test_dropout_override_copies():
    cfg = ModelConfig().dropout_overridden(0.3)
    assert (cfg.fusion_dropout, cfg.lstm_dropout, cfg.head_dropout, cfg.cqt_dropout, cfg.symbolic_dropout) == (0.3,) * 5
    assert ModelConfig().fusion_dropout == 0.1


def test_presets_resolve():
    tiny, base, large = (load_config(p).model for p in ("tiny", "mert-v1-95m", "mert-v1-330m"))
    assert tiny.audio_encoder == "cqt" and tiny.mert_source is None
    assert (base.mert_source, base.mert_num_layers, base.mert_hidden_size) == ("m-a-p/MERT-v1-95M", 12, 768)
    assert (large.mert_source, large.mert_num_layers, large.mert_hidden_size) == ("m-a-p/MERT-v1-330M", 24, 1024)
    assert large.mert_feat_extract_norm == "layer" and large.mert_do_stable_layer_norm


def test_mert_95m_preset_builds_on_cpu_with_the_published_shapes(capsys):
    c = load_config("mert-v1-95m")
    model = build_model(c.model, c.schema(), pretrained=False).eval()
    hubert = model.mert.hubert.config
    assert (hubert.num_hidden_layers, hubert.hidden_size, hubert.num_attention_heads) == (12, 768, 12)
    assert model.mert.layer_logits.numel() == 13
    counts = model.parameter_counts()
    assert 94.0e6 < counts["mert"]["total"] < 95.0e6                         # HuBERT-base: 94.4M
    assert counts["mert"]["total"] - counts["mert"]["trainable"] == sum(
        p.numel() for p in model.mert.hubert.feature_extractor.parameters())  # conv front end frozen
    with torch.no_grad():
        feats, frames = model.mert(torch.randn(1, 24_000), torch.tensor([24_000]))
    assert feats.shape == (1, 74, 768) and model.mert.frame_rate_hz == 75.0
    with capsys.disabled():
        print("\nmert-v1-95m parameters per part (random init):",
              {k: f"{v['total'] / 1e6:.2f}M" for k, v in counts.items()})


@pytest.mark.slow
def test_mert_330m_preset_builds_on_cpu():
    c = load_config("mert-v1-330m")
    model = build_model(c.model, c.schema(), pretrained=False)
    hubert = model.mert.hubert.config
    assert (hubert.num_hidden_layers, hubert.hidden_size, hubert.num_attention_heads) == (24, 1024, 16)
    assert hubert.do_stable_layer_norm and model.mert.layer_logits.numel() == 25
    assert 310e6 < model.parameter_counts()["mert"]["total"] < 320e6       # HuBERT-large-sized
