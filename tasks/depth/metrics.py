"""Depth evaluation: the standard error measures under the protocols papers compare on.

Definitions follow the BTS / Monodepth2 evaluation code (Eigen et al., NIPS 2014): errors are
computed per image over its valid pixels, then averaged over images. The prediction is clipped to
[min_depth, max_depth] first (NaN to min, inf to max), as those scripts do.

Protocols:
- "nyu": Eigen crop (rows 45:471, cols 41:601 of 480x640, scaled to other sizes), depth in (1e-3, 10) m.
- "kitti_garg" / "kitti_eigen": the Garg / Eigen crops of the KITTI Eigen split, depth in (1e-3, 80) m.
- "none": the whole image, depth in (min_depth, max_depth).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

METRIC_NAMES = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog", "delta1", "delta2", "delta3")


@dataclass(frozen=True)
class Protocol:
    """An evaluation protocol.

    Attributes:
        crop: (top, bottom, left, right) as fractions of the height / width, or None.
        min_depth: Ground truth must exceed this (metres).
        max_depth: Ground truth must be below this (metres); predictions are capped to it.
    """

    crop: tuple[float, float, float, float] | None
    min_depth: float
    max_depth: float


PROTOCOLS = {
    # BTS / AdaBins: eval_mask[45:471, 41:601] on 480x640.
    "nyu": Protocol((45 / 480, 471 / 480, 41 / 640, 601 / 640), 1e-3, 10.0),
    # Garg et al. ECCV 2016 crop, as in Monodepth2's evaluate_depth.py.
    "kitti_garg": Protocol((0.40810811, 0.99189189, 0.03594771, 0.96405229), 1e-3, 80.0),
    # Eigen et al. NIPS 2014 crop, as in BTS's eval.
    "kitti_eigen": Protocol((0.3324324, 0.91351351, 0.0359477, 0.96405229), 1e-3, 80.0),
    "none": Protocol(None, 1e-3, 10.0),
}


def eval_mask(gt: Tensor, protocol: Protocol) -> Tensor:
    """Valid, in-range, inside-the-crop pixels of (..., H, W) ground truth."""
    mask = torch.isfinite(gt) & (gt > protocol.min_depth) & (gt < protocol.max_depth)
    if protocol.crop is not None:
        h, w = gt.shape[-2:]
        top, bottom, left, right = protocol.crop
        crop = torch.zeros_like(mask)
        crop[..., int(top * h) : int(bottom * h), int(left * w) : int(right * w)] = True
        mask = mask & crop
    return mask


def depth_errors(pred: Tensor, gt: Tensor) -> dict[str, Tensor]:
    """The error measures of one image over already-selected valid pixels.

    Args:
        pred: (M,) positive predictions.
        gt: (M,) positive ground truth, M > 0.

    Returns:
        abs_rel, sq_rel, rmse, rmse_log, log10, silog (x100, as BTS reports it), delta1..3.
    """
    pred, gt = pred.double(), gt.double()
    thresh = torch.maximum(gt / pred, pred / gt)
    log_err = torch.log(pred) - torch.log(gt)
    return {
        "abs_rel": ((gt - pred).abs() / gt).mean(),
        "sq_rel": ((gt - pred) ** 2 / gt).mean(),
        "rmse": ((gt - pred) ** 2).mean().sqrt(),
        "rmse_log": (log_err**2).mean().sqrt(),
        "log10": (torch.log10(pred) - torch.log10(gt)).abs().mean(),
        "silog": ((log_err**2).mean() - log_err.mean() ** 2).clamp_min(0).sqrt() * 100,
        "delta1": (thresh < 1.25).double().mean(),
        "delta2": (thresh < 1.25**2).double().mean(),
        "delta3": (thresh < 1.25**3).double().mean(),
    }


class DepthMetrics(Metric):
    """Per-image depth errors averaged over a dataset, under a protocol.

    The state is one row of errors per image with the image's dataset index. Under DDP torchmetrics
    gathers the rows of every process; `compute` keeps one row per index (the distributed sampler
    repeats images to pad the last shards) and sums them in index order, so the result is the same,
    to the last bit, with any number of processes.

    Args:
        protocol: "nyu", "kitti_garg", "kitti_eigen" or "none".
        min_depth: Override of the protocol's lower bound.
        max_depth: Override of the protocol's cap.
        median_scaling: Multiply each prediction by median(gt) / median(pred) over its valid pixels
            (for relative models, as Monodepth2 evaluates self-supervised ones).
    """

    full_state_update = False

    def __init__(
        self,
        protocol: str = "none",
        min_depth: float | None = None,
        max_depth: float | None = None,
        median_scaling: bool = False,
    ) -> None:
        super().__init__()
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown depth protocol '{protocol}'; choose one of {sorted(PROTOCOLS)}")
        base = PROTOCOLS[protocol]
        self.protocol = Protocol(
            base.crop,
            base.min_depth if min_depth is None else float(min_depth),
            base.max_depth if max_depth is None else float(max_depth),
        )
        self.median_scaling = median_scaling
        self.add_state("errors", default=[], dist_reduce_fx="cat")  # (1, len(METRIC_NAMES)) float64 per image
        self.add_state("indices", default=[], dist_reduce_fx="cat")  # (1,) int64 per image
        self._next_index = 0  # indices of images given without one (a single process, in order)

    @property
    def images(self) -> Tensor:
        """Number of distinct images with valid ground truth seen (by this process)."""
        if not self.indices:
            return torch.tensor(0)
        return torch.tensor(len(torch.unique(dim_zero_cat(self.indices))))

    def update(self, pred: Tensor, gt: Tensor, indices: Sequence[int] | Tensor | None = None) -> None:
        """Add a batch.

        Args:
            pred: (N, 1, H, W) or (N, H, W) predicted depth, metres.
            gt: Ground truth of the same shape; invalid pixels may be 0, NaN or inf.
            indices: (N,) dataset index of each image (under DDP: the same image seen twice counts
                once); None numbers the images in the order they come.
        """
        if pred.shape != gt.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} differ in shape")
        pred, gt = pred.detach().float().reshape(-1, *gt.shape[-2:]), gt.detach().float().reshape(-1, *gt.shape[-2:])
        if indices is None:
            indices = range(self._next_index, self._next_index + len(pred))
            self._next_index += len(pred)
        indices = [int(i) for i in indices]
        if len(indices) != len(pred):
            raise ValueError(f"{len(indices)} indices for {len(pred)} images")
        lo, hi = self.protocol.min_depth, self.protocol.max_depth
        masks = eval_mask(gt, self.protocol)
        for p, g, m, index in zip(pred, gt, masks, indices):
            if not m.any():
                continue  # an image without valid ground truth says nothing about the model
            p, g = p[m], g[m]
            if self.median_scaling:
                p = p * (g.median() / p.median().clamp_min(1e-12))
            p = torch.nan_to_num(p, nan=lo, posinf=hi, neginf=lo).clamp(lo, hi)
            errors = depth_errors(p, g)
            self.errors.append(torch.stack([errors[name] for name in METRIC_NAMES])[None])
            self.indices.append(torch.tensor([index], dtype=torch.long, device=p.device))

    def compute(self) -> dict[str, Tensor]:
        """Mean of each measure over the images seen, each image once (NaN if none had valid ground truth)."""
        if not len(self.errors):
            return {name: torch.tensor(float("nan")) for name in METRIC_NAMES}
        errors, indices = dim_zero_cat(self.errors).double(), dim_zero_cat(self.indices)
        order = torch.argsort(indices, stable=True)
        errors, indices = errors[order], indices[order]
        first = torch.ones_like(indices, dtype=torch.bool)
        first[1:] = indices[1:] != indices[:-1]  # one row per image
        rows = errors[first]
        return {name: (rows[:, i].sum() / len(rows)).float() for i, name in enumerate(METRIC_NAMES)}

    def reset(self) -> None:
        """Clear the rows (and the automatic numbering)."""
        super().reset()
        self._next_index = 0
