"""MERT loading (hub id, local directory, MERT-style config.json) and the waveform encoder."""
from __future__ import annotations

import dataclasses
import json
import os
import re

import pytest
import torch
from transformers import HubertModel, PretrainedConfig

import model.mert as mert
from model.builder import build_model
from model.config import MERT_HUB_REVISIONS
from model.errors import CheckpointError, ConfigError
from model.mert import MertEncoder, hubert_config, load_pretrained_hubert, resolve_checkpoint_config
from tests.model.conftest import SCHEMA3, save_tiny_mert


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_local_directory_loads_the_saved_weights(tiny_cfg, tmp_path):
    saved = save_tiny_mert(tmp_path / "m", tiny_cfg, seed=3)
    cfg = dataclasses.replace(tiny_cfg, mert_source=str(tmp_path / "m"))
    model = build_model(cfg, SCHEMA3)
    assert _same_weights(model.mert.hubert, saved)
    fresh = build_model(cfg, SCHEMA3, pretrained=False)                      # pretrained=False ignores the source
    assert not _same_weights(fresh.mert.hubert, saved)


def test_hub_id_takes_the_same_code_path(tiny_cfg, tmp_path, monkeypatch):
    """A hub id reaches the same two transformers calls as a directory; here the 'hub' is a local copy."""
    save_tiny_mert(tmp_path / "hub", tiny_cfg, seed=5)
    calls = []
    real_config, real_load = PretrainedConfig.get_config_dict, HubertModel.from_pretrained

    def fake_config(name, **kw):
        calls.append(("config", name))
        return real_config(str(tmp_path / "hub") if name == "m-a-p/MERT-v1-95M" else name, **kw)

    def fake_load(name, **kw):
        calls.append(("weights", name, type(kw["config"]).__name__))
        return real_load(str(tmp_path / "hub") if name == "m-a-p/MERT-v1-95M" else name, **kw)

    monkeypatch.setattr(mert.PretrainedConfig, "get_config_dict", staticmethod(fake_config))
    monkeypatch.setattr(mert.HubertModel, "from_pretrained", staticmethod(fake_load))
    from_hub, _ = load_pretrained_hubert(dataclasses.replace(tiny_cfg, mert_source="m-a-p/MERT-v1-95M"))
    from_dir, _ = load_pretrained_hubert(dataclasses.replace(tiny_cfg, mert_source=str(tmp_path / "hub")))
    assert calls == [("config", "m-a-p/MERT-v1-95M"), ("weights", "m-a-p/MERT-v1-95M", "HubertConfig"),
                     ("config", str(tmp_path / "hub")), ("weights", str(tmp_path / "hub"), "HubertConfig")]
    assert _same_weights(from_hub, from_dir)


def _record_hub_calls(monkeypatch, hub_dir) -> list:
    """Replace the two transformers loaders: hub ids are served from `hub_dir` (nothing is downloaded) and
    every call is recorded with its revision."""
    calls = []
    real_config, real_load = PretrainedConfig.get_config_dict, HubertModel.from_pretrained

    def local(name):
        return name if os.path.isdir(name) else str(hub_dir)

    def fake_config(name, **kw):
        calls.append(("config", name, kw.get("revision")))
        return real_config(local(name), **{k: v for k, v in kw.items() if k != "revision"})

    def fake_load(name, **kw):
        calls.append(("weights", name, kw.get("revision")))
        return real_load(local(name), **{k: v for k, v in kw.items() if k != "revision"})

    monkeypatch.setattr(mert.PretrainedConfig, "get_config_dict", staticmethod(fake_config))
    monkeypatch.setattr(mert.HubertModel, "from_pretrained", staticmethod(fake_load))
    return calls


@pytest.mark.parametrize("hub_id", sorted(MERT_HUB_REVISIONS))
def test_hub_ids_load_at_the_pinned_revision(tiny_cfg, tmp_path, monkeypatch, hub_id):
    save_tiny_mert(tmp_path / "hub", tiny_cfg, seed=5)
    calls = _record_hub_calls(monkeypatch, tmp_path / "hub")
    load_pretrained_hubert(dataclasses.replace(tiny_cfg, mert_source=hub_id))
    pinned = MERT_HUB_REVISIONS[hub_id]
    assert re.fullmatch(r"[0-9a-f]{40}", pinned)
    assert calls == [("config", hub_id, pinned), ("weights", hub_id, pinned)]


