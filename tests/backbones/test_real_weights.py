"""The real ImageNet checkpoints (LITEDENSE_TEST_WEIGHTS) load faithfully and classify real photos as their source.

- torchvision's MobileNetV2 IMAGENET1K_V1 file, against `torchvision.models.mobilenet_v2()` with it loaded;
- the EfficientNet-Lite0 file in the lukemelas EfficientNet-PyTorch layout, against the PyPI package
  `efficientnet-lite-pytorch` 0.1.0 (`EfficientNet.from_name("efficientnet-lite0")`, TF "same" padding).

Every level our backbone returns (stage and expansion taps) must equal an activation of the source at
atol 1e-5, and our backbone with the checkpoint's classifier (`create_classifier`) must give the
source's top-1 class on COCO-mini photos (LITEDENSE_TEST_DATA) whose main object is an ImageNet class.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from backbones import create_backbone
from backbones.classifier import create_classifier
from tests.backbones.weights_reference import level_differences, module_outputs

ATOL = 1e-5
MOBILENET_V2 = "mobilenet_v2-b0353104.pth"
LITE0 = "efficientnet-lite0-57934424.pth"
# COCO-mini val2017 photos whose main object is an ImageNet class, with the class both source models give.
PHOTOS = {
    "000000519208.jpg": "Indian elephant",
    "000000519611.jpg": "ice bear",
    "000000244592.jpg": "zebra",
    "000000407574.jpg": "banana",
    "000000160012.jpg": "pizza",
    "000000073326.jpg": "refrigerator",
    "000000406129.jpg": "racket",
    "000000062554.jpg": "broccoli",
}


@pytest.fixture(scope="module")
def weights() -> Path:
    root = os.environ.get("LITEDENSE_TEST_WEIGHTS")
    if not root or not Path(root).is_dir():
        pytest.skip("real ImageNet weights not found: set LITEDENSE_TEST_WEIGHTS to the shared/weights folder")
    return Path(root)


@pytest.fixture(scope="module")
def photos(shared_data) -> dict[str, Image.Image]:
    folder = shared_data / "detection" / "coco_mini" / "val2017"
    return {name: Image.open(folder / name).convert("RGB") for name in PHOTOS}


def _preprocess(image: Image.Image, mean: float | tuple, std: float | tuple) -> torch.Tensor:
    """Resize the short side to 256, centre-crop 224, normalise: (1, 3, 224, 224)."""
    import torchvision.transforms as T

    return T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(mean, std)])(image)[None]


def _torchvision_mobilenet_v2(path: Path) -> torch.nn.Module:
    import torchvision

    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()


def _lukemelas_lite0(path: Path) -> torch.nn.Module:
    lukemelas = pytest.importorskip("efficientnet_lite_pytorch", reason="pip install .[dev]")
    model = lukemelas.EfficientNet.from_name("efficientnet-lite0")  # static "same" padding for 224x224
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()


CASES = {
    # name: (file, source builder, normalisation: torchvision's ImageNet mean/std; TF Lite's (x - 127) / 128)
    "mobilenet_v2": (MOBILENET_V2, _torchvision_mobilenet_v2, ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))),
    "efficientnet_lite0": (LITE0, _lukemelas_lite0, ((127 / 255,) * 3, (128 / 255,) * 3)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_features_equal_the_source_at_every_level(weights, name):
    file, build, _ = CASES[name]
    source = build(weights / file)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    outputs = module_outputs(source, x)
    for location in ("stage", "expansion"):
        ours = create_backbone(name, pretrained=weights / file, feature_location=location).eval()
        with torch.no_grad():
            diffs = level_differences(ours(x), outputs)
        assert max(diffs) <= ATOL, f"{name} {location}: max abs difference per level {diffs}"


@pytest.mark.parametrize("name", list(CASES))
def test_top1_on_real_photos_equals_the_source(weights, photos, name):
    file, build, (mean, std) = CASES[name]
    source = build(weights / file)
    ours = create_classifier(name, pretrained=weights / file).eval()
    import torchvision

    categories = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]
    batch = torch.cat([_preprocess(photos[p], mean, std) for p in PHOTOS])
    with torch.no_grad():
        expected, logits = source(batch), ours(batch)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
    got = {p: categories[i] for p, i in zip(PHOTOS, logits.argmax(1).tolist())}
    source_top1 = {p: categories[i] for p, i in zip(PHOTOS, expected.argmax(1).tolist())}
    assert got == source_top1 == PHOTOS
