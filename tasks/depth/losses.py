"""Depth losses, all masked: invalid target pixels (0, NaN, inf, out of range) never reach the loss.

A batch without a single valid pixel gives a zero loss that still belongs to the graph (so DDP and
the optimizer see a gradient of zeros), never NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def valid_mask(target: Tensor, min_depth: float = 0.0, max_depth: float = float("inf")) -> Tensor:
    """Pixels with a usable depth: finite and in (min_depth, max_depth].

    Args:
        target: Depth, any shape, metres.
        min_depth: Exclusive lower bound (0 marks "no measurement" in every sensor format).
        max_depth: Inclusive upper bound.

    Returns:
        Boolean mask of target's shape.
    """
    return torch.isfinite(target) & (target > min_depth) & (target <= max_depth)


def _zero(pred: Tensor) -> Tensor:
    # Keeps the graph: the gradient is zero instead of missing.
    return pred.sum() * 0.0


def _prepare(pred: Tensor, target: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    valid = valid_mask(target) if mask is None else mask & valid_mask(target)
    # Replace invalid targets so no NaN / inf enters even the masked-out arithmetic (0 * NaN = NaN).
    target = torch.where(valid, target, torch.ones_like(target))
    return pred, target, valid


class L1Loss(nn.Module):
    """Mean absolute error over valid pixels."""

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        """(N, 1, H, W) prediction, target (metres), optional extra mask -> scalar."""
        pred, target, valid = _prepare(pred, target, mask)
        if not valid.any():
            return _zero(pred)
        return (pred - target).abs()[valid].mean()


class BerHuLoss(nn.Module):
    """Reverse Huber (berHu) loss over valid pixels.

    Laina et al., "Deeper Depth Prediction with Fully Convolutional Residual Networks", 3DV 2016:
    |d| below c, (d^2 + c^2) / 2c above, c = 0.2 * max |d| over the batch.

    Args:
        threshold: The fraction of the largest residual where the loss turns quadratic (paper: 0.2).
    """

    def __init__(self, threshold: float = 0.2) -> None:
        super().__init__()
        self.threshold = threshold

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        """(N, 1, H, W) prediction, target (metres), optional extra mask -> scalar."""
        pred, target, valid = _prepare(pred, target, mask)
        if not valid.any():
            return _zero(pred)
        diff = (pred - target)[valid].abs()
        c = (self.threshold * diff.max()).detach().clamp_min(1e-6)
        return torch.where(diff <= c, diff, (diff**2 + c**2) / (2 * c)).mean()


class SILogLoss(nn.Module):
    """Scale-invariant log loss (SILog) over valid pixels, in the BTS / AdaBins / NeWCRFs form.

    `scale * sqrt(mean(g^2) - lam * mean(g)^2)`, g = log(pred) - log(target), over all valid pixels
    of the batch, with lam = 0.85 and scale = 10 (Lee et al., "From Big to Small", 2019). Eigen et al.
    (NIPS 2014) used lam = 0.5 without the square root and scale; lam = 1 is fully scale-invariant.

    Args:
        lam: Weight of the scale-invariance term (variance focus).
        scale: Output multiplier.
        eps: Lower clamp of the prediction before the log.
    """

    def __init__(self, lam: float = 0.85, scale: float = 10.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.lam, self.scale, self.eps = lam, scale, eps

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        """(N, 1, H, W) positive prediction, target (metres), optional extra mask -> scalar."""
        pred, target, valid = _prepare(pred, target, mask)
        if not valid.any():
            return _zero(pred)
        g = torch.log(pred[valid].clamp_min(self.eps)) - torch.log(target[valid])
        d = (g**2).mean() - self.lam * g.mean() ** 2
        # The clamp keeps sqrt's gradient finite at a perfect prediction.
        return self.scale * d.clamp_min(1e-8).sqrt()


def scale_and_shift(pred: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image least-squares s, t minimising sum(mask * (s * pred + t - target)^2) (MiDaS).

    Args:
        pred: (N, H, W).
        target: (N, H, W).
        mask: (N, H, W) float or bool.

    Returns:
        scale (N,), shift (N,); (0, 0) for an image whose system is singular (fewer than 2 distinct
        valid predictions).
    """
    mask = mask.to(pred.dtype)
    a_00 = (mask * pred * pred).sum((1, 2))
    a_01 = (mask * pred).sum((1, 2))
    a_11 = mask.sum((1, 2))
    b_0 = (mask * pred * target).sum((1, 2))
    b_1 = (mask * target).sum((1, 2))
    det = a_00 * a_11 - a_01 * a_01
    ok = det.abs() > 1e-12
    safe = torch.where(ok, det, torch.ones_like(det))
    scale = torch.where(ok, (a_11 * b_0 - a_01 * b_1) / safe, torch.zeros_like(det))
    shift = torch.where(ok, (-a_01 * b_0 + a_00 * b_1) / safe, torch.zeros_like(det))
    return scale, shift


