"""Colour maps of depth and error, and the RGB | ground truth | prediction | error panels."""

from __future__ import annotations

import matplotlib
import numpy as np
import torch
from torch import Tensor

from tasks.common.data import denormalize


def colorize(values: Tensor, vmin: float, vmax: float, cmap: str = "magma_r", valid: Tensor | None = None) -> Tensor:
    """Map (H, W) values to (3, H, W) colours in [0, 1]; invalid pixels are black.

    Args:
        values: (H, W) depth or error.
        vmin: Value of the colour map's first colour.
        vmax: Value of its last colour.
        cmap: Matplotlib colour map ("magma_r": near is bright, far is dark).
        valid: (H, W) boolean mask; None = finite values.
    """
    values = values.detach().float().cpu()
    valid = torch.isfinite(values) if valid is None else valid.cpu() & torch.isfinite(values)
    scaled = ((values - vmin) / max(vmax - vmin, 1e-6)).clamp(0, 1).nan_to_num(0.0)
    rgb = torch.from_numpy(matplotlib.colormaps[cmap](scaled.numpy())[..., :3]).permute(2, 0, 1).float()
    return rgb * valid[None]


def depth_panels(image: Tensor, gt: Tensor, pred: Tensor, max_depth: float, rows: int = 4) -> Tensor:
    """A grid with one sample per row: RGB | ground truth | prediction | absolute error.

    Args:
        image: (N, 3, H, W) normalized images.
        gt: (N, 1, H, W) ground truth, invalid = 0.
        pred: (N, 1, H, W) predicted depth.
        max_depth: Depth of the colour map's far end (error uses a fifth of it).
        rows: Samples shown.

    Returns:
        (3, rows * H, 4 * W) in [0, 1].
    """
    rgb = denormalize(image[:rows].detach().float().cpu())
    out = []
    for k in range(rgb.shape[0]):
        g, p = gt[k, 0].detach().float().cpu(), pred[k, 0].detach().float().cpu()
        valid = g > 0
        vmax = float(g[valid].max()) if valid.any() else max_depth
        error = (p - g).abs()
        out.append(
            torch.cat(
                [
                    rgb[k],
                    colorize(g, 0.0, vmax, valid=valid),
                    colorize(p, 0.0, vmax),
                    colorize(error, 0.0, vmax / 5, cmap="inferno", valid=valid),
                ],
                dim=2,
            )
        )
    return torch.cat(out, dim=1)


def depth_to_uint8_rgb(depth: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """(H, W) depth -> (H, W, 3) uint8 colour map; pixels without depth (0, NaN, inf) are black.

    By default the colours span the image's own valid depths, from their 1st to their 99th percentile
    (not from 0: a wall 5.0-5.2 m away would otherwise get the last few percent of the colour map and
    look uniformly dark).

    Args:
        depth: (H, W) metres.
        vmin: Depth of the colour map's first colour; None for the 1st percentile of the valid depths.
        vmax: Depth of its last colour; None for their 99th percentile.
    """
    values = np.asarray(depth, dtype=np.float32)
    valid = np.isfinite(values) & (values > 0)
    if vmin is None or vmax is None:
        # numpy, not torch.quantile, which refuses more than 2^24 values (a 48-megapixel photo).
        low, high = np.percentile(values[valid], (1, 99)) if valid.any() else (0.0, 1.0)
        vmin = float(low) if vmin is None else vmin
        vmax = float(high) if vmax is None else vmax
    rgb = colorize(torch.from_numpy(values), vmin, vmax, valid=torch.from_numpy(valid))
    return (rgb.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
