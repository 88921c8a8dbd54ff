"""The CQT and symbolic encoders: shapes, padding invariance, input checks, pretrained symbolic weights."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from model.builder import build_model
from model.checkpoint import save_model
from model.cqt import CqtEncoder
from model.errors import CheckpointError
from model.symbolic import SymbolicEncoder, load_symbolic_weights, save_symbolic_encoder
from tests.model.conftest import SCHEMA3, make_batch


# --- CQT ---------------------------------------------------------------------------------------------
def test_cqt_shapes_and_padding_invariance(tiny_cfg):
    enc = CqtEncoder(tiny_cfg).eval()
    lengths = torch.tensor([50, 31, 7])
    cqt = torch.randn(3, 50, 168) * 2 - 6
    cqt[1, 31:] = 123.0                                                      # padding content must not matter
    with torch.no_grad():
        feats, out_lengths = enc(cqt, lengths)
        assert feats.shape == (3, 50, tiny_cfg.cqt_hidden_size) and out_lengths.tolist() == [50, 31, 7]
        for i in range(3):
            alone, _ = enc(cqt[i:i + 1, : lengths[i]], lengths[i:i + 1])
            assert torch.allclose(feats[i, : lengths[i]], alone[0], atol=1e-5), i
    assert enc.frame_times(3, torch.device("cpu")).tolist() == pytest.approx([0.0, 512 / 44_100, 1024 / 44_100])


def test_cqt_bins_are_checked(tiny_cfg):
    with pytest.raises(ValueError, match="cqt has 84 bins; the model expects 168"):
        CqtEncoder(tiny_cfg)(torch.zeros(1, 10, 84), torch.tensor([10]))


# --- symbolic ----------------------------------------------------------------------------------------
def _notes(cfg, lengths, seed=0):
    batch = make_batch(cfg, [1.0] * len(lengths), lengths, seed=seed)
    return batch["notes"], batch["note_attrs"], batch["note_lengths"]


def test_symbolic_shapes_and_padding_invariance(tiny_cfg):
    enc = SymbolicEncoder(tiny_cfg).eval()
    notes, attrs, lengths = _notes(tiny_cfg, [17, 5, 0])
    with torch.no_grad():
        out = enc(notes, attrs, lengths)
        assert out.shape == (3, 17, tiny_cfg.symbolic_hidden_size) and torch.isfinite(out).all()
        for i in range(2):
            n = int(lengths[i])
            alone = enc(notes[i:i + 1, :n], attrs[i:i + 1, :n], lengths[i:i + 1])
            assert torch.allclose(out[i, :n], alone[0], atol=1e-5), i


def test_symbolic_attributes_change_the_encoding(tiny_cfg):
    enc = SymbolicEncoder(tiny_cfg).eval()
    notes, attrs, lengths = _notes(tiny_cfg, [6])
    with torch.no_grad():
        assert not torch.allclose(enc(notes, attrs, lengths), enc(notes, torch.zeros_like(attrs), lengths))
        enc(notes, None, lengths)                                            # attributes are optional


def test_symbolic_input_checks(tiny_cfg):
    enc = SymbolicEncoder(tiny_cfg)
    notes, attrs, lengths = _notes(tiny_cfg, [4])
    bad = notes.clone()
    bad[0, 0, 3] = tiny_cfg.octuple_vocab_sizes[3]
    with pytest.raises(ValueError, match="out of range in field 3"):
        enc(bad, attrs, lengths)
    with pytest.raises(ValueError, match="note_attrs has 3 features; the model expects 10"):
        enc(notes, attrs[..., :3], lengths)
    long = torch.ones(1, tiny_cfg.max_notes + 1, 8, dtype=torch.long)
    with pytest.raises(ValueError, match="exceed model.max_notes=64"):
        enc(long, None, torch.tensor([tiny_cfg.max_notes + 1]))


def test_symbolic_pretrained_weights_from_a_directory_or_a_model_checkpoint(tiny_cfg, tmp_path):
    torch.manual_seed(1)
    source = SymbolicEncoder(tiny_cfg)
    save_symbolic_encoder(source, str(tmp_path / "sym"))
    model = build_model(dataclasses.replace(tiny_cfg, symbolic_source=str(tmp_path / "sym")), SCHEMA3)
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), model.symbolic.state_dict().values()))
    save_model(str(tmp_path / "ckpt"), model, {}, SCHEMA3, {})
    target = SymbolicEncoder(tiny_cfg)
    load_symbolic_weights(target, str(tmp_path / "ckpt"))
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))


def test_symbolic_weights_that_do_not_fit_are_refused(tiny_cfg, tmp_path):
    save_symbolic_encoder(SymbolicEncoder(dataclasses.replace(tiny_cfg, max_notes=32)), str(tmp_path / "sym"))
    expected = r"shape mismatch: .*position_embeddings.* \(32, 32\) \(model: \(64, 32\)\)"
    with pytest.raises(CheckpointError, match=expected):
        load_symbolic_weights(SymbolicEncoder(tiny_cfg), str(tmp_path / "sym"))
    with pytest.raises(CheckpointError, match="no such file or directory; expected a directory holding"):
        load_symbolic_weights(SymbolicEncoder(tiny_cfg), str(tmp_path / "absent"))
