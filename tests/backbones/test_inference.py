"""The inference form (`backbones.fuse_for_inference`): same outputs as the plain network, training untouched.

Batch-norm statistics are randomised first: with fresh statistics (mean 0, variance 1, gamma 1,
beta 0) a fold is nearly the identity and a wrong fold could pass unnoticed.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

from backbones import create_backbone, fuse_for_inference, list_backbones
from backbones._inference import FUSION_RTOL, ChannelsLast
from heads.deeplabv3 import SEGMENTATION_HEADS, create_segmentation_head
from heads.depth import DEPTH_HEADS, create_depth_head
from heads.ssdlite import create_detection_head


def randomise_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every batch norm non-trivial running statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                # Ordinary trained-net ranges; wider ones make deep nets (EfficientNetV2) ill-conditioned in
                # fp32, where even the plain network's fp32 output is far from its fp64 output.
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) * 0.45 + 0.8)
                if m.affine:
                    m.weight.copy_(torch.rand(c, generator=g) * 0.4 + 0.8)
                    m.bias.copy_(torch.randn(c, generator=g) * 0.1)
    return model.eval()


def relative_difference(a, b) -> float:
    worst = 0.0
    for x, y in zip(tree_flatten(a)[0], tree_flatten(b)[0], strict=True):
        assert x.shape == y.shape
        worst = max(worst, float((x - y).abs().max() / x.abs().max().clamp_min(1e-12)))
    return worst


def assert_as_accurate(plain: nn.Module, fused: nn.Module, x: Tensor) -> float:
    """The fused fp32 network is as close to the exact (float64) result as the plain fp32 network.

    The stated fp32 tolerance: the fused output's distance to the plain network's float64 output, relative
    to its largest magnitude, is at most twice the plain fp32 output's own distance plus 1e-6; and for
    well-conditioned networks (all but random-init EfficientNetV2 here) fused and plain agree to
    `FUSION_RTOL`. Returns the fused-vs-plain fp32 difference.
    """
    with torch.no_grad():
        exact = copy.deepcopy(plain).double()(x.double())
        plain32, fused32 = plain(x), fused(x)
    err_plain, err_fused = relative_difference(exact, plain32), relative_difference(exact, fused32)
    assert err_fused <= 2 * err_plain + 1e-6, (err_fused, err_plain)
    difference = relative_difference(plain32, fused32)
    if err_plain < FUSION_RTOL / 10:  # well conditioned
        assert difference < FUSION_RTOL
    return difference


def count_norms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@functools.cache
def _backbone(name: str) -> nn.Module:
    torch.manual_seed(0)
    return randomise_norms(create_backbone(name, output_stride=16))


# An input that is not the probe (batch 2, odd size), so equality is not only where the fold was checked.
X = torch.randn(2, 3, 97, 75, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("name", list_backbones())
def test_every_backbone_fused_equals_plain(name, channels_last):
    plain = _backbone(name)
    fused = fuse_for_inference(plain, channels_last=channels_last)
    assert_as_accurate(plain, fused, X)
    # It did fold: every batch norm directly after a convolution is gone (our backbones have no other kind).
    assert count_norms(fused) == 0, f"{name}: {count_norms(fused)} batch norms left unfused"
    assert fused.fused_pairs == count_norms(plain)
    assert isinstance(fused, ChannelsLast) == channels_last
    if not channels_last:  # in float64 the fold is exact up to rounding, for every network
        plain64 = copy.deepcopy(plain).double()
        with torch.no_grad():
            assert relative_difference(plain64(X.double()), fuse_for_inference(plain64)(X.double())) < 1e-9


def _head_cases():
    info = _backbone("mobilenet_v3_large").feature_info
    for head in sorted(SEGMENTATION_HEADS):
        yield f"segmentation-{head}", lambda head=head: create_segmentation_head(head, info, 5)
    for head in sorted(DEPTH_HEADS):
        yield f"depth-{head}", lambda head=head: create_depth_head(head, info)


class _Net(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module, dense: bool = True) -> None:
        super().__init__()
        self.backbone, self.head, self.dense = backbone, head, dense

    def forward(self, x: Tensor):
        """(N, 3, H, W) -> the head's outputs (dense heads at the input size)."""
        features = self.backbone(x)
        return self.head(features, output_size=x.shape[-2:]) if self.dense else self.head(features)


@pytest.mark.parametrize("case", [name for name, _ in _head_cases()])
def test_every_head_fused_equals_plain(case):
    torch.manual_seed(0)
    head = randomise_norms(dict(_head_cases())[case](), seed=2)
    net = _Net(_backbone("mobilenet_v3_large"), head).eval()
    fused = fuse_for_inference(net, channels_last=True)
    assert_as_accurate(net, fused, X)
    assert count_norms(fused) == 0


def test_detection_network_fused_equals_plain():
    torch.manual_seed(0)
    backbone = randomise_norms(create_backbone("mobilenet_v3_large", feature_location="expansion"))
    head = randomise_norms(create_detection_head("ssdlite", backbone.feature_info, 7), seed=3)
    net = _Net(backbone, head, dense=False).eval()
    x = torch.randn(2, 3, 160, 160)
    fused = fuse_for_inference(net, channels_last=True)
    assert_as_accurate(net, fused, x)
    assert count_norms(fused) == 0


def test_torchvision_model_fuses_too():
    # The benchmarks give torchvision the same treatment; its Conv2dNormActivation blocks fold the same way.
    from torchvision.models import mobilenet_v3_small

    net = randomise_norms(mobilenet_v3_small(weights=None))
    fused = fuse_for_inference(net)
    assert_as_accurate(net, fused, X)
    assert count_norms(fused) == 0


def test_original_untouched_and_training_unchanged():
    torch.manual_seed(0)
    model = create_backbone("mobilenet_v3_small", output_stride=16)
    twin = copy.deepcopy(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    fused = fuse_for_inference(model)
    assert model.training, "fusion must give the model back in the mode it was in"
    wrapper = nn.Sequential(copy.deepcopy(model).eval())  # a wrapper in training mode around an eval network
    fuse_for_inference(wrapper)
    assert wrapper.training and not wrapper[0].training, "every module keeps its own mode"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(p.requires_grad for p in fused.parameters())
    assert all(p.requires_grad for p in model.parameters())

    # Training the model after fusing a copy equals training one that was never fused, bit for bit.
    def train(net: nn.Module) -> list[Tensor]:
        torch.manual_seed(5)
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        for _ in range(2):
            x = torch.randn(2, 3, 64, 64)
            loss = sum(f.square().mean() for f in net(x))
            opt.zero_grad()
            loss.backward()
            opt.step()
        return list(net.state_dict().values())

    for a, b in zip(train(model), train(twin), strict=True):
        assert torch.equal(a, b)


class _SharedConvOutput(nn.Module):
    """Reads the conv's output twice, once through the batch norm and once directly (a fold is wrong)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return self.bn(y) + y


def test_wrong_fold_is_caught():
    model = randomise_norms(_SharedConvOutput())
    with pytest.raises(RuntimeError, match="differs from the original"):
        fuse_for_inference(model)


def test_conv_read_by_two_modules_is_not_folded():
    class TwoReaders(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn, self.other = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU()

        def forward(self, x: Tensor) -> Tensor:
            y = self.conv(x)
            return self.bn(y) + self.other(y)

    model = randomise_norms(TwoReaders())
    fused = fuse_for_inference(model)
    assert fused.fused_pairs == 0 and count_norms(fused) == 1
    with torch.no_grad():
        assert torch.equal(model(X), fused(X))
