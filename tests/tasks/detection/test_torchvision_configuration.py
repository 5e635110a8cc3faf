"""Our COCO MobileNetV3-Large recipe is torchvision's `ssdlite320_mobilenet_v3_large` architecture."""

import pytest
import torch
import yaml
from torchvision.models.detection import ssdlite320_mobilenet_v3_large
from torchvision.ops import box_iou

from backbones.complexity import count_params
from tasks.detection.module import DetectionModule
from tasks.detection.torchvision_weights import load_torchvision_ssdlite

CONFIG = "configs/detection/coco_ssdlite_mobilenet_v3_large.yaml"


def test_config_builds_torchvisions_architecture():
    with open(CONFIG) as f:
        model_args = yaml.safe_load(f)["model"]
    model_args["pretrained"] = False  # the config's value already; never download in a test
    ours = DetectionModule(**model_args)
    # The published model (weights=None, weights_backbone=None) uses the reduced tail.
    theirs = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)
    assert ours.backbone.feature_info.channels == (672, 480)
    assert count_params(ours) == pytest.approx(count_params(theirs), rel=0.01)
    assert count_params(ours.head) == count_params(theirs.head) + count_params(theirs.backbone.extra)
    # Same default boxes per location on the same 6 maps (torchvision: [[2, 3]] * 6 = 6 boxes each).
    assert ours.head.num_anchors_per_location() == theirs.anchor_generator.num_anchors_per_location()
    x = torch.zeros(1, 3, 320, 320)
    ours.eval()
    with torch.no_grad():
        reg, logits = ours(x)
    assert reg.shape == (1, 3234, 4) and logits.shape == (1, 3234, 91)  # torchvision's 3234 default boxes


def _tv_config_model(**overrides) -> DetectionModule:
    with open(CONFIG) as f:
        model_args = yaml.safe_load(f)["model"]
    return DetectionModule(**{**model_args, **overrides}).eval()


@torch.no_grad()
def test_torchvision_weights_give_torchvisions_predictions():
    """With torchvision's tensors loaded, every default box gets torchvision's offsets and logits."""
    torch.manual_seed(0)
    theirs = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None).eval()
    gen = torch.Generator().manual_seed(1)
    for module in theirs.modules():  # BN statistics that are not identities
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=gen) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
    ours = _tv_config_model()
    load_torchvision_ssdlite(ours, theirs.state_dict())
    x = torch.rand(1, 3, 320, 320) * 2 - 1  # torchvision's input range
    reg, logits = ours(x)
    features = list(theirs.backbone(x).values())
    ref = theirs.head(features)
    anchors = theirs.anchor_generator(theirs.transform([x[0] * 0.5 + 0.5])[0], features)[0]
    # The same default box in torchvision's order (within a location the order differs).
    iou, index = box_iou(ours.head.default_boxes((320, 320)), anchors).max(dim=1)
    assert torch.allclose(iou, torch.ones_like(iou), atol=1e-4)
    assert index.unique().numel() == len(index)
    torch.testing.assert_close(reg[0], ref["bbox_regression"][0, index], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits[0], ref["cls_logits"][0, index], rtol=1e-4, atol=1e-4)


def test_torchvision_weights_refuse_another_architecture():
    state = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None).state_dict()
    with pytest.raises(ValueError, match="default boxes of map 0 differ"):
        load_torchvision_ssdlite(_tv_config_model(reduce_lowest=True), state, source="tv.pth")
    full_tail = _tv_config_model(backbone_kwargs={"reduced_tail": False})
    with pytest.raises(ValueError, match="tv.pth: backbone.features.* does not fit our backbone"):
        load_torchvision_ssdlite(full_tail, state, source="tv.pth")
    voc = _tv_config_model(num_classes=21)  # the backbone fits, the class predictors do not
    before = {k: v.clone() for k, v in voc.state_dict().items()}
    with pytest.raises(ValueError, match=r"classification_head.* does not fit our head\.class_predictors"):
        load_torchvision_ssdlite(voc, state, source="tv.pth")
    assert all(torch.equal(v, voc.state_dict()[k]) for k, v in before.items())  # nothing half-copied
