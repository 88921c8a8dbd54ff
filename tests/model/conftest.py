"""Fixtures of the model tests: tiny configs, generated batches, a tiny MERT-shaped checkpoint on disk."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from transformers import HubertModel

from model.config import ModelConfig
from model.mert import hubert_config
from model.schema import SEED10, Dimension, DimensionSchema

# A tiny model of the full architecture: every branch on, every size small.
TINY = ModelConfig(
    audio_encoder="both",
    mert_hidden_size=32, mert_num_layers=2, mert_num_heads=4, mert_intermediate_size=64,
    mert_conv_dim=(16,) * 7, mert_num_conv_pos_embeddings=16, mert_num_conv_pos_embedding_groups=4,
    freeze_feature_encoder=False,
    cqt_channels=4, cqt_hidden_size=32, cqt_layers=2,
    symbolic_hidden_size=32, symbolic_num_layers=2, symbolic_num_heads=4, symbolic_intermediate_size=64,
    max_notes=64,
    fusion_dim=32, fusion_heads=4,
    lstm_hidden_size=16, lstm_layers=2, pool_heads=4,
    head_shared_size=32, head_hidden_size=16,
)
SCHEMA3 = DimensionSchema("three", (Dimension("a"), Dimension("b"), Dimension("c")))


@pytest.fixture()
def tiny_cfg() -> ModelConfig:
    return dataclasses.replace(TINY)


@pytest.fixture()
def schema() -> DimensionSchema:
    return SEED10


def make_batch(cfg: ModelConfig, audio_s: list[float], n_notes: list[int], seed: int = 0,
               n_dims: int = 10) -> dict[str, torch.Tensor]:
    """A padded batch of random audio, CQT and notes; item i has audio_s[i] seconds and n_notes[i] notes."""
    g = torch.Generator().manual_seed(seed)
    b = len(audio_s)
    samples = [int(s * 24_000) for s in audio_s]
    frames = [int(s * 44_100 / 512) + 1 for s in audio_s]
    n_max = max(max(n_notes), 1)
    audio = torch.zeros(b, max(samples))
    cqt = torch.zeros(b, max(frames), cfg.cqt_bins)
    notes = torch.zeros(b, n_max, 8, dtype=torch.long)
    attrs = torch.zeros(b, n_max, cfg.n_note_attrs)
    times = torch.zeros(b, n_max)
    for i in range(b):
        audio[i, : samples[i]] = 0.3 * torch.randn(samples[i], generator=g)
        cqt[i, : frames[i]] = torch.randn(frames[i], cfg.cqt_bins, generator=g) * 2 - 6
        n = n_notes[i]
        for f, size in enumerate(cfg.octuple_vocab_sizes):
            notes[i, :n, f] = torch.randint(2, size, (n,), generator=g)
        attrs[i, :n] = torch.randn(n, cfg.n_note_attrs, generator=g)
        times[i, :n] = torch.sort(torch.rand(n, generator=g) * audio_s[i]).values
    labels = torch.rand(b, n_dims, generator=g) * 100
    return {"audio": audio, "audio_lengths": torch.tensor(samples), "cqt": cqt, "cqt_lengths": torch.tensor(frames),
            "notes": notes, "note_attrs": attrs, "note_times": times, "note_lengths": torch.tensor(n_notes),
            "labels": labels}


def item(batch: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    """Item i of a padded batch, trimmed to its own lengths (a batch of one)."""
    a, c, n = (int(batch[k][i]) for k in ("audio_lengths", "cqt_lengths", "note_lengths"))
    return {"audio": batch["audio"][i:i + 1, :a], "audio_lengths": batch["audio_lengths"][i:i + 1],
            "cqt": batch["cqt"][i:i + 1, :c], "cqt_lengths": batch["cqt_lengths"][i:i + 1],
            "notes": batch["notes"][i:i + 1, :n], "note_attrs": batch["note_attrs"][i:i + 1, :n],
            "note_times": batch["note_times"][i:i + 1, :n], "note_lengths": batch["note_lengths"][i:i + 1],
            "labels": batch["labels"][i:i + 1]}


def save_tiny_mert(directory: Path, cfg: ModelConfig, seed: int = 0, mert_style: bool = False,
                   legacy_weight_norm: bool = False, **config_overrides) -> HubertModel:
    """Save a randomly initialised MERT-shaped HubertModel; returns it (eval mode).

    mert_style: rewrite config.json as MERT's remote-code config (model_type "mert_model" + its extra
    fields); legacy_weight_norm: store the positional conv as weight_g/weight_v in pytorch_model.bin, as
    checkpoints saved by older transformers (MERT-v1's) do.
    """
    torch.manual_seed(seed)
    model = HubertModel(hubert_config(cfg)).eval()
    model.save_pretrained(directory)
    config = json.loads((directory / "config.json").read_text())
    if mert_style:
        config.update(model_type="mert_model", architectures=["MERTModel"],
                      auto_map={"AutoConfig": "configuration_MERT.MERTConfig", "AutoModel": "modeling_MERT.MERTModel"},
                      feature_extractor_cqt=False, feature_extractor_cqt_bins=336, deepnorm=False,
                      attention_relax=-1.0, sample_rate=24000)
        config.pop("conv_pos_batch_norm", None)
    config.update(config_overrides)
    (directory / "config.json").write_text(json.dumps(config))
    if legacy_weight_norm:
        state = {k.replace("parametrizations.weight.original0", "weight_g")
                  .replace("parametrizations.weight.original1", "weight_v"): v for k, v in model.state_dict().items()}
        for f in directory.glob("*.safetensors"):
            f.unlink()
        torch.save(state, directory / "pytorch_model.bin")
    return model


@pytest.fixture()
def tiny_mert_dir(tmp_path, tiny_cfg) -> Path:
    directory = tmp_path / "tiny-mert"
    save_tiny_mert(directory, tiny_cfg)
    return directory
