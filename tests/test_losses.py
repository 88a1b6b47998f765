"""hpa_kit.losses: the seed's focal loss against hand-computed values on literal tensors."""

from __future__ import annotations

import math

import pytest
import torch

from hpa_kit.losses import FocalLoss, focal_loss, per_class

LOGITS = torch.tensor([[0.0, 2.0], [-1.0, 0.5]])
TARGETS = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
# Element by element with sigmoid(0) = 0.5, sigmoid(2) = 0.880797, sigmoid(-1) = 0.268941,
# sigmoid(0.5) = 0.622459 and alpha = 0.25, gamma = 2:
#   (0, 0) positive: 0.25 * 0.5^2 * ln 2                        = 0.0433217
#   (0, 1) negative: 0.75 * 0.880797^2 * -ln(1 - 0.880797)      = 1.23755863
#   (1, 0) positive: 0.25 * (1 - 0.268941)^2 * -ln 0.268941     = 0.17546708
#   (1, 1) negative: 0.75 * 0.622459^2 * -ln(1 - 0.622459)      = 0.2830587
ELEMENTS = [[0.0433217, 1.23755863], [0.17546708, 0.2830587]]


def test_elements_match_hand_computed_values():
    out = focal_loss(LOGITS, TARGETS, alpha=0.25, gamma=2.0, reduction="none")
    assert out.shape == (2, 2)
    assert torch.allclose(out, torch.tensor(ELEMENTS), atol=1e-6)


def test_mean_is_over_all_elements():
    out = focal_loss(LOGITS, TARGETS, alpha=0.25, gamma=2.0)
    assert math.isclose(float(out), 0.434851527, abs_tol=1e-6)
    total = focal_loss(LOGITS, TARGETS, alpha=0.25, gamma=2.0, reduction="sum")
    assert math.isclose(float(total), 4 * 0.434851527, abs_tol=1e-5)


def test_alpha_half_gamma_zero_is_half_of_torch_bce():
    logits = torch.tensor([[3.0, -2.0, 0.1], [-0.7, 0.0, 5.0]])
    targets = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
    ours = FocalLoss(alpha=0.5, gamma=0.0)(logits, targets)
    assert torch.isclose(ours, 0.5 * bce, atol=1e-7)


def test_per_class_alpha_and_gamma():
    # class 0: alpha 0.25, gamma 2; class 1: alpha 0.75, gamma 0 (hand values as above)
    loss = FocalLoss(alpha=[0.25, 0.75], gamma=[2.0, 0.0], reduction="none")
    out = loss(LOGITS, TARGETS)
    expected = torch.tensor([[0.0433217, 0.531732], [0.17546708, 0.24351925]])
    assert torch.allclose(out, expected, atol=1e-6)
    assert math.isclose(
        float(FocalLoss([0.25, 0.75], [2.0, 0.0])(LOGITS, TARGETS)), 0.24851, abs_tol=1e-5
    )


def test_stable_for_large_logits():
    logits = torch.tensor([[100.0, -100.0, 100.0, -100.0]], requires_grad=True)
    targets = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    out = focal_loss(logits, targets, alpha=0.75, gamma=0.0, reduction="none")
    assert torch.all(torch.isfinite(out))
    # confident and right -> 0; confident and wrong -> alpha * 100 or (1 - alpha) * 100
    assert torch.allclose(out.detach(), torch.tensor([[0.0, 75.0, 25.0, 0.0]]), atol=1e-4)
    focal_loss(logits, targets, alpha=0.75, gamma=2.0).backward()
    assert torch.all(torch.isfinite(logits.grad))


def test_half_precision_logits_give_float32():
    out = focal_loss(LOGITS.half(), TARGETS, alpha=0.25, gamma=2.0)
    assert out.dtype == torch.float32
    assert math.isclose(float(out), 0.434851527, abs_tol=2e-3)


def test_soft_targets_mix_linearly():
    x = torch.tensor([[0.3]])
    half = focal_loss(x, torch.tensor([[0.5]]), alpha=0.25, gamma=1.0)
    pos = focal_loss(x, torch.tensor([[1.0]]), alpha=0.25, gamma=1.0)
    neg = focal_loss(x, torch.tensor([[0.0]]), alpha=0.25, gamma=1.0)
    assert torch.isclose(half, 0.5 * (pos + neg))


def test_parameters_follow_the_module_and_are_not_saved():
    loss = FocalLoss(alpha=[0.5] * 19, gamma=1.0)
    assert loss.state_dict() == {}
    assert loss.alpha.shape == (19,)


def test_per_class_helper():
    values = per_class(0.5, {1: 0.25, "11": 0.25})
    assert len(values) == 19 and values[1] == values[11] == 0.25 and values[0] == 0.5
    with pytest.raises(ValueError, match="out of range"):
        per_class(0.5, {19: 0.1})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": 1.5}, "alpha must lie"),
        ({"gamma": -1.0}, "gamma must be"),
        ({"alpha": [[0.5]]}, "1-D"),
        ({"alpha": float("nan")}, "finite"),
        ({"reduction": "max"}, "reduction"),
    ],
)
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FocalLoss(**kwargs)


def test_bad_shapes():
    with pytest.raises(ValueError, match="same shape"):
        focal_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="one value per class"):
        focal_loss(torch.zeros(2, 3), torch.zeros(2, 3), alpha=[0.5, 0.5])
    with pytest.raises(ValueError, match="2-D"):
        focal_loss(torch.zeros(3), torch.zeros(3))
