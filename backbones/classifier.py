"""A backbone with a checkpoint's own ImageNet classifier: check converted weights on real photos.

`create_backbone(..., pretrained=file)` keeps the feature extractor and drops the classifier head. To
see that a converted checkpoint is right, or to classify images, `create_classifier` builds the same
backbone and puts the checkpoint's head on its last level:

>>> from backbones.classifier import create_classifier
>>> model = create_classifier("mobilenet_v2", pretrained="mobilenet_v2-b0353104.pth").eval()
>>> logits = model(images)  # (N, 1000), torchvision's ImageNet class order

The head is what follows the backbone's last stage in the source network, loaded from the file: for the
timm-wrapped inverted-residual nets (MobileNetV2/V3, EfficientNet) timm's own head modules (the 1x1
`conv_head` conv and its BatchNorm where the net has them, global pooling, the Linear); for ShuffleNetV2
(torchvision's layout) global pooling and `fc`.
"""

from __future__ import annotations

import os

import timm
import torch
from torch import Tensor, nn

from backbones._base import Backbone
from backbones._registry import create_backbone
from backbones._weights import WeightsMismatchError, apply_layout_bn_eps, read_checkpoint

# Keys of a timm checkpoint after the last feature stage.
_TIMM_HEAD_PREFIXES = ("conv_head.", "bn2.", "norm_head.", "classifier.")


class ImageClassifier(nn.Module):
    """A litedense backbone followed by a classifier head.

    Args:
        backbone: Returns its levels; the last one feeds the head.
        head: Maps the last level (N, C, H, W) to logits (N, num_classes).
        num_classes: Classes of the head.
    """

    def __init__(self, backbone: Backbone, head: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone, self.head, self.num_classes = backbone, head, num_classes

    def forward(self, images: Tensor) -> Tensor:
        """(N, C_in, H, W) images -> (N, num_classes) logits."""
        return self.head(self.backbone(images)[-1])


class _TimmHead(nn.Module):
    """The head of a timm EfficientNet / MobileNetV3 classifier, its body removed.

    Args:
        model: timm's classifier model with the checkpoint's head weights loaded.
        conv_head: Whether the 1x1 `conv_head` + `bn2` come before the pooling (EfficientNet-style nets);
            MobileNetV3's `forward_head` pools first and then applies its `conv_head` itself.
    """

    def __init__(self, model: nn.Module, conv_head: bool) -> None:
        super().__init__()
        for body in ("conv_stem", "bn1", "blocks"):  # the backbone computes these
            setattr(model, body, nn.Identity())
        self.model, self.conv_head = model, conv_head

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H / 32, W / 32) last stage -> (N, num_classes)."""
        if self.conv_head:
            x = self.model.bn2(self.model.conv_head(x))  # (N, C_head, H / 32, W / 32)
        return self.model.forward_head(x)


class _PoolLinear(nn.Module):
    """Global average pooling and a Linear layer (torchvision ShuffleNetV2's head, `fc`)."""

    def __init__(self, weight: Tensor, bias: Tensor) -> None:
        super().__init__()
        self.fc = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.fc.weight.copy_(weight)
            self.fc.bias.copy_(bias)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, num_classes)."""
        return self.fc(x.mean((2, 3)))


def create_classifier(name: str, *, pretrained: str | os.PathLike, **family_kwargs) -> ImageClassifier:
    """Build a registered backbone with the classifier head of a checkpoint file.

    The backbone is `create_backbone(name, pretrained=pretrained, **family_kwargs)` (stage taps, output
    stride 32, every level); the head comes from the same file, in any layout `pretrained=` accepts.

    Args:
        name: A registered backbone with a classifier head in its source layout: mobilenet_v2,
            mobilenet_v3_large/small, efficientnet_b0-b3, efficientnet_lite0, shufflenet_v2.
        pretrained: A local checkpoint that includes the classifier.
        **family_kwargs: Family options (width_mult, padding, ...), as for `create_backbone`.

    Returns:
        The classifier; `model(images)` gives logits in the checkpoint's class order.

    Raises:
        WeightsMismatchError: The file has no classifier, or one that does not fit.
        NotImplementedError: `name` has no supported classifier head.
    """
    if pretrained in (True, False, None):
        raise ValueError("create_classifier needs a checkpoint file: pretrained='/path/to/weights.pth'")
    backbone = create_backbone(name, pretrained=pretrained, **family_kwargs)
    state_dict = read_checkpoint(pretrained).state_dict
    if name == "shufflenet_v2":
        if "fc.weight" not in state_dict or "fc.bias" not in state_dict:
            raise WeightsMismatchError(f"{pretrained} has no classifier (no fc.weight / fc.bias)")
        weight = state_dict["fc.weight"]
        return ImageClassifier(backbone, _PoolLinear(weight, state_dict["fc.bias"]), weight.shape[0])
    architecture = getattr(getattr(backbone, "model", None), "pretrained_cfg", {}).get("architecture")
    if architecture is None or not timm.is_model(architecture) or "classifier.weight" not in state_dict:
        if architecture is not None and timm.is_model(architecture):
            raise WeightsMismatchError(f"{pretrained} has no classifier (no classifier.weight)")
        raise NotImplementedError(
            f"create_classifier does not know the classifier head of {name!r}; supported: mobilenet_v2, "
            f"mobilenet_v3_large, mobilenet_v3_small, efficientnet_b0-b3, efficientnet_lite0, shufflenet_v2"
        )
    num_classes = state_dict["classifier.weight"].shape[0]
    with torch.device("meta"):
        probe = timm.create_model(architecture, num_classes=num_classes)
    model = timm.create_model(architecture, num_classes=num_classes)
    head_expected = {
        k: v.shape
        for k, v in probe.state_dict().items()
        if k.startswith(_TIMM_HEAD_PREFIXES) and "num_batches" not in k
    }
    missing = sorted(k for k in head_expected if k not in state_dict)
    wrong = sorted(k for k in head_expected if k in state_dict and state_dict[k].shape != head_expected[k])
    if missing or wrong:
        raise WeightsMismatchError(
            f"{pretrained}: its classifier head does not fit {architecture}: missing {missing or 'none'}, "
            f"wrong shape {[(k, tuple(state_dict[k].shape), tuple(head_expected[k])) for k in wrong] or 'none'}"
        )
    model.load_state_dict({k: state_dict[k] for k in head_expected}, strict=False)
    conv_head = isinstance(model, timm.models.efficientnet.EfficientNet)
    head = apply_layout_bn_eps(_TimmHead(model, conv_head), pretrained)
    return ImageClassifier(backbone, head, num_classes)
