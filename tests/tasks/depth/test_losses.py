import math

import pytest
import torch

from tasks.depth.losses import (
    BerHuLoss,
    L1Loss,
    ScaleShiftInvariantLoss,
    SILogLoss,
    create_loss,
    scale_and_shift,
    valid_mask,
)

NAN, INF = float("nan"), float("inf")


def _t(values):
    return torch.tensor(values, dtype=torch.float64).view(1, 1, 1, -1)


def test_valid_mask_rejects_zero_nan_inf_negative_and_out_of_range():
    target = torch.tensor([0.0, NAN, INF, -1.0, 0.5, 10.0, 10.5])
    assert valid_mask(target, 0.0, 10.0).tolist() == [False, False, False, False, True, True, False]


def test_l1_hand_computed_ignores_invalid():
    pred, target = _t([1.0, 2.0, 3.0, 4.0, 7.0]), _t([2.0, 0.0, NAN, 5.0, -3.0])
    assert L1Loss()(pred, target).item() == pytest.approx(1.0)


def test_berhu_hand_computed():
    # |d| = 1 and 3, c = 0.2 * 3 = 0.6: both quadratic, (d^2 + c^2) / 2c.
    pred, target = _t([0.0, 0.0, 0.0, 0.0]), _t([1.0, 3.0, 0.0, INF])
    expected = ((1 + 0.36) / 1.2 + (9 + 0.36) / 1.2) / 2
    assert BerHuLoss()(pred, target).item() == pytest.approx(expected)
    # Below c the loss is |d|: d = 0.1, 1.0 -> c = 0.2; 0.1 stays linear.
    assert BerHuLoss()(_t([0.1, 1.0]), _t([0.2, 2.0])).item() == pytest.approx((0.1 + (1 + 0.04) / 0.4) / 2)


def test_silog_hand_computed_bts_constants():
    # g = log(pred) - log(target) = [-1, 0]: mean g^2 = 0.5, mean g = -0.5.
    pred, target = _t([1.0, math.e, 5.0]), _t([math.e, math.e, NAN])
    expected = 10 * math.sqrt(0.5 - 0.85 * 0.25)
    assert SILogLoss()(pred, target).item() == pytest.approx(expected)
    # Eigen et al.'s lam = 0.5 and a fully scale-invariant lam = 1, scale 1.
    assert SILogLoss(lam=0.5, scale=1.0)(pred, target).item() == pytest.approx(math.sqrt(0.5 - 0.5 * 0.25))
    assert SILogLoss(lam=1.0, scale=1.0)(2 * target.nan_to_num(1.0), target).item() < 1e-3


def test_scale_and_shift_least_squares():
    pred = torch.tensor([[[0.0, 1.0, 2.0]]])
    s, t = scale_and_shift(pred, torch.tensor([[[1.0, 2.0, 2.0]]]), torch.ones(1, 1, 3))
    assert s.item() == pytest.approx(0.5) and t.item() == pytest.approx(7 / 6)


def test_ssi_hand_computed():
    # Target disparity [1, 2, 2] (depth [1, .5, .5]); fit of [0, 1, 2] leaves residuals [1/6, -1/3, 1/6].
    pred, target = _t([0.0, 1.0, 2.0, 9.0]), _t([1.0, 0.5, 0.5, 0.0])
    assert ScaleShiftInvariantLoss(alpha=0.0)(pred, target).item() == pytest.approx(1 / 36)
    # Gradient term at scale 1: |(-1/3) - (1/6)| + |1/6 - (-1/3)| = 1 over 3 valid pixels (the pixel
    # pair touching the invalid one is dropped); coarser scales see no valid neighbours.
    assert ScaleShiftInvariantLoss(alpha=0.5)(pred, target).item() == pytest.approx(1 / 36 + 0.5 / 3)


def test_ssi_is_zero_for_affine_disparity():
    depth = torch.rand(2, 1, 8, 8, dtype=torch.float64) * 5 + 0.5
    pred = 3.0 / depth + 0.7
    assert ScaleShiftInvariantLoss()(pred, depth).item() < 1e-10


@pytest.mark.parametrize("name", ["l1", "berhu", "silog", "ssi"])
def test_all_invalid_batch_is_zero_with_zero_gradient(name):
    pred = (torch.rand(2, 1, 4, 5) + 0.5).requires_grad_()
    target = torch.tensor([0.0, NAN, INF, -2.0]).repeat(10)[:40].view(2, 1, 4, 5)
    loss = create_loss(name)(pred, target)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


@pytest.mark.parametrize("name", ["l1", "berhu", "silog", "ssi"])
def test_invalid_pixels_never_poison_loss_or_gradient(name):
    torch.manual_seed(0)
    pred = (torch.rand(2, 1, 6, 6) + 0.5).requires_grad_()
    target = torch.rand(2, 1, 6, 6) * 4 + 0.5
    poisoned = target.clone()
    poisoned[0, 0, 0, :3] = torch.tensor([NAN, INF, -1.0])
    poisoned[1, 0, 2, 2] = 0.0
    mask = torch.ones_like(target, dtype=torch.bool)
    mask[0, 0, 0, :3] = False
    mask[1, 0, 2, 2] = False
    loss = create_loss(name)(pred, poisoned)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()
    # Same as masking the clean target explicitly.
    clean = create_loss(name)(pred.detach(), target, mask)
    assert loss.item() == pytest.approx(clean.item(), rel=1e-5)


def test_silog_gradient_finite_at_perfect_prediction():
    target = torch.rand(1, 1, 4, 4) + 1
    pred = target.clone().requires_grad_()
    SILogLoss()(pred, target).backward()
    assert torch.isfinite(pred.grad).all()


def test_shape_mismatch_and_unknown_name():
    with pytest.raises(ValueError, match="same shape"):
        L1Loss()(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 4, 5))
    with pytest.raises(ValueError, match="unknown depth loss 'mse'"):
        create_loss("mse")
