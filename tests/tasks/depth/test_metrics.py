import math

import numpy as np
import pytest
import torch

from tasks.depth.metrics import PROTOCOLS, DepthMetrics, depth_errors, eval_mask


def _bts_errors(gt, pred):
    """BTS's compute_errors (eval.py), the reference the papers' tables come from."""
    thresh = np.maximum((gt / pred), (pred / gt))
    d1, d2, d3 = (thresh < 1.25).mean(), (thresh < 1.25**2).mean(), (thresh < 1.25**3).mean()
    rms = np.sqrt(((gt - pred) ** 2).mean())
    log_rms = np.sqrt(((np.log(gt) - np.log(pred)) ** 2).mean())
    abs_rel = np.mean(np.abs(gt - pred) / gt)
    sq_rel = np.mean(((gt - pred) ** 2) / gt)
    err = np.log(pred) - np.log(gt)
    silog = np.sqrt(np.mean(err**2) - np.mean(err) ** 2) * 100
    log10 = np.mean(np.abs(np.log10(pred) - np.log10(gt)))
    return dict(
        silog=silog,
        log10=log10,
        abs_rel=abs_rel,
        sq_rel=sq_rel,
        rmse=rms,
        rmse_log=log_rms,
        delta1=d1,
        delta2=d2,
        delta3=d3,
    )


def test_depth_errors_hand_computed():
    e = {k: v.item() for k, v in depth_errors(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 2.0])).items()}
    ln2 = math.log(2)
    assert e["abs_rel"] == pytest.approx(0.25)
    assert e["sq_rel"] == pytest.approx(0.25)
    assert e["rmse"] == pytest.approx(math.sqrt(0.5))
    assert e["rmse_log"] == pytest.approx(math.sqrt(ln2**2 / 2))
    assert e["log10"] == pytest.approx(math.log10(2) / 2)
    assert e["silog"] == pytest.approx(100 * math.sqrt(ln2**2 / 2 - (ln2 / 2) ** 2))
    assert (e["delta1"], e["delta2"], e["delta3"]) == (0.5, 0.5, 0.5)
    # 1.2 < 1.25 but 1.3 is not; 1.5 < 1.5625; 1.9 < 1.953.
    e = depth_errors(torch.tensor([1.2, 1.3, 1.5, 1.9]), torch.ones(4))
    assert [e[f"delta{k}"].item() for k in (1, 2, 3)] == [0.25, 0.75, 1.0]


def test_metric_matches_bts_per_image_mean_with_invalid_pixels():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0.5, 9.0, (3, 1, 12, 16))
    pred = gt * rng.uniform(0.7, 1.4, gt.shape)
    gt[0, 0, :2] = 0.0
    gt[1, 0, 3, :] = np.nan
    gt[1, 0, 4, :] = np.inf
    gt[2, 0, 5, 5] = 12.0  # beyond the 10 m cap
    metric = DepthMetrics("none")
    metric.update(torch.from_numpy(pred).float(), torch.from_numpy(gt).float())
    expected = {k: [] for k in _bts_errors(np.ones(1), np.ones(1))}
    for p, g in zip(pred.astype(np.float32), gt.astype(np.float32)):
        valid = np.isfinite(g) & (g > 1e-3) & (g < 10.0)
        p = np.clip(p, 1e-3, 10.0)  # BTS clips predictions to the evaluation range
        for k, v in _bts_errors(g[valid].astype(np.float64), p[valid].astype(np.float64)).items():
            expected[k].append(v)
    got = metric.compute()
    for k, values in expected.items():
        assert got[k].item() == pytest.approx(np.mean(values), rel=1e-5), k


def test_all_invalid_image_is_skipped_not_nan():
    metric = DepthMetrics("none")
    gt = torch.full((2, 1, 4, 4), 2.0)
    gt[1] = 0.0
    metric.update(torch.full_like(gt, 2.0), gt)
    assert metric.images.item() == 1
    assert metric.compute()["abs_rel"].item() == 0.0


def test_prediction_is_clipped_to_the_cap_and_nan_to_min():
    metric = DepthMetrics("none", max_depth=10.0)
    gt = torch.tensor([[[[5.0, 5.0]]]])
    metric.update(torch.tensor([[[[float("inf"), 5.0]]]]), gt)
    assert metric.compute()["abs_rel"].item() == pytest.approx(0.5)  # inf -> 10: |10 - 5| / 5 / 2


def test_median_scaling_makes_a_scaled_prediction_perfect():
    gt = torch.rand(2, 1, 8, 8) * 5 + 1
    metric = DepthMetrics("none", median_scaling=True)
    metric.update(gt * 0.3, gt)
    assert metric.compute()["abs_rel"].item() == pytest.approx(0.0, abs=1e-6)
    assert metric.compute()["delta1"].item() == 1.0


def test_nyu_eigen_crop_on_480x640():
    mask = eval_mask(torch.full((480, 640), 3.0), PROTOCOLS["nyu"])
    rows, cols = torch.nonzero(mask.any(1)).ravel(), torch.nonzero(mask.any(0)).ravel()
    assert (rows.min().item(), rows.max().item(), cols.min().item(), cols.max().item()) == (45, 470, 41, 600)
    # Errors outside the crop do not count.
    gt, pred = torch.full((1, 1, 480, 640), 3.0), torch.full((1, 1, 480, 640), 3.0)
    pred[..., :40, :] = 9.0
    metric = DepthMetrics("nyu")
    metric.update(pred, gt)
    assert metric.compute()["abs_rel"].item() == 0.0


@pytest.mark.parametrize(
    "protocol, box",
    [("kitti_garg", (153, 370, 44, 1196)), ("kitti_eigen", (124, 341, 44, 1196))],
)
def test_kitti_crops_on_375x1242(protocol, box):
    mask = eval_mask(torch.full((375, 1242), 30.0), PROTOCOLS[protocol])
    rows, cols = torch.nonzero(mask.any(1)).ravel(), torch.nonzero(mask.any(0)).ravel()
    assert (rows.min().item(), rows.max().item(), cols.min().item(), cols.max().item()) == box
    assert not eval_mask(torch.tensor([[85.0]]), PROTOCOLS[protocol]).any()  # 80 m cap


def test_bad_input():
    with pytest.raises(ValueError, match="unknown depth protocol"):
        DepthMetrics("nyuv2")
    with pytest.raises(ValueError, match="differ in shape"):
        DepthMetrics().update(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 4, 5))
