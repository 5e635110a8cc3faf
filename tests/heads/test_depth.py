import pytest
import torch
from torch import nn

from backbones import FeatureInfo, create_backbone, list_backbones
from backbones.complexity import count_macs
from heads.depth import DEPTH_HEADS, FusionDecoder, NNConv5Decoder, create_depth_head

# One of each family that registers (the list grows as families land); mobilenet_v2 always exists.
REPRESENTATIVE = [
    "mobilenet_v1",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "ghostnet",
    "shufflenet_v2",
    "xception",
]
MOBILENET_V1 = FeatureInfo((64, 128, 256, 512, 1024), (2, 4, 8, 16, 32))


class _Net(nn.Module):
    """Backbone + decoder, as the task composes them."""

    def __init__(self, backbone, head):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x):
        return self.head(self.backbone(x), output_size=x.shape[-2:])


@pytest.mark.parametrize("head", sorted(DEPTH_HEADS))
@pytest.mark.parametrize("backbone", [b for b in REPRESENTATIVE if b in list_backbones()])
def test_depth_at_input_size(backbone, head):
    net = _Net(create_backbone(backbone), None)
    net.head = create_depth_head(head, net.backbone.feature_info, max_depth=10.0)
    net.eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, 70, 90))  # not a multiple of 32
    assert out.shape == (2, 1, 70, 90)
    assert (out > 0).all() and (out < 10).all()


@pytest.mark.parametrize("head", sorted(DEPTH_HEADS))
@pytest.mark.parametrize("output_stride", [16, 8])
def test_dilated_backbone(head, output_stride):
    backbone = create_backbone("mobilenet_v2", output_stride=output_stride)
    decoder = create_depth_head(head, backbone.feature_info, output="inverse")
    out = decoder(backbone(torch.randn(1, 3, 64, 80)), output_size=(64, 80))
    assert out.shape == (1, 1, 64, 80) and (out > 0).all()


def test_nnconv5_is_fastdepth_on_mobilenet_v1_channels():
    decoder = NNConv5Decoder(MOBILENET_V1)
    pointwise = [m for m in decoder.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    depthwise = [m for m in decoder.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    # 1024 -> 512 -> 256 -> 128 -> 64 -> 32 -> 1, depthwise 5x5; additive skips need no projection.
    assert [(m.in_channels, m.out_channels) for m in pointwise] == [
        (1024, 512),
        (512, 256),
        (256, 128),
        (128, 64),
        (64, 32),
        (32, 1),
    ]
    assert all(m.kernel_size == (5, 5) for m in depthwise) and len(depthwise) == 5
    assert sorted(decoder.skip_levels.values()) == [0, 1, 2]  # strides 2, 4, 8
    assert all(isinstance(p, nn.Identity) for p in decoder.skip_proj.values())


def test_nnconv5_decoder_macs_hand_computed():
    # Stage k at side 7 * 2^k: depthwise c_in * 25 + pointwise c_in * c_out per pixel, then 32 -> 1 at 112
    # (the last upsampling comes after the final 1x1 conv: the same map, a quarter of its MACs).
    expected = (
        sum(
            (7 * 2**k) ** 2 * (c_in * 25 + c_in * c_out)
            for k, (c_in, c_out) in enumerate([(1024, 512), (512, 256), (256, 128), (128, 64), (64, 32)])
        )
        + 112 * 112 * 32
    )
    features = [torch.randn(1, c, 224 // s, 224 // s) for c, s in zip(MOBILENET_V1.channels, MOBILENET_V1.strides)]

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.decoder = NNConv5Decoder(MOBILENET_V1)

        def forward(self, *maps):
            return self.decoder(list(maps), output_size=(224, 224))

    assert count_macs(Wrap(), *features) == expected  # about 0.169 G


@pytest.mark.skipif("mobilenet_v1" not in list_backbones(), reason="mobilenet_v1 is not registered yet")
def test_fastdepth_paper_macs():
    # FastDepth (ICRA 2019): MobileNet encoder 0.57 GMACs at 224x224; with NNConv5 + additive skips
    # about 0.75 GMACs before NetAdapt pruning (which gives the paper's 0.37).
    backbone = create_backbone("mobilenet_v1")
    assert backbone.feature_info == MOBILENET_V1
    net = _Net(backbone, NNConv5Decoder(backbone.feature_info))
    x = torch.randn(1, 3, 224, 224)
    assert count_macs(backbone, x) / 1e9 == pytest.approx(0.57, rel=0.05)
    assert count_macs(net, x) / 1e9 == pytest.approx(0.75, rel=0.10)


@pytest.mark.parametrize("output_size", [None, (224, 224), (70, 90)])
def test_nnconv5_upsamples_last_after_the_final_conv_with_the_same_result(output_size):
    # FastDepth's order: upsample the last stage's 32 channels, then the 1x1 conv and the sigmoid. Ours runs
    # those on the half-size map and upsamples the depth; per-pixel ops commute with nearest upsampling.
    torch.manual_seed(0)
    decoder = NNConv5Decoder(MOBILENET_V1).double().eval()
    size = output_size or (224, 224)
    features = [
        torch.randn(2, c, -(-size[0] // s), -(-size[1] // s), dtype=torch.float64)
        for c, s in zip(MOBILENET_V1.channels, MOBILENET_V1.strides)
    ]
    with torch.no_grad():
        ours = decoder(features, output_size=output_size)
        x = features[-1]
        for i, stage in enumerate(decoder.stages):
            x = stage(x)
            if str(i) in decoder.skip_levels:
                skip = features[decoder.skip_levels[str(i)]]
                x = nn.functional.interpolate(x, size=skip.shape[-2:], mode="nearest") + skip
            elif i == len(decoder.stages) - 1 and output_size is not None:
                x = nn.functional.interpolate(x, size=output_size, mode="nearest")
            else:
                x = nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
        fastdepth_order = decoder.depth(decoder.final(x))
    assert ours.shape == fastdepth_order.shape == (2, 1, *size)
    torch.testing.assert_close(ours, fastdepth_order, rtol=1e-12, atol=1e-12)


def test_fusion_uses_the_deepest_map_of_each_stride():
    info = FeatureInfo((16, 24, 32, 96, 320), (2, 4, 8, 8, 8))
    decoder = FusionDecoder(info)
    assert decoder.levels == [0, 1, 4] and decoder.output_stride == 2


def test_bad_arguments():
    with pytest.raises(ValueError, match="one entry per 2x upsampling"):
        NNConv5Decoder(MOBILENET_V1, decoder_channels=(256, 128))
    with pytest.raises(ValueError, match="unknown depth output"):
        NNConv5Decoder(MOBILENET_V1, output="disparity")
    with pytest.raises(ValueError, match="unknown depth head"):
        create_depth_head("dpt", MOBILENET_V1)