def test_mert_revision_is_passed_to_both_loaders_and_dirs_get_none(tiny_cfg, tmp_path, monkeypatch):
    save_tiny_mert(tmp_path / "hub", tiny_cfg, seed=5)
    calls = _record_hub_calls(monkeypatch, tmp_path / "hub")
    load_pretrained_hubert(dataclasses.replace(tiny_cfg, mert_source="someone/other-mert", mert_revision="v1.2"))
    load_pretrained_hubert(dataclasses.replace(tiny_cfg, mert_source=str(tmp_path / "hub"), mert_revision="v9"))
    assert calls == [("config", "someone/other-mert", "v1.2"), ("weights", "someone/other-mert", "v1.2"),
                     ("config", str(tmp_path / "hub"), None), ("weights", str(tmp_path / "hub"), None)]


def test_an_unpinned_hub_id_without_a_revision_is_refused(tiny_cfg, tmp_path, monkeypatch):
    calls = _record_hub_calls(monkeypatch, tmp_path)
    with pytest.raises(CheckpointError, match="someone/other-mert: a Hugging Face id needs model.mert_revision"):
        load_pretrained_hubert(dataclasses.replace(tiny_cfg, mert_source="someone/other-mert"))
    assert calls == []


def test_mert_presets_pin_their_hub_commit():
    from pipelines.config import load_config

    for preset, hub_id in (("mert-v1-95m", "m-a-p/MERT-v1-95M"), ("mert-v1-330m", "m-a-p/MERT-v1-330M")):
        model_cfg = load_config(preset).model
        assert model_cfg.mert_source == hub_id and model_cfg.mert_revision == MERT_HUB_REVISIONS[hub_id]
    with pytest.raises(ConfigError, match="mert_revision"):
        dataclasses.replace(load_config("tiny").model, mert_revision=" main")


def test_mert_style_checkpoint_with_legacy_weight_norm_loads_exactly(tiny_cfg, tmp_path):
    saved = save_tiny_mert(tmp_path / "m", tiny_cfg, seed=1, mert_style=True, legacy_weight_norm=True)
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "mert_model"
    hubert, resolved = load_pretrained_hubert(dataclasses.replace(tiny_cfg, mert_source=str(tmp_path / "m")))
    x = torch.randn(2, 8000)
    with torch.no_grad():
        assert torch.allclose(hubert.eval()(x).last_hidden_state, saved(x).last_hidden_state, atol=1e-5)
    assert resolved.mert_feat_extract_norm == "group" and not resolved.mert_do_stable_layer_norm


@pytest.mark.parametrize("flag", ["feature_extractor_cqt", "deepnorm"])
def test_non_hubert_mert_flags_are_refused(tiny_cfg, tmp_path, flag):
    save_tiny_mert(tmp_path / "m", tiny_cfg, mert_style=True, **{flag: True})
    with pytest.raises(CheckpointError, match=f"{flag}=true.*not HuBERT's module graph.*expected {flag}=false"):
        load_pretrained_hubert(dataclasses.replace(tiny_cfg, mert_source=str(tmp_path / "m")))


def test_shape_mismatch_names_the_expected_values(tiny_cfg, tmp_path):
    save_tiny_mert(tmp_path / "m", dataclasses.replace(tiny_cfg, mert_num_layers=3))
    with pytest.raises(CheckpointError, match=r"num_hidden_layers=3 \(model.mert_num_layers is 2\)"):
        build_model(dataclasses.replace(tiny_cfg, mert_source=str(tmp_path / "m")), SCHEMA3)


