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
    assert {id(p) for p in model.heads.log_sigma_head.parameters()} <= {id(p) for p in groups["head"]}
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


@pytest.mark.parametrize("encoder", ["mert", "both"])
def test_forward_on_precomputed_mert_features_equals_forward_on_audio(tiny_cfg, schema, encoder):
    model = _model(tiny_cfg, schema, audio_encoder=encoder).eval()
    batch = make_batch(tiny_cfg, AUDIO_S, NOTES, seed=6)
    with torch.no_grad():
        feats, frames = model.encode_mert(batch["audio"], batch["audio_lengths"])
        direct = model(batch)
        cached = model({"mert_features": feats, "mert_lengths": frames,
                        **{k: v for k, v in batch.items() if k not in ("audio", "audio_lengths")}})
    assert feats.dtype == torch.float32 and feats.shape == (3, tiny_cfg.mert_frames(48_000), tiny_cfg.mert_hidden_size)
    assert frames.tolist() == [tiny_cfg.mert_frames(int(s * 24_000)) for s in AUDIO_S]
    for name in ("scores", "sigma", "log_sigma", "attention", "times"):
        assert torch.allclose(getattr(direct, name), getattr(cached, name), atol=1e-5), name
    assert torch.equal(direct.lengths, cached.lengths) and cached.frame_rate_hz == direct.frame_rate_hz
    with pytest.raises(ValueError, match="expected \\(B, T, 32\\) from encode_mert"):
        model({"mert_features": feats[..., :8], "mert_lengths": frames})
    with pytest.raises(ValueError, match="no MERT branch"):
        _model(tiny_cfg, schema, audio_encoder="cqt").encode_mert(batch["audio"], batch["audio_lengths"])


def test_mert_features_of_consecutive_chunks_feed_overlapping_windows(tiny_cfg, schema):
    model = _model(tiny_cfg, schema, audio_encoder="mert", symbolic_encoder=False).eval()
    hop, rate = tiny_cfg.mert_hop_samples, tiny_cfg.mert_frames_per_s
    g = torch.Generator().manual_seed(7)
    audio = 0.3 * torch.randn(int(3.3 * 24_000), generator=g)                  # (S,) a "long" recording
    spans = model.mert_chunk_spans(len(audio), chunk_s=1.0)
    assert spans[0][0] == 0 and spans[-1][1] == len(audio) and all(s % hop == 0 for s, _ in spans)
    with torch.no_grad():
        parts = []
        for start, end in spans:                                             # each sample encoded once
            feats, frames = model.encode_mert(audio[None, start:end], torch.tensor([end - start]))
            assert start // hop == sum(p.shape[0] for p in parts)             # chunks tile the frame grid
            parts.append(feats[0, : int(frames[0])])
        track = torch.cat(parts)                                             # (T, H)
        assert track.shape == (tiny_cfg.mert_frames(len(audio)), tiny_cfg.mert_hidden_size)
        # overlapping 1.5 s windows every 0.75 s, cut from the frames, the last one shorter
        window_s, step_s = 1.5, 0.75
        starts = [k * step_s for k in range(4)]
        windows, lengths = [], []
        for t0 in starts:
            first = round(t0 * rate)
            n = min(tiny_cfg.mert_frames(int(window_s * 24_000)), track.shape[0] - first)
            windows.append(track[first:first + n])
            lengths.append(n)
        feats = torch.nn.utils.rnn.pad_sequence(windows, batch_first=True)  # (W, T, H)
        out = model({"mert_features": feats, "mert_lengths": torch.tensor(lengths)})
        one = model({"mert_features": windows[1][None], "mert_lengths": torch.tensor([lengths[1]])})
    assert lengths[:3] == [tiny_cfg.mert_frames(36_000)] * 3 and 0 < lengths[3] < lengths[0]
    assert out.scores.shape == out.sigma.shape == (4, len(schema)) and out.lengths.tolist() == lengths
    assert torch.isfinite(out.scores).all() and torch.allclose(out.attention.sum(1), torch.ones(4))
    assert out.times[0, 0].item() == pytest.approx((tiny_cfg.mert_receptive_field_samples - 1) / 2 / 24_000)
    assert torch.allclose(out.scores[1], one.scores[0], atol=1e-5)          # padding changes nothing


def test_mert_chunk_spans_join_a_tail_too_short_for_a_frame(tiny_cfg, schema):
    model = _model(tiny_cfg, schema, audio_encoder="mert")
    field, hop = tiny_cfg.mert_receptive_field_samples, tiny_cfg.mert_hop_samples
    spans = model.mert_chunk_spans(2 * 24_000 + 100, chunk_s=1.0)            # a 100-sample tail
    assert spans == [(0, 24_000 + field - hop), (24_000, 2 * 24_000 + 100)]
    assert model.mert_chunk_spans(1000, chunk_s=1.0) == [(0, 1000)]
    with pytest.raises(ValueError, match="at least 400"):
        model.mert_chunk_spans(300, chunk_s=1.0)
