import math

import pytest
import torch
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator as TorchvisionBoxes
from torchvision.models.detection.ssdlite import SSDLiteHead as TorchvisionSSDLiteHead
from torchvision.models.detection.ssdlite import _extra_block
from torchvision.ops import batched_nms, box_iou

from backbones import FeatureInfo, create_backbone
from backbones.complexity import count_macs, count_params
from heads.anchors import DefaultBoxGenerator
from heads.box_coder import decode_boxes, encode_boxes
from heads.ssdlite import SSDLiteHead, postprocess


def _sorted_rows(x):
    # Compare sets of boxes regardless of the order of boxes at one location.
    return x[torch.argsort(x[:, 0] * 1e6 + x[:, 1] * 1e3 + x[:, 2] + x[:, 3] * 1e-3)]


def test_default_boxes_match_torchvision_per_level():
    grids = [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    ours = DefaultBoxGenerator(reduce_lowest=False, clip=True)
    reference = TorchvisionBoxes([[2, 3] for _ in range(6)], min_ratio=0.2, max_ratio=0.95)
    assert ours.num_anchors_per_location() == reference.num_anchors_per_location() == [6] * 6
    ref = reference._grid_default_boxes(grids, [320, 320], dtype=torch.float64)  # cx, cy, w, h relative
    ref = torch.cat([ref[:, :2] - ref[:, 2:] / 2, ref[:, :2] + ref[:, 2:] / 2], 1) * 320
    got = ours(grids, (320, 320)).double()
    start = 0
    for (rows, cols), per in zip(grids, ours.num_anchors_per_location()):
        for loc in range(rows * cols):  # same boxes at each location, in another order
            sl = slice(start + loc * per, start + (loc + 1) * per)
            torch.testing.assert_close(_sorted_rows(got[sl]), _sorted_rows(ref[sl]), atol=1e-4, rtol=0)
        start += rows * cols * per
    assert start == len(ref) == len(got)


def test_reduced_lowest_layer_has_tf_boxes():
    gen = DefaultBoxGenerator(num_levels=6, min_scale=0.2, max_scale=0.95)
    assert gen.num_anchors_per_location() == [3, 6, 6, 6, 6, 6]
    wh = gen.wh[0]
    expected = torch.tensor(
        [[0.1, 0.1], [0.2 * math.sqrt(2), 0.2 / math.sqrt(2)], [0.2 / math.sqrt(2), 0.2 * math.sqrt(2)]]
    )
    torch.testing.assert_close(wh.float(), expected)
    # Scales linear from 0.2 to 0.95, then 1 for the interpolated box of the last map.
    assert gen.scales == pytest.approx([0.2, 0.35, 0.5, 0.65, 0.8, 0.95, 1.0])
    assert gen.wh[5][-1, 0].item() == pytest.approx(math.sqrt(0.95))
    boxes = gen([(2, 2), (1, 1), (1, 1), (1, 1), (1, 1), (1, 1)], (100, 200))
    # First location of the first map: centre (0.25, 0.25) of (W=200, H=100), square of 0.1.
    torch.testing.assert_close(boxes[0], torch.tensor([40.0, 20.0, 60.0, 30.0]))


def test_box_coding_round_trip_and_torchvision_equality():
    torch.manual_seed(0)
    anchors = torch.rand(50, 2) * 200
    anchors = torch.cat([anchors, anchors + torch.rand(50, 2) * 100 + 1], 1)
    boxes = torch.rand(50, 2) * 200
    boxes = torch.cat([boxes, boxes + torch.rand(50, 2) * 100 + 1], 1)
    codes = encode_boxes(boxes, anchors)
    torch.testing.assert_close(decode_boxes(codes, anchors), boxes, atol=1e-3, rtol=1e-5)
    coder = det_utils.BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    torch.testing.assert_close(codes, coder.encode_single(boxes, anchors), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(decode_boxes(codes, anchors), coder.decode_single(codes, anchors), atol=1e-3, rtol=1e-5)


@pytest.mark.parametrize("size", [(320, 320), (300, 200), (97, 131)])
def test_head_shapes_match_default_boxes(size):
    info = FeatureInfo((24, 40), (16, 32))
    head = SSDLiteHead(info, num_classes=5, extra_channels=(32, 16, 16, 8))
    h, w = size
    feats = [torch.randn(2, c, math.ceil(h / s), math.ceil(w / s)) for c, s in zip(info.channels, info.strides)]
    head.train()
    reg, logits = head(feats)
    head.eval()
    reg_eval, logits_eval = head(feats)
    boxes = head.default_boxes(size)
    assert reg.shape == reg_eval.shape == (2, len(boxes), 4)
    assert logits.shape == logits_eval.shape == (2, len(boxes), 5)
    assert len(head.grid_sizes(size)) == 6


def test_head_params_equal_torchvision_ssdlite_head():
    # Same channels and anchors as torchvision's SSDLite320-MobileNetV3-Large (C4 expansion 672, last 960).
    info = FeatureInfo((672, 960), (16, 32))
    ours = SSDLiteHead(info, 91, reduce_lowest=False)
    norm = torch.nn.BatchNorm2d
    channels = [672, 960, 512, 256, 256, 128]
    ref_head = TorchvisionSSDLiteHead(channels, [6] * 6, 91, norm)
    ref_extra = torch.nn.ModuleList(
        [
            _extra_block(960, 512, norm),
            _extra_block(512, 256, norm),
            _extra_block(256, 256, norm),
            _extra_block(256, 128, norm),
        ]
    )
    assert count_params(ours) == count_params(ref_head) + count_params(ref_extra)


def _reference_postprocess(reg, logits, anchors, size, score_thresh, nms_thresh, topk, per_img):
    # torchvision SSD.postprocess_detections, transcribed with its per-class loop.
    boxes = decode_boxes(reg, anchors).clamp(min=0)
    boxes[..., 0::2] = boxes[..., 0::2].clamp(max=size[1])
    boxes[..., 1::2] = boxes[..., 1::2].clamp(max=size[0])
    scores = logits.softmax(-1)
    out = []
    for b, s in zip(boxes, scores):
        all_b, all_s, all_l = [], [], []
        for label in range(1, s.shape[-1]):
            sc = s[:, label]
            keep = sc > score_thresh
            sc, bx = sc[keep], b[keep]
            k = min(topk, sc.numel())
            sc, idx = sc.topk(k)
            all_b.append(bx[idx])
            all_s.append(sc)
            all_l.append(torch.full_like(sc, label, dtype=torch.long))
        all_b, all_s, all_l = torch.cat(all_b), torch.cat(all_s), torch.cat(all_l)
        keep = batched_nms(all_b, all_s, all_l, nms_thresh)[:per_img]
        out.append({"boxes": all_b[keep], "scores": all_s[keep], "labels": all_l[keep]})
    return out


def test_postprocess_equals_torchvision_loop():
    torch.manual_seed(0)
    anchors = DefaultBoxGenerator(num_levels=2)([(4, 4), (2, 2)], (64, 64))
    reg = torch.randn(2, len(anchors), 4) * 0.5
    logits = torch.randn(2, len(anchors), 4) * 3
    ours = postprocess(
        reg, logits, anchors, (64, 64), score_thresh=0.05, nms_thresh=0.5, topk_candidates=7, detections_per_img=20
    )
    ref = _reference_postprocess(reg, logits, anchors, (64, 64), 0.05, 0.5, 7, 20)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a["scores"], b["scores"])
        torch.testing.assert_close(a["boxes"], b["boxes"])
        assert torch.equal(a["labels"], b["labels"])


def test_postprocess_hand_made_nms_and_threshold():
    anchors = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [30, 30, 40, 40]])
    reg = torch.zeros(1, 3, 4)
    logits = torch.full((1, 3, 3), -10.0)
    logits[0, 0, 1] = 5.0  # class 1, best
    logits[0, 1, 1] = 4.0  # class 1, overlaps the first (IoU 0.68): suppressed
    logits[0, 1, 2] = 4.0  # class 2 at the same place: kept (NMS is per class)
    logits[0, 2, 0] = 5.0  # background: no detection above the threshold
    (det,) = postprocess(reg, logits, anchors, (50, 50), score_thresh=0.1, nms_thresh=0.5)
    assert det["labels"].tolist() == [1, 2]
    torch.testing.assert_close(det["boxes"], anchors[:2])
    assert box_iou(anchors[:1], anchors[1:2]).item() > 0.5


def test_paper_fidelity_mobilenet_v2_ssdlite():
    """MobileNetV2 paper, Table 6: SSDLite 4.3M parameters, 0.8B MAdds at 320x320, 91 COCO outputs."""
    try:
        backbone = create_backbone("mobilenet_v2", feature_location="expansion", out_indices=(3, 4))
    except NotImplementedError:
        pytest.skip("mobilenet_v2 expansion taps are not implemented yet")
    assert backbone.feature_info == FeatureInfo((576, 1280), (16, 32))
    head = SSDLiteHead(backbone.feature_info, 91)
    model = torch.nn.Sequential(backbone, head)
    params = count_params(model)
    assert abs(params - 4.3e6) / 4.3e6 < 0.05, params
    macs = count_macs(model, torch.zeros(1, 3, 320, 320))
    assert abs(macs - 0.8e9) / 0.8e9 < 0.10, macs