def _gradient_loss(diff: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    # diff, mask: (N, H, W) with diff already zero where mask is 0.
    grad_x = (diff[:, :, 1:] - diff[:, :, :-1]).abs() * mask[:, :, 1:] * mask[:, :, :-1]
    grad_y = (diff[:, 1:, :] - diff[:, :-1, :]).abs() * mask[:, 1:, :] * mask[:, :-1, :]
    return grad_x.sum() + grad_y.sum(), mask.sum()


class ScaleShiftInvariantLoss(nn.Module):
    """MiDaS's scale-and-shift-invariant loss with multi-scale gradient matching (Ranftl et al., TPAMI 2020).

    Works on inverse depth: the target depth is inverted on valid pixels, the prediction (a relative
    inverse depth) is aligned per image by least-squares scale and shift, then
    `L = sum(mask * r^2) / (2 * sum(mask)) + alpha * sum_k L_grad(scale 2^k)`, r the aligned residual,
    both reduced over the batch as in MiDaS's reference code (the "ssi-mse" variant; alpha = 0.5, 4 scales).

    Args:
        alpha: Weight of the gradient-matching term.
        scales: Number of scales of the gradient term (subsampled by 2^k).
    """

    def __init__(self, alpha: float = 0.5, scales: int = 4) -> None:
        super().__init__()
        self.alpha, self.scales = alpha, scales

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        """(N, 1, H, W) inverse-depth prediction, target depth (metres), optional extra mask -> scalar."""
        pred, target, valid = _prepare(pred, target, mask)
        if not valid.any():
            return _zero(pred)
        pred, valid = pred.flatten(0, 1), valid.flatten(0, 1).to(pred.dtype)  # (N, H, W)
        disparity = valid / target.flatten(0, 1)  # 1 / depth on valid pixels, 0 elsewhere
        scale, shift = scale_and_shift(pred, disparity, valid)
        aligned = scale.view(-1, 1, 1) * pred + shift.view(-1, 1, 1)
        diff = (aligned - disparity) * valid
        loss = (diff**2).sum() / (2 * valid.sum())
        if self.alpha > 0:
            for k in range(self.scales):
                step = 2**k
                total, count = _gradient_loss(diff[:, ::step, ::step], valid[:, ::step, ::step])
                if count > 0:
                    loss = loss + self.alpha * total / count
        return loss


LOSSES: dict[str, type[nn.Module]] = {
    "silog": SILogLoss,
    "l1": L1Loss,
    "berhu": BerHuLoss,
    "ssi": ScaleShiftInvariantLoss,
}


def create_loss(name: str, **kwargs) -> nn.Module:
    """A depth loss by name: "silog", "l1", "berhu" or "ssi" (scale-and-shift-invariant, inverse depth)."""
    if name not in LOSSES:
        raise ValueError(f"unknown depth loss '{name}'; choose one of {sorted(LOSSES)}")
    return LOSSES[name](**kwargs)
