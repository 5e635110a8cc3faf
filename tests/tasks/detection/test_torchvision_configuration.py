"""Our COCO MobileNetV3-Large recipe is torchvision's `ssdlite320_mobilenet_v3_large` architecture."""

import pytest
import torch
import yaml
from torchvision.models.detection import ssdlite320_mobilenet_v3_large

from backbones.complexity import count_params
from tasks.detection.module import SSDLiteModule

CONFIG = "configs/detection/coco_ssdlite_mobilenet_v3_large.yaml"


def test_config_builds_torchvisions_architecture():
    with open(CONFIG) as f:
        model_args = yaml.safe_load(f)["model"]
    model_args["pretrained"] = False  # the config's value already; never download in a test
    ours = SSDLiteModule(**model_args)
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
