"""Per-item (heteroscedastic) and per-dimension sigma: initial value, bounds, learning, config checks."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from model.builder import build_model
from model.config import ModelConfig
from model.errors import ConfigError
from model.heads import INITIAL_SIGMA, LOG_SIGMA_MAX, LOG_SIGMA_MIN, AssessmentHeads, soft_clamp
from model.losses import MultiTaskLoss
from pipelines.config import load_config
from tests.model.conftest import SCHEMA3, TINY, make_batch

CLEAN_STD, NOISY_STD = 2.0, 25.0          # label noise (score points) of the two kinds of items


def _cqt_model(sigma_head: str = "per_item"):
    torch.manual_seed(0)
    cfg = dataclasses.replace(TINY, audio_encoder="cqt", symbolic_encoder=False, sigma_head=sigma_head)
    return build_model(cfg.dropout_overridden(0.0), SCHEMA3, pretrained=False)


def _noisy_batch(g: torch.Generator, n: int, frames: int = 16):
    """Odd items are louder (log-CQT about -2, not -6) and have noisy labels; fresh noise on every call."""
    noisy = torch.arange(n) % 2 == 1
    cqt = torch.randn(n, frames, 168, generator=g) + torch.where(noisy, -2.0, -6.0)[:, None, None]
    std = torch.where(noisy, NOISY_STD, CLEAN_STD)[:, None]
    labels = (50.0 + std * torch.randn(n, 3, generator=g)).clamp(0.0, 100.0)
    return {"cqt": cqt, "cqt_lengths": torch.full((n,), frames)}, labels, noisy


def test_per_item_sigma_starts_at_the_initial_sigma_for_every_input(tiny_cfg, schema):
    model = build_model(tiny_cfg, schema, pretrained=False).eval()
    with torch.no_grad():
        out = model(make_batch(tiny_cfg, [1.0, 0.6, 0.4], [12, 5, 0]))
    assert out.log_sigma.shape == (3, len(schema)) and out.log_sigma.dtype == torch.float32
    assert torch.allclose(out.sigma, torch.full_like(out.sigma, 100 * INITIAL_SIGMA), atol=1e-4)
    assert "heads.log_sigma" not in dict(model.named_parameters())


def test_per_item_log_sigma_is_bounded_smoothly():
    x = torch.tensor([-1e4, -20.0, math.log(INITIAL_SIGMA), 20.0, 1e4], requires_grad=True)
    y = soft_clamp(x)
    assert bool(((y >= LOG_SIGMA_MIN) & (y <= LOG_SIGMA_MAX)).all())
    assert y[0].item() == pytest.approx(LOG_SIGMA_MIN) and y[-1].item() == pytest.approx(LOG_SIGMA_MAX)
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[2] > 0.5               # near the identity inside the range
    heads = AssessmentHeads(dataclasses.replace(TINY), 3)
    with torch.no_grad():
        heads.log_sigma_head.weight.fill_(100.0)                            # a head gone wild
        _, log_sigma, _ = heads(torch.randn(4, TINY.pooled_size) * 100)
    assert bool(((log_sigma >= LOG_SIGMA_MIN) & (log_sigma <= LOG_SIGMA_MAX)).all())


def test_per_dimension_sigma_is_the_same_for_every_item(tiny_cfg, schema):
    model = build_model(dataclasses.replace(tiny_cfg, sigma_head="per_dimension"), schema, pretrained=False)
    assert dict(model.named_parameters())["heads.log_sigma"].shape == (len(schema),)
    assert not hasattr(model.heads, "log_sigma_head")
    with torch.no_grad():
        model.heads.log_sigma.copy_(torch.linspace(-3.0, -1.0, len(schema)))
        out = model.eval()(make_batch(tiny_cfg, [1.0, 0.6, 0.4], [12, 5, 0]))
    assert torch.equal(out.log_sigma, model.heads.log_sigma[None].expand(3, -1))
    assert torch.equal(out.sigma[0], out.sigma[1]) and torch.equal(out.sigma[0], out.sigma[2])


@pytest.mark.parametrize("weighting", ["uncertainty", "equal"])
def test_per_item_sigma_learns_which_inputs_are_noisy(weighting):
    model = _cqt_model()
    loss_fn = MultiTaskLoss(SCHEMA3, weighting, label_smoothing=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        batch, labels, _ = _noisy_batch(g, 16)
        loss, _ = loss_fn(model(batch), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    batch, _, noisy = _noisy_batch(g, 32)
    with torch.no_grad():
        sigma = model.eval()(batch).sigma                                    # (32, 3) score points
    noisy_sigma, clean_sigma = sigma[noisy].mean(0), sigma[~noisy].mean(0)  # (3,)
    assert bool((noisy_sigma > 3.0 * clean_sigma).all()), (noisy_sigma, clean_sigma)
    assert bool((sigma[noisy].min(0).values > sigma[~noisy].max(0).values).all())   # every noisy item above
    assert bool((noisy_sigma > 0.5 * NOISY_STD).all() & (clean_sigma < 3 * CLEAN_STD).all()), (noisy_sigma,
                                                                                                clean_sigma)


def test_sigma_head_is_a_checked_choice():
    assert ModelConfig().sigma_head == "per_item"
    with pytest.raises(ConfigError, match="sigma_head: 'bad' is not one of 'per_item', 'per_dimension'"):
        ModelConfig(sigma_head="bad")
    assert ModelConfig.from_dict({"sigma_head": "per_dimension"}).to_dict()["sigma_head"] == "per_dimension"


def test_run_config_names_a_bad_sigma_head_on_one_line():
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["model.sigma_head=bad"])
    message = str(info.value)
    assert "model.sigma_head" in message and "'bad'" in message and "\n" not in message
    assert load_config("tiny", ["model.sigma_head=per_dimension"]).model.sigma_head == "per_dimension"
    for preset in ("tiny", "mert-v1-95m", "mert-v1-330m"):
        assert load_config(preset).model.sigma_head == "per_item"
