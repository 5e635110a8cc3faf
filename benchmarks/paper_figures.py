"""Print the parameter and MAC counts the README quotes: `python benchmarks/paper_figures.py`.

Each row is counted with `backbones.complexity` (convolution and linear MACs, as the papers count them);
the tests assert the same figures against the papers within their tolerances.
"""

from __future__ import annotations

import timm
import torch
from torch import Tensor, nn

from backbones import create_backbone
from backbones.complexity import count_macs, count_params
from backbones.skipblocknet import SkipblockNetClassifier
from heads.deeplabv3 import create_segmentation_head
from heads.depth import NNConv5Decoder
from heads.ssdlite import SSDLiteHead


class Dense(nn.Module):
    """Backbone + head, as the tasks compose them."""

    def __init__(self, backbone: nn.Module, head: nn.Module, with_size: bool = False) -> None:
        super().__init__()
        self.backbone, self.head, self.with_size = backbone, head, with_size

    def forward(self, x: Tensor):
        features = self.backbone(x)
        return self.head(features, output_size=x.shape[-2:]) if self.with_size else self.head(features)


class PooledClassifier(nn.Module):
    """Backbone + global average pooling + a 1000-way linear layer (ShuffleNetV1's classifier)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(backbone.feature_info.channels[-1], 1000, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.backbone(x)[-1].mean((2, 3)))


def rows() -> list[tuple[str, nn.Module, int, str]]:
    """(what, model, input side, the paper's or reference figure)."""
    mnv2_os16 = create_backbone("mobilenet_v2", output_stride=16)
    mnv3_os16 = create_backbone("mobilenet_v3_large", output_stride=16)
    mnv2_ssd = create_backbone("mobilenet_v2", feature_location="expansion", out_indices=(3, 4))
    mnv1 = create_backbone("mobilenet_v1")
    return [
        ("MobileNetV2 classifier (timm)", timm.create_model("mobilenetv2_100"), 224, "3.4M / 300M"),
        ("GhostNet 1.0x classifier (timm)", timm.create_model("ghostnet_100"), 224, "5.2M / 141M"),
        ("ShuffleNetV1 1.0x g=3 classifier", PooledClassifier(create_backbone("shufflenet_v1")), 224, "1.9M / 138M"),
        ("SkipblockNet classifier", SkipblockNetClassifier(), 224, "5.53M / 237M"),
        (
            "Mobile DeepLabv3, MobileNetV2, OS 16, 21 classes",
            Dense(mnv2_os16, create_segmentation_head("deeplabv3_mobile", mnv2_os16.feature_info, 21)),
            513,
            "2.11M / 2.75B",
        ),
        (
            "LR-ASPP, MobileNetV3-Large, 21 classes",
            Dense(mnv3_os16, create_segmentation_head("lraspp", mnv3_os16.feature_info, 21)),
            513,
            "torchvision 3,221,538 params",
        ),
        (
            "SSDLite, MobileNetV2, 91 classes",
            Dense(mnv2_ssd, SSDLiteHead(mnv2_ssd.feature_info, 91)),
            320,
            "4.3M / 0.8B",
        ),
        (
            "MobileNet(V1)-NNConv5",
            Dense(mnv1, NNConv5Decoder(mnv1.feature_info), with_size=True),
            224,
            "~0.75 GMACs before pruning",
        ),
    ]


def main() -> None:
    print("| model | input | params | MACs | paper / reference |")
    print("|---|---|---|---|---|")
    for what, model, side, reference in rows():
        macs = count_macs(model, torch.zeros(1, 3, side, side))
        print(f"| {what} | {side} | {count_params(model):,} | {macs / 1e6:,.1f}M | {reference} |")


if __name__ == "__main__":
    main()
