"""Load a torchvision `ssdlite320_mobilenet_v3_large` state dict into our SSDLite (same architecture).

torchvision's model is MobileNetV3-Large with the reduced tail, the SSDLite extras and predictors; ours in
`configs/detection/coco_ssdlite_mobilenet_v3_large.yaml` is the same network in timm's module layout. The
tensors correspond one to one, in the same order within each part, so they are copied part by part and
checked by shape. Used to run both on identical weights (benchmark, equality tests), and to start from
torchvision's COCO weights (`SSDLite320_MobileNet_V3_Large_Weights.COCO_V1`, a file you provide).

Default boxes: both have the same 6 per location, but torchvision lists them as (1, 1', 2, 1/2, 3, 1/3)
and we (TF's order) as (1, 2, 1/2, 3, 1/3, 1'); the predictors' last convolutions are permuted to match.

torchvision feeds the network images scaled to [-1, 1] (mean = std = 0.5), and its MobileNetV3 uses
TF's BN epsilon 1e-3; `load_torchvision_ssdlite` sets the backbone's BN epsilon to 1e-3 so the outputs
match. Its normalisation is the caller's business (our data pipeline uses ImageNet statistics).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator as TorchvisionBoxes

from tasks.detection.module import DetectionModule

# Our part -> torchvision's state-dict prefix, in the order the tensors follow each other.
_PARTS = (
    ("backbone", "backbone.features."),
    ("head.extras", "backbone.extra."),
    ("head.box_predictors", "head.regression_head."),
    ("head.class_predictors", "head.classification_head."),
)
TORCHVISION_BN_EPS = 1e-3


def load_torchvision_ssdlite(
    model: DetectionModule, state_dict: Mapping[str, Tensor], source: str = "state dict"
) -> None:
    """Copy torchvision's SSDLite320-MobileNetV3-Large tensors into `model`, in place.

    Args:
        model: Our SSDLite built as `configs/detection/coco_ssdlite_mobilenet_v3_large.yaml` (mobilenet_v3_large,
            `reduced_tail: true`, expansion taps, `reduce_lowest: false`, 91 classes).
        state_dict: torchvision's `ssdlite320_mobilenet_v3_large().state_dict()` (or its COCO checkpoint).
        source: Where the state dict comes from, for messages.

    Raises:
        ValueError: The two networks' tensors do not correspond (another architecture); the message names
            the first mismatch, and nothing is copied.
    """
    ours = dict(model.named_modules())
    orders = _anchor_orders(model, source)
    copies: list[tuple[Tensor, Tensor]] = []  # (ours, theirs), all checked before anything is copied
    for part, prefix in _PARTS:
        targets = list(ours[part].state_dict(keep_vars=True).items())
        tensors = [(k, v) for k, v in state_dict.items() if k.startswith(prefix)]
        if len(targets) != len(tensors):
            raise ValueError(
                f"{source}: torchvision's '{prefix}*' has {len(tensors)} tensors, our {part} {len(targets)}; "
                f"build the model as configs/detection/coco_ssdlite_mobilenet_v3_large.yaml"
            )
        for (key, target), (tv_key, value) in zip(targets, tensors):
            if target.shape != value.shape:
                raise ValueError(
                    f"{source}: {tv_key} {tuple(value.shape)} does not fit our {part}.{key} {tuple(target.shape)}"
                )
            level, _, name = key.partition(".")
            if part.endswith("predictors") and name in ("1.weight", "1.bias"):  # the last 1x1 conv
                per_box = value.shape[0] // len(orders[int(level)])  # 4 offsets or C logits per box
                value = value.unflatten(0, (-1, per_box))[orders[int(level)]].flatten(0, 1)
            copies.append((target, value))
    with torch.no_grad():
        for target, value in copies:
            target.copy_(value)
    for module in model.backbone.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eps = TORCHVISION_BN_EPS


def _anchor_orders(model: DetectionModule, source: str) -> list[Tensor]:
    """Per map, for each of our default boxes the index of the same box in torchvision's order."""
    reference = TorchvisionBoxes([[2, 3]] * 6, min_ratio=0.2, max_ratio=0.95)._wh_pairs  # (K, 2) w, h per map
    ours = model.head.anchor_generator.wh
    orders = []
    for level, (wh, ref) in enumerate(zip(ours, reference)):
        same = torch.isclose(wh.double()[:, None], ref.double()[None], atol=1e-6).all(-1)  # (K, K)
        if len(ours) != len(reference) or wh.shape != ref.shape or not (same.sum(1) == 1).all():
            raise ValueError(
                f"{source}: the default boxes of map {level} differ from torchvision's SSDLite320 "
                f"(build the model with reduce_lowest: false and the default scales and aspect ratios)"
            )
        orders.append(same.double().argmax(1))
    return orders
