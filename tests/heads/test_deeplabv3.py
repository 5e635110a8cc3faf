import functools
import math

import pytest
import torch
from torch import nn
from torchvision.models.segmentation.deeplabv3 import DeepLabHead
from torchvision.models.segmentation.lraspp import LRASPPHead as TorchvisionLRASPPHead

from backbones import FeatureInfo, create_backbone, list_backbones
from backbones.complexity import count_macs, count_params
from heads.deeplabv3 import ASPP, SEGMENTATION_HEADS, create_segmentation_head, rates_for_stride

# One of each family the issue names; those not registered yet are skipped.
REPRESENTATIVE = ["mobilenet_v2", "mobilenet_v3_large", "shufflenet_v2", "ghostnet", "efficientnet_b0", "xception65"]
# MobileNetV3-Large in stage mode at output stride 16, as the backbone issue specifies it.
MNV3_LARGE_INFO = FeatureInfo((16, 24, 40, 112, 960), (2, 4, 8, 16, 16))


@functools.cache
def _backbone(name: str, output_stride: int) -> nn.Module:
    torch.manual_seed(0)
    return create_backbone(name, output_stride=output_stride).eval()


def _copy_in_order(source: nn.Module, target: nn.Module) -> None:
    """Load `source`'s state into `target` by position (the two name their layers differently)."""
    src, dst = source.state_dict(), target.state_dict()
    assert [v.shape for v in src.values()] == [v.shape for v in dst.values()]
    target.load_state_dict(dict(zip(dst, src.values())))


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("head", sorted(SEGMENTATION_HEADS))
@pytest.mark.parametrize("backbone", REPRESENTATIVE)
def test_logits_at_head_stride(backbone, head, output_stride):
    if backbone not in list_backbones():
        pytest.skip(f"{backbone} is not registered yet")
    net = _backbone(backbone, output_stride)
    seg = create_segmentation_head(head, net.feature_info, 5).eval()
    images = torch.randn(2, 3, 67, 45)
    with torch.no_grad():
        logits = seg(net(images))
    s = seg.output_stride
    assert logits.shape == (2, 5, math.ceil(67 / s), math.ceil(45 / s))
    assert torch.isfinite(logits).all()


def test_mobile_deeplabv3_matches_mobilenet_v2_paper():
    # MobileNetV2 paper, Table 7: mobile DeepLabv3, OS 16, 21 classes: 2.11M parameters, 2.75B MAdds at 513x513.
    backbone = create_backbone("mobilenet_v2", output_stride=16)
    model = nn.Sequential(backbone, create_segmentation_head("deeplabv3_mobile", backbone.feature_info, 21))
    assert count_params(model) == pytest.approx(2.11e6, rel=0.03)
    assert count_macs(model, torch.zeros(1, 3, 513, 513)) == pytest.approx(2.75e9, rel=0.10)


def test_rates_follow_output_stride():
    assert rates_for_stride(16) == (6, 12, 18)
    assert rates_for_stride(8) == (12, 24, 36)
    info8 = FeatureInfo((24, 320), (4, 8))
    assert create_segmentation_head("deeplabv3", info8, 3).aspp.rates == (12, 24, 36)
    assert create_segmentation_head("deeplabv3_mobile", info8, 3).aspp.rates == ()


def test_lraspp_equals_torchvision_head():
    ours = create_segmentation_head("lraspp", MNV3_LARGE_INFO, 21).eval()
    theirs = TorchvisionLRASPPHead(40, 960, 21, 128).eval()
    assert count_params(ours) == count_params(theirs)
    _copy_in_order(theirs, ours)
    low, high = torch.randn(2, 40, 9, 7), torch.randn(2, 960, 5, 4)
    features = [None, None, low, None, high]
    torch.testing.assert_close(ours(features), theirs({"low": low, "high": high}))


def test_deeplabv3_can_be_torchvisions_head():
    ours = create_segmentation_head(
        "deeplabv3", MNV3_LARGE_INFO, 21, rates=(12, 24, 36), dropout=0.5, extra_conv=True
    ).eval()
    theirs = DeepLabHead(960, 21).eval()
    _copy_in_order(theirs, ours)
    high = torch.randn(2, 960, 6, 5)
    torch.testing.assert_close(ours([high]), theirs(high))


def test_lraspp_on_mobilenet_v3_large_matches_torchvision_param_count():
    if "mobilenet_v3_large" not in list_backbones():
        pytest.skip("mobilenet_v3_large is not registered yet")
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    backbone = create_backbone("mobilenet_v3_large", output_stride=16)
    assert backbone.feature_info == MNV3_LARGE_INFO
    ours = nn.Sequential(backbone, create_segmentation_head("lraspp", backbone.feature_info, 21))
    theirs = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21)
    assert count_params(ours) == pytest.approx(count_params(theirs), rel=0.03)


def test_separable_aspp_is_lighter():
    full = ASPP(320, 256, (6, 12, 18))
    separable = ASPP(320, 256, (6, 12, 18), separable=True)
    assert count_params(separable) < count_params(full) / 3


def test_deeplabv3plus_uses_stride4_features():
    info = FeatureInfo((16, 24, 32, 96, 320), (2, 4, 8, 16, 16))
    head = create_segmentation_head("deeplabv3plus", info, 4)
    assert head.low_index == 1 and head.output_stride == 4
    # At output stride 8 LR-ASPP must take the stage output at stride 8, not a deeper dilated map.
    info8 = FeatureInfo((16, 24, 40, 112, 960), (2, 4, 8, 8, 8))
    assert create_segmentation_head("lraspp", info8, 4).low_index == 2


def test_batch_of_one_trains_and_keeps_pooling_statistics():
    head = create_segmentation_head("deeplabv3_mobile", FeatureInfo((8, 32), (8, 16)), 3).train()
    pooling_bn = head.aspp.convs[-1].bn
    before = pooling_bn.running_mean.clone()
    logits = head([torch.randn(1, 8, 8, 8), torch.randn(1, 32, 4, 4)])
    logits.sum().backward()
    assert logits.shape == (1, 3, 4, 4)
    torch.testing.assert_close(pooling_bn.running_mean, before)
    assert head.aspp.convs[0][0].weight.grad is not None


def test_bad_head_arguments():
    info = FeatureInfo((32, 320), (8, 16))
    with pytest.raises(ValueError, match="unknown segmentation head 'aspp'"):
        create_segmentation_head("aspp", info, 3)
    with pytest.raises(ValueError, match="stride 4"):
        create_segmentation_head("deeplabv3plus", info, 3)