def test_other_model_types_and_missing_sources_fail_clearly(tiny_cfg, tmp_path):
    save_tiny_mert(tmp_path / "w2v", tiny_cfg, model_type="wav2vec2")
    with pytest.raises(CheckpointError, match="model_type 'wav2vec2'; expected a HuBERT-graph checkpoint"):
        load_pretrained_hubert(dataclasses.replace(tiny_cfg, mert_source=str(tmp_path / "w2v")))
    with pytest.raises(CheckpointError, match="no such directory; expected a Hugging Face id"):
        load_pretrained_hubert(dataclasses.replace(tiny_cfg, mert_source=str(tmp_path / "absent")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="cannot read config.json"):
        load_pretrained_hubert(dataclasses.replace(tiny_cfg, mert_source=str(tmp_path / "empty")))
    save_tiny_mert(tmp_path / "noweights", tiny_cfg)
    for f in (tmp_path / "noweights").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(CheckpointError, match="cannot load the weights"):
        load_pretrained_hubert(dataclasses.replace(tiny_cfg, mert_source=str(tmp_path / "noweights")))


def test_checkpoint_missing_weights_is_refused(tiny_cfg, tmp_path):
    saved = save_tiny_mert(tmp_path / "m", tiny_cfg)
    state = {k: v for k, v in saved.state_dict().items() if not k.startswith("encoder.layers.1.")}
    for f in (tmp_path / "m").glob("*.safetensors"):
        f.unlink()
    torch.save(state, tmp_path / "m" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="weights of the HuBERT graph are not in the checkpoint"):
        load_pretrained_hubert(dataclasses.replace(tiny_cfg, mert_source=str(tmp_path / "m")))


def test_large_layout_is_adopted_from_the_checkpoint(tiny_cfg, tmp_path):
    large = dataclasses.replace(tiny_cfg, mert_feat_extract_norm="layer", mert_do_stable_layer_norm=True,
                                mert_conv_bias=True)
    save_tiny_mert(tmp_path / "m", large, mert_style=True, attention_relax=32.0)
    model = build_model(dataclasses.replace(tiny_cfg, mert_source=str(tmp_path / "m")), SCHEMA3)
    assert model.config.mert_feat_extract_norm == "layer"
    assert model.config.mert_do_stable_layer_norm and model.config.mert_conv_bias
    assert model.mert.hubert.config.do_stable_layer_norm


def test_resolve_fills_absent_keys_with_hubert_defaults(tiny_cfg):
    raw = {"model_type": "hubert", **{k: getattr(hubert_config(tiny_cfg), k) for k in mert.SHAPE_FIELDS}}
    assert resolve_checkpoint_config(tiny_cfg, raw, "x") == tiny_cfg


def test_remote_uris_are_refused_with_a_pointer_to_the_fetching_layer(tiny_cfg):
    with pytest.raises(CheckpointError, match="s3://b/m: model/ loads a Hugging Face id or a local directory"):
        load_pretrained_hubert(dataclasses.replace(tiny_cfg, mert_source="s3://b/m"))


# --- the encoder -------------------------------------------------------------------------------------
def test_frames_follow_the_conv_strides(tiny_cfg):
    enc = MertEncoder(tiny_cfg).eval()
    lengths = torch.tensor([24_000, 10_000])
    with torch.no_grad():
        feats, frames = enc(torch.randn(2, 24_000), lengths)
    assert frames.tolist() == [tiny_cfg.mert_frames(24_000), tiny_cfg.mert_frames(10_000)] == [74, 31]
    assert feats.shape == (2, 74, tiny_cfg.mert_hidden_size)
    assert enc.frame_times(2, torch.device("cpu")).tolist() == pytest.approx([199.5 / 24_000, 519.5 / 24_000])


def test_weighted_sum_selects_a_layer(tiny_cfg):
    enc = MertEncoder(tiny_cfg).eval()
    x = torch.randn(1, 8000)
    with torch.no_grad():
        enc.layer_logits.copy_(torch.tensor([-1e4, 1e4, -1e4]))
        feats, _ = enc(x, torch.tensor([8000]))
        hidden = enc.hubert((x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7),
                            output_hidden_states=True).hidden_states
    assert torch.allclose(feats, hidden[1], atol=1e-5)


@pytest.mark.parametrize("layout", ["group", "layer"])
def test_padded_batch_equals_items_alone(tiny_cfg, layout):
    cfg = dataclasses.replace(tiny_cfg, mert_feat_extract_norm=layout, mert_do_stable_layer_norm=layout == "layer")
    enc = MertEncoder(cfg).eval()
    lengths = torch.tensor([12_000, 7_000, 12_000, 4_000])
    audio = torch.randn(4, 12_000)
    with torch.no_grad():
        feats, frames = enc(audio, lengths)
        for i in range(4):
            alone, n = enc(audio[i:i + 1, : lengths[i]], lengths[i:i + 1])
            assert int(n) == int(frames[i])
            assert torch.allclose(feats[i, : frames[i]], alone[0], atol=1e-4), i


def test_freezing(tiny_cfg):
    enc = MertEncoder(dataclasses.replace(tiny_cfg, freeze_feature_encoder=True))
    assert not any(p.requires_grad for p in enc.hubert.feature_extractor.parameters())
    assert all(p.requires_grad for p in enc.hubert.encoder.parameters())
    enc = MertEncoder(dataclasses.replace(tiny_cfg, freeze_audio_backbone=True))
    assert not any(p.requires_grad for p in enc.hubert.parameters())
    assert enc.layer_logits.requires_grad


def test_too_short_audio_is_refused(tiny_cfg):
    with pytest.raises(ValueError, match="MERT needs at least 400"):
        MertEncoder(tiny_cfg)(torch.randn(1, 1000), torch.tensor([300]))
