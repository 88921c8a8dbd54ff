"""The assembled model: shapes from the config, padding invariance, audio-only mode, gradients, precision."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from model.assessor import PianoAssessor, resample_frames
from model.builder import build_model
from model.hf import is_activation_checkpointing
from model.losses import MultiTaskLoss
from tests.model.conftest import item, make_batch

AUDIO_S = [2.0, 1.3, 0.7]
NOTES = [24, 9, 0]


def _model(cfg, schema, **changes):
    torch.manual_seed(0)
    return build_model(dataclasses.replace(cfg, **changes), schema, pretrained=False)


@pytest.mark.parametrize("encoder", ["both", "mert", "cqt", "none"])
def test_output_shapes_follow_the_config(tiny_cfg, schema, encoder):
    model = _model(tiny_cfg, schema, audio_encoder=encoder).eval()
    notes = [24, 9, 5] if encoder == "none" else NOTES
    batch = make_batch(tiny_cfg, AUDIO_S, notes)
    with torch.no_grad():
        out = model(batch)
    b, d = len(AUDIO_S), len(schema)
    expected_t = {"both": tiny_cfg.mert_frames(48_000), "mert": tiny_cfg.mert_frames(48_000),
                  "cqt": int(2.0 * 44_100 / 512) + 1, "none": max(notes)}[encoder]
    expected_rate = {"both": 75.0, "mert": 75.0, "cqt": 44_100 / 512, "none": None}[encoder]
    assert out.scores.shape == out.sigma.shape == out.log_sigma.shape == (b, d)
    assert out.attention.shape == out.times.shape == (b, expected_t)
    assert out.head_attention.shape == (b, tiny_cfg.pool_heads, expected_t)
    assert out.pooled.shape == (b, tiny_cfg.pooled_size)
    assert out.frame_rate_hz == expected_rate
    assert out.audio_only.tolist() == ([False, False, False] if encoder == "none" else [False, False, True])
    assert bool(((out.scores > 0) & (out.scores < 100)).all())
    assert torch.allclose(out.sigma, 100 * torch.exp(out.log_sigma))
    valid = torch.arange(expected_t)[None] < out.lengths[:, None]
    assert torch.allclose(out.attention.sum(1), torch.ones(b))
    assert float(out.attention[~valid].abs().sum()) == 0.0


@pytest.mark.parametrize("encoder, pool", [("both", 1), ("none", 1), ("cqt", 4), ("both", 3)])
def test_padded_batch_equals_items_run_one_at_a_time(tiny_cfg, schema, encoder, pool):
    model = _model(tiny_cfg, schema, audio_encoder=encoder, audio_pool_frames=pool).eval()
    notes = [24, 9, 5] if encoder == "none" else NOTES
    batch = make_batch(tiny_cfg, AUDIO_S, notes, seed=1)
    with torch.no_grad():
        out = model(batch)
        for i in range(len(AUDIO_S)):
            alone = model(item(batch, i))
            n = int(out.lengths[i])
            assert int(alone.lengths[0]) == n
            assert torch.allclose(out.scores[i], alone.scores[0], atol=1e-4), i
            assert torch.allclose(out.attention[i, :n], alone.attention[0], atol=1e-5), i


def test_audio_only_item_equals_the_item_without_a_score(tiny_cfg, schema):
    model = _model(tiny_cfg, schema).eval()
    batch = make_batch(tiny_cfg, [1.0, 1.0], [12, 0], seed=2)
    no_score = {k: v for k, v in batch.items() if not k.startswith("note")}
    with torch.no_grad():
        mixed = model(batch)
        bare = model(no_score)
        symbolic_off = dataclasses.replace(tiny_cfg, symbolic_encoder=False)
    assert mixed.audio_only.tolist() == [False, True] and bare.audio_only.tolist() == [True, True]
    assert torch.allclose(mixed.scores[1], bare.scores[1], atol=1e-5)
    assert not torch.allclose(mixed.scores[0], bare.scores[0], atol=1e-3)    # the score does change item 0
    audio_model = _model(symbolic_off, schema).eval()
    assert audio_model.symbolic is None and audio_model.fusion is None
    with torch.no_grad():
        assert audio_model(batch).audio_only.all()


def test_gradients_reach_every_trainable_part(tiny_cfg, schema):
    model = _model(tiny_cfg, schema)                                         # training mode
    batch = make_batch(tiny_cfg, [1.0, 0.8], [10, 6], seed=3)
    loss, _ = MultiTaskLoss(schema)(model(batch), batch["labels"])
    loss.backward()
    groups = model.parameter_groups()
    names = {id(p): n for n, p in model.named_parameters()}
    dead = [names[id(p)] for ps in groups.values() for p in ps if p.grad is None or float(p.grad.abs().sum()) == 0.0]
    assert dead == []
    assert all(groups[g] for g in ("audio", "symbolic", "head"))


def test_parameter_groups_partition_the_trainable_parameters(tiny_cfg, schema):
    model = _model(tiny_cfg, schema, freeze_feature_encoder=True)
    groups = model.parameter_groups()
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    assert not any(id(p) in set(ids) for p in model.mert.hubert.feature_extractor.parameters())
    assert id(model.heads.log_sigma) in {id(p) for p in groups["head"]}
    assert id(model.mert.layer_logits) in {id(p) for p in groups["head"]}
    counts = model.parameter_counts()
    assert counts["all"]["trainable"] == sum(p.numel() for ps in groups.values() for p in ps)


@pytest.mark.parametrize("frozen_front_end", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(tiny_cfg, schema, frozen_front_end):
    batch = make_batch(tiny_cfg, [1.0, 1.0], [10, 6], seed=4)
    grads = []
    for checkpointing in (False, True):
        model = _model(tiny_cfg, schema, gradient_checkpointing=checkpointing, freeze_feature_encoder=frozen_front_end)
        assert is_activation_checkpointing(model.mert.hubert) == checkpointing
        assert is_activation_checkpointing(model.symbolic.bert) == checkpointing
        torch.manual_seed(11)
        loss, _ = MultiTaskLoss(schema)(model(batch), batch["labels"])
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-5), name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_forward_backward(tiny_cfg, schema, dtype):
    model = _model(tiny_cfg, schema)
    batch = make_batch(tiny_cfg, [0.5, 0.3], [10, 0], seed=5)
    with torch.autocast("cpu", dtype=dtype):
        out = model(batch)
        loss, _ = MultiTaskLoss(schema)(out, batch["labels"])
    assert out.scores.dtype == out.log_sigma.dtype == loss.dtype == torch.float32
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_dropout_override_reaches_every_owned_dropout(tiny_cfg, schema):
    model = build_model(tiny_cfg, schema, dropout=0.37, pretrained=False)
    owned = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Dropout) and not n.startswith("mert.hubert")]
    assert owned and all(m.p == 0.37 for m in owned)
    assert model.aggregator.lstm.lstm.dropout == 0.37
    assert model.symbolic.bert.config.attention_probs_dropout_prob == 0.37
    assert model.fusion.audio_from_score.attn_dropout == 0.37


def test_missing_batch_keys_are_named(tiny_cfg, schema):
    model = _model(tiny_cfg, schema, audio_encoder="mert").eval()
    batch = make_batch(tiny_cfg, [1.0], [4])
    with pytest.raises(KeyError, match="lacks 'audio'"):
        model({k: v for k, v in batch.items() if k != "audio"})
    with pytest.raises(KeyError, match="note_times"):
        model({k: v for k, v in batch.items() if k != "note_times"})
    cqt_only = _model(tiny_cfg, schema, audio_encoder="cqt").eval()
    with torch.no_grad():
        cqt_only({k: v for k, v in batch.items() if k not in ("audio", "audio_lengths")})   # needs no audio


def test_pooling_shortens_the_time_axis_by_k(tiny_cfg, schema):
    batch = make_batch(tiny_cfg, AUDIO_S, NOTES, seed=2)
    with torch.no_grad():
        full = _model(tiny_cfg, schema, audio_encoder="cqt").eval()(batch)
        pooled = _model(tiny_cfg, schema, audio_encoder="cqt", audio_pool_frames=4).eval()(batch)
    assert torch.equal(pooled.lengths, torch.div(full.lengths + 3, 4, rounding_mode="floor"))
    assert pooled.frame_rate_hz == pytest.approx(full.frame_rate_hz / 4)
    # a pooled frame's time is the mean time of the frames it covers
    assert torch.allclose(pooled.times[0, 1], full.times[0, 4:8].mean(), atol=1e-5)


def test_resample_frames_interpolates_and_clamps_per_item():
    x = torch.arange(10.0).view(1, 10, 1).expand(2, 10, 1).contiguous()     # frame k has value k
    times = torch.tensor([[0.0, 0.25, 1.0, 9.0]] * 2)
    out = resample_frames(x, torch.tensor([10, 3]), 1.0, times)[..., 0]
    assert out.tolist() == [[0.0, 0.25, 1.0, 9.0], [0.0, 0.25, 1.0, 2.0]]


def test_model_is_a_plain_module(tiny_cfg, schema):
    model = PianoAssessor(tiny_cfg, schema)
    assert model.training and model.config == tiny_cfg and model.schema is schema
