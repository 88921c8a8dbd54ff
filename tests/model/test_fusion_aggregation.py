"""Cross-attention fusion (time bias, masks, audio-only gate), BiLSTM + attention pooling, heads."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from model.aggregation import AttentionPooling, TemporalAggregator
from model.fusion import BidirectionalFusion, CrossAttention, RelativeTimeBias
from model.heads import AssessmentHeads
from tests.model.conftest import TINY


def test_time_bias_decays_with_the_offset_and_slopes_span_scales():
    bias = RelativeTimeBias(4)
    slopes = torch.nn.functional.softplus(bias.raw_slope)
    assert torch.allclose(slopes, torch.tensor([8.0, 2.519842, 0.793701, 0.25]), atol=1e-4)
    out = bias(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 0.5, 2.0]]))  # (1, 4, 2, 3)
    assert out.shape == (1, 4, 2, 3)
    assert torch.allclose(out[0, :, 1, 2], -slopes * 1.0) and torch.allclose(out[0, :, 0, 0], torch.zeros(4))


def _inputs(b=2, ta=12, n=7, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, ta, d, generator=g), torch.randn(b, n, d, generator=g),
            torch.linspace(0, 2, ta).expand(b, ta), torch.sort(torch.rand(b, n, generator=g) * 2).values)


def test_padded_keys_do_not_change_the_fusion():
    fusion = BidirectionalFusion(_cfg()).eval()
    audio, score, at, st = _inputs()
    amask = torch.tensor([[True] * 12, [True] * 8 + [False] * 4])
    smask = torch.tensor([[True] * 7, [True] * 3 + [False] * 4])
    has = torch.tensor([True, True])
    with torch.no_grad():
        out = fusion(audio, amask, at, score, smask, st, has)
        audio2, score2 = audio.clone(), score.clone()
        audio2[1, 8:] = 99.0
        score2[1, 3:] = -99.0
        out2 = fusion(audio2, amask, at, score2, smask, st, has)
    assert torch.allclose(out[:, :8], out2[:, :8], atol=1e-6) and torch.allclose(out[0], out2[0], atol=1e-6)


def test_items_without_a_score_take_the_audio_only_path():
    fusion = BidirectionalFusion(_cfg()).eval()
    audio, score, at, st = _inputs()
    amask = torch.ones(2, 12, dtype=torch.bool)
    smask = torch.tensor([[True] * 7, [False] * 7])
    with torch.no_grad():
        out = fusion(audio, amask, at, score, smask, st, torch.tensor([True, False]))
        assert torch.allclose(out[1], fusion.audio_only(audio)[1], atol=1e-6)
        assert not torch.allclose(out[0], fusion.audio_only(audio)[0], atol=1e-3)
        assert torch.isfinite(out).all()


def test_cross_attention_without_time_bias():
    attn = CrossAttention(16, 4, 0.0, time_bias=False).eval()
    x, ctx, tx, tc = _inputs()
    with torch.no_grad():
        out = attn(x, ctx, torch.ones(2, 7, dtype=torch.bool), tx, tc, torch.ones(2))
    assert out.shape == x.shape and attn.time_bias is None


def test_pooling_weights_are_a_distribution_over_valid_steps():
    pool = AttentionPooling(16, 4)
    x = torch.randn(2, 9, 16)
    mask = torch.tensor([[True] * 9, [True] * 4 + [False] * 5])
    pooled, weights = pool(x, mask)
    assert pooled.shape == (2, 16) and weights.shape == (2, 4, 9)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 4))
    assert float(weights[1, :, 4:].detach().sum()) == 0.0
    # head h pools its own slice of the features
    assert torch.allclose(pooled[0, :4], (weights[0, 0, :, None] * x[0, :, :4]).sum(0), atol=1e-6)


@pytest.mark.parametrize("kind", ["lstm_attention", "attention", "mean"])
def test_aggregator_is_padding_invariant_and_sized_by_the_config(kind):
    cfg = dataclasses.replace(_cfg(), aggregation=kind)
    agg = TemporalAggregator(cfg).eval()
    x = torch.randn(2, 10, cfg.fusion_dim)
    with torch.no_grad():
        pooled, w = agg(x, torch.tensor([10, 6]))
        alone, w1 = agg(x[1:, :6], torch.tensor([6]))
    assert pooled.shape == (2, cfg.pooled_size)
    assert torch.allclose(pooled[1], alone[0], atol=1e-5) and torch.allclose(w[1, :, :6], w1[0], atol=1e-6)
    assert torch.allclose(w.sum(-1), torch.ones(2, cfg.pool_heads)) and torch.all(w[1, :, 6:] == 0)


def test_mean_pooling_is_the_mean_and_spread_of_the_steps_with_uniform_weights():
    cfg = dataclasses.replace(_cfg(), aggregation="mean")
    agg = TemporalAggregator(cfg).eval()
    x = torch.randn(1, 5, cfg.fusion_dim)
    with torch.no_grad():
        pooled, w = agg(x, torch.tensor([4]))
        steps = agg.lstm(x, torch.tensor([4]))[0, :4]
    half = cfg.pooled_size // 2
    assert torch.allclose(pooled[0, :half], steps.mean(0), atol=1e-5)
    assert torch.allclose(pooled[0, half:], steps.std(0, unbiased=False), atol=1e-3)
    assert torch.allclose(w[0, 0], torch.tensor([0.25, 0.25, 0.25, 0.25, 0.0]))
    assert not any("lstm" in type(m).__name__.lower() for m in agg.modules() if isinstance(m, torch.nn.LSTM))


def test_heads_one_per_dimension():
    cfg = _cfg()
    heads = AssessmentHeads(cfg, 5)
    logits, log_sigma, task = heads(torch.randn(3, cfg.pooled_size))
    assert logits.shape == log_sigma.shape == task.shape == (3, 5) and log_sigma.dtype == torch.float32
    assert len(heads.dims) == 5 and heads.log_sigma_head.out_features == 5
    first = heads.dims[0].net
    assert (first[0].in_features, first[0].out_features, first[3].out_features) == (
        cfg.head_shared_size, cfg.head_hidden_size, 1)


def _cfg():
    return dataclasses.replace(TINY, fusion_dim=16, fusion_heads=4)
