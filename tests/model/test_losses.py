"""MultiTaskLoss against hand-computed Kendall & Gal values; masking, smoothing, equal weighting."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from model.losses import MultiTaskLoss
from model.schema import SEED10

NAN = float("nan")


def _output(scores, log_sigma):
    scores = torch.tensor(scores, requires_grad=True)
    log_sigma = torch.tensor(log_sigma, requires_grad=True)
    return SimpleNamespace(scores=scores, log_sigma=log_sigma)


def test_uncertainty_loss_matches_the_formula_by_hand():
    # two items, two dimensions; item 1 has no label for dimension 1
    out = _output([[60.0, 20.0], [40.0, 90.0]], [[0.5, -1.0], [0.5, -1.0]])
    labels = torch.tensor([[50.0, 30.0], [70.0, NAN]])
    loss, per_dim = MultiTaskLoss(2, "uncertainty", label_smoothing=0.0)(out, labels)
    # dimension 0: errors 0.1 and -0.3 on the 0..1 scale, s = 0.5
    d0 = 0.5 * math.exp(-1.0) * (0.01 + 0.09) / 2 + 0.5
    # dimension 1: one error of -0.1, s = -1
    d1 = 0.5 * math.exp(2.0) * 0.01 - 1.0
    assert loss.item() == pytest.approx(d0 + d1, rel=1e-6)
    assert float(per_dim["dim0"]) == pytest.approx(0.05) and float(per_dim["dim1"]) == pytest.approx(0.01)


def test_masked_labels_are_ignored_in_value_and_gradient():
    out = _output([[60.0, 20.0], [40.0, 90.0]], [[0.0, 0.0], [0.0, 0.0]])
    labels = torch.tensor([[50.0, 30.0], [70.0, NAN]])
    loss, _ = MultiTaskLoss(2)(out, labels)
    loss.backward()
    assert torch.isfinite(out.scores.grad).all() and float(out.scores.grad[1, 1]) == 0.0
    other = _output([[60.0, 20.0], [40.0, 5.0]], [[0.0, 0.0], [0.0, 0.0]])   # masked prediction changed
    assert MultiTaskLoss(2)(other, labels)[0].item() == pytest.approx(loss.item())


def test_a_dimension_without_labels_adds_nothing():
    out = _output([[60.0, 20.0]], [[0.3, 0.7]])
    loss, per_dim = MultiTaskLoss(2, label_smoothing=0.0)(out, torch.tensor([[50.0, NAN]]))
    assert loss.item() == pytest.approx(0.5 * math.exp(-0.6) * 0.01 + 0.3, rel=1e-6)
    assert list(per_dim) == ["dim0"]


def test_label_smoothing_pulls_targets_toward_the_training_mean():
    loss_fn = MultiTaskLoss(1, "equal", label_smoothing=0.2)
    loss_fn.set_target_mean(torch.tensor([40.0]))
    out = _output([[56.0]], [[0.0]])
    # target = 0.8 * 0.60 + 0.2 * 0.40 = 0.56: a perfect prediction
    assert loss_fn(out, torch.tensor([[60.0]]))[0].item() == pytest.approx(0.0, abs=1e-10)
    loss_fn.set_target_mean(torch.tensor([NAN]))                            # unknown mean -> mid-scale
    assert float(loss_fn.target_mean[0]) == 0.5
    with pytest.raises(ValueError, match="3 values; the loss has 1"):
        loss_fn.set_target_mean(torch.zeros(3))


def test_equal_weighting_weights_the_scores_equally_and_still_trains_sigma():
    labels = torch.tensor([[50.0, 30.0], [70.0, NAN]])
    scores = [[60.0, 20.0], [40.0, 90.0]]
    out = _output(scores, [[0.5, -1.0], [0.2, -1.0]])
    loss, _ = MultiTaskLoss(2, "equal", label_smoothing=0.0)(out, labels)
    # 0.5 * MSE per dimension plus the Gaussian NLL with the prediction held fixed
    d0 = 0.5 * (0.01 + 0.09) / 2 + (0.5 * math.exp(-1.0) * 0.01 + 0.5 + 0.5 * math.exp(-0.4) * 0.09 + 0.2) / 2
    d1 = 0.5 * 0.01 + 0.5 * math.exp(2.0) * 0.01 - 1.0
    assert loss.item() == pytest.approx(d0 + d1, rel=1e-6)
    loss.backward()
    # the scores' gradient is that of the plain squared error, whatever sigma is
    plain = _output(scores, [[0.0, 0.0], [0.0, 0.0]])
    (0.5 * ((plain.scores / 100 - torch.nan_to_num(labels / 100, nan=0.0)) ** 2
            * torch.tensor([[0.5, 1.0], [0.5, 0.0]])).sum()).backward()
    assert torch.allclose(out.scores.grad, plain.scores.grad)
    # sigma gets the NLL's gradient: d/ds [0.5 exp(-2s) e^2 + s] = 1 - exp(-2s) e^2, averaged over the items
    assert float(out.log_sigma.grad[0, 0]) == pytest.approx((1 - math.exp(-1.0) * 0.01) / 2, rel=1e-5)
    assert float(out.log_sigma.grad[1, 1]) == 0.0                          # no label there


@pytest.mark.parametrize("weighting", ["uncertainty", "equal"])
def test_every_output_reaches_the_loss_so_ddp_finds_its_gradient(weighting):
    """DDP (find_unused_parameters) waits for a gradient of every parameter an output depends on: an output
    the loss leaves out (the per-item model's task sigma under equal weighting) made training fail."""
    out = _output([[60.0, 20.0]], [[0.5, -1.0]])
    out.task_log_sigma = torch.tensor([0.1, 0.2], requires_grad=True)
    loss, _ = MultiTaskLoss(2, weighting, label_smoothing=0.0)(out, torch.tensor([[50.0, 30.0]]))
    loss.backward()
    assert out.task_log_sigma.grad is not None and out.scores.grad is not None


def test_per_item_log_sigma_weights_each_item_by_its_own_sigma():
    labels = torch.tensor([[50.0], [50.0]])
    out = _output([[60.0], [60.0]], [[-2.0], [0.0]])                       # same error, different sigma
    loss, _ = MultiTaskLoss(1, "uncertainty", label_smoothing=0.0)(out, labels)
    expected = (0.5 * math.exp(4.0) * 0.01 - 2.0 + 0.5 * 0.01) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    grad = out.scores.grad[:, 0]                                            # the surer item is pulled harder
    assert float(grad[0]) == pytest.approx(math.exp(4.0) * float(grad[1]), rel=1e-5)


def test_no_labels_gives_a_zero_loss_with_a_graph():
    out = _output([[60.0, 20.0]], [[0.1, 0.2]])
    loss, per_dim = MultiTaskLoss(2)(out, torch.tensor([[NAN, NAN]]))
    assert loss.item() == 0.0 and per_dim == {} and loss.requires_grad
    loss.backward()
    assert float(out.scores.grad.abs().sum()) == 0.0


def test_schema_names_and_argument_checks():
    loss_fn = MultiTaskLoss(SEED10)
    assert loss_fn.names == SEED10.names
    with pytest.raises(ValueError, match="weighting"):
        MultiTaskLoss(2, "sum")
    with pytest.raises(ValueError, match="labels have shape"):
        MultiTaskLoss(2)(_output([[1.0, 2.0]], [[0.0, 0.0]]), torch.zeros(1, 3))


def test_half_precision_inputs_are_computed_in_fp32():
    out = SimpleNamespace(scores=torch.tensor([[60.0, 20.0]], dtype=torch.float16),
                          log_sigma=torch.tensor([[0.1, 0.2]], dtype=torch.float16))
    loss, _ = MultiTaskLoss(2)(out, torch.tensor([[50.0, 25.0]]))
    assert loss.dtype == torch.float32


def test_with_task_weights_the_per_item_sigma_cannot_discount_an_item():
    """per_item sigma (the default): the score heads are weighted by the per-dimension task sigma; an
    item's own sigma changes neither their gradient nor lets the loss fall by raising it on a bad fit."""
    labels = torch.tensor([[80.0], [20.0]])
    task = torch.full((2, 1), math.log(0.2))
    grads = []
    for item_sigma in (0.05, 0.9):
        scores = torch.tensor([[50.0], [50.0]], requires_grad=True)
        log_sigma = torch.full((2, 1), math.log(item_sigma), requires_grad=True)
        out = SimpleNamespace(scores=scores, log_sigma=log_sigma, task_log_sigma=task)
        loss, _ = MultiTaskLoss(1, label_smoothing=0.0)(out, labels)
        loss.backward()
        grads.append(scores.grad.clone())
        assert log_sigma.grad is not None and torch.all(log_sigma.grad != 0)   # sigma is still trained
    torch.testing.assert_close(grads[0], grads[1])
    # the value: task-weighted squared error + the per-item likelihood of the (detached) errors
    err = ((torch.tensor([[50.0], [50.0]]) - labels) / 100) ** 2
    s = math.log(0.9)
    expected = (0.5 * err / 0.2 ** 2 + math.log(0.2) + 0.5 * math.exp(-2 * s) * err + s).mean()
    out = SimpleNamespace(scores=torch.tensor([[50.0], [50.0]]), log_sigma=torch.full((2, 1), s), task_log_sigma=task)
    torch.testing.assert_close(MultiTaskLoss(1, label_smoothing=0.0)(out, labels)[0], expected.float())
