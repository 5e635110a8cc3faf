"""Our ShuffleNetV1 / ShuffleNetV2 against the reference code: same weights, same activations, same costs."""

import math
import urllib.error

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from backbones import WeightsMismatchError, create_backbone
from backbones.complexity import count_macs, count_params

HEIGHT, WIDTH = 67, 93  # odd sizes no stride divides


def randomize_bn_(model: nn.Module) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine terms, so eval outputs test the weights."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model


def sizes(features):
    return [tuple(f.shape[-2:]) for f in features]


def expected_sizes(strides, height=HEIGHT, width=WIDTH):
    return [(math.ceil(height / s), math.ceil(width / s)) for s in strides]


# --- The official ShuffleNetV1 (megvii-model/ShuffleNet-Series, ShuffleNetV1/blocks.py + network.py),
# --- transcribed independently of our implementation so its state-dict keys and arithmetic are the reference.


class OfficialV1Block(nn.Module):
    def __init__(self, inp, oup, *, group, first_group, mid_channels, stride):
        super().__init__()
        self.stride, self.group = stride, group
        outputs = oup - inp if stride == 2 else oup
        self.branch_main_1 = nn.Sequential(
            nn.Conv2d(inp, mid_channels, 1, 1, 0, groups=1 if first_group else group, bias=False),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, mid_channels, 3, stride, 1, groups=mid_channels, bias=False),
            nn.BatchNorm2d(mid_channels),
        )
        self.branch_main_2 = nn.Sequential(
            nn.Conv2d(mid_channels, outputs, 1, 1, 0, groups=group, bias=False), nn.BatchNorm2d(outputs)
        )
        if stride == 2:
            self.branch_proj = nn.AvgPool2d(kernel_size=3, stride=2, padding=1)

    def forward(self, old_x):
        x = self.branch_main_1(old_x)
        if self.group > 1:
            n, c, h, w = x.shape
            x = x.reshape(n, c // self.group, self.group, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)
        x = self.branch_main_2(x)
        if self.stride == 1:
            return F.relu(x + old_x)
        return torch.cat((self.branch_proj(old_x), F.relu(x)), 1)


OFFICIAL_V1_CHANNELS = {
    (3, "0.5x"): [12, 120, 240, 480],
    (3, "1.0x"): [24, 240, 480, 960],
    (8, "0.5x"): [16, 192, 384, 768],
    (8, "1.0x"): [24, 384, 768, 1536],
}


class OfficialV1(nn.Module):
    def __init__(self, group, model_size):
        super().__init__()
        channels = OFFICIAL_V1_CHANNELS[(group, model_size)]
        inp = channels[0]
        self.first_conv = nn.Sequential(nn.Conv2d(3, inp, 3, 2, 1, bias=False), nn.BatchNorm2d(inp), nn.ReLU(True))
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        features = []
        for stage, (repeats, oup) in enumerate(zip([4, 8, 4], channels[1:])):
            for i in range(repeats):
                features.append(
                    OfficialV1Block(
                        inp, oup, group=group, first_group=stage == 0 and i == 0, mid_channels=oup // 4,
                        stride=2 if i == 0 else 1,
                    )
                )  # fmt: skip
                inp = oup
        self.features = nn.Sequential(*features)
        self.globalpool = nn.AvgPool2d(7)
        self.classifier = nn.Sequential(nn.Linear(channels[-1], 1000, bias=False))

    def taps(self, x):
        a = self.first_conv(x)
        b = self.maxpool(a)
        c = self.features[:4](b)
        d = self.features[4:12](c)
        return [a, b, c, d, self.features[12:](d)]


def save_official_checkpoint(model, path):
    """As the official train.py saves: {'state_dict': DataParallel's 'module.'-prefixed keys}."""
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)


@pytest.mark.parametrize("groups,size,width", [(3, "1.0x", 1.0), (8, "0.5x", 0.5)])
def test_v1_official_checkpoint_reproduces_official_activations(tmp_path, groups, size, width):
    torch.manual_seed(0)
    official = randomize_bn_(OfficialV1(groups, size)).eval()
    path = tmp_path / f"snetv1_group{groups}_{size}.pth.tar"
    save_official_checkpoint(official, path)
    ours = create_backbone("shufflenet_v1", groups=groups, width_mult=width, pretrained=path).eval()
    assert ours.feature_info.strides == (2, 4, 8, 16, 32)
    images = torch.randn(2, 3, HEIGHT, WIDTH)
    with torch.no_grad():
        expected, got = official.taps(images), ours(images)
    assert sizes(got) == expected_sizes(ours.feature_info.strides)
    for level, (a, b) in enumerate(zip(got, expected)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=f"level {level}")
    # Our parameters are exactly the official ones (classifier aside), under the same names.
    assert set(ours.state_dict()) == {k for k in official.state_dict() if not k.startswith("classifier")}


def torchvision_taps(model, x):
    """torchvision ShuffleNetV2's intermediate activations at our five taps."""
    a = model.conv1(x)
    b = model.maxpool(a)
    c = model.stage2(b)
    d = model.stage3(c)
    return [a, b, c, d, model.conv5(model.stage4(d))]


@pytest.mark.parametrize("width,builder", [(1.0, "shufflenet_v2_x1_0"), (0.5, "shufflenet_v2_x0_5")])
def test_v2_torchvision_file_reproduces_torchvision_activations(tmp_path, width, builder):
    torch.manual_seed(0)
    reference = randomize_bn_(getattr(torchvision.models, builder)()).eval()
    path = tmp_path / "shufflenet_v2.pth"
    torch.save(reference.state_dict(), path)
    ours = create_backbone("shufflenet_v2", width_mult=width, pretrained=path).eval()
    assert ours.feature_info.strides == (2, 4, 8, 16, 32)
    assert ours.feature_info.channels[-1] == reference.fc.in_features
    images = torch.randn(2, 3, HEIGHT, WIDTH)
    with torch.no_grad():
        expected, got = torchvision_taps(reference, images), ours(images)
    assert sizes(got) == expected_sizes(ours.feature_info.strides)
    for level, (a, b) in enumerate(zip(got, expected)):
        torch.testing.assert_close(a, b, msg=f"level {level}")
    assert set(ours.state_dict()) == {k for k in reference.state_dict() if not k.startswith("fc.")}


def test_v2_pretrained_true_loads_torchvision_weights(monkeypatch):
    """pretrained=True fetches torchvision's URL; the fetch is faked here (offline), the loading is real."""
    torch.manual_seed(0)
    reference = randomize_bn_(torchvision.models.shufflenet_v2_x0_5()).eval()
    urls = []

    def fake_fetch(url, **kwargs):
        urls.append(url)
        return reference.state_dict()

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_fetch)
    ours = create_backbone("shufflenet_v2", width_mult=0.5, pretrained=True).eval()
    assert urls == [torchvision.models.ShuffleNet_V2_X0_5_Weights.IMAGENET1K_V1.url]
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(images)[-1], torchvision_taps(reference, images)[-1])


@pytest.mark.parametrize("width", [0.5, 1.0, 1.5, 2.0])
def test_v2_offline_error_names_torchvision_url(monkeypatch, width):
    def offline(url, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match=r"download\.pytorch\.org/models/shufflenetv2_x.*pretrained="):
        create_backbone("shufflenet_v2", width_mult=width, pretrained=True)


@pytest.mark.parametrize("groups,width,name", [(3, 1.0, "1.0x.pth.tar"), (8, 0.5, "snetv1_group8_0.5x.pth.tar")])
def test_v1_pretrained_true_says_where_the_official_files_are(groups, width, name):
    with pytest.raises(ValueError) as info:
        create_backbone("shufflenet_v1", groups=groups, width_mult=width, pretrained=True)
    message = str(info.value)
    assert "1drv.ms" in message and "ShuffleNet-Series" in message and name in message and "pretrained=" in message
    with pytest.raises(ValueError, match="no ImageNet weights are published.*groups=4"):
        create_backbone("shufflenet_v1", groups=4, pretrained=True)


# --- Complexity of the ImageNet classifiers (our body + global pool + Linear to 1000), at 224x224.


class Classifier(nn.Module):
    def __init__(self, backbone, bias):
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(backbone.feature_info.channels[-1], 1000, bias=bias)

    def forward(self, x):
        return self.fc(self.backbone(x)[-1].mean((2, 3)))  # (N, 1000)


# (groups, width_mult) -> (params in M, MFLOPs) as published. Groups 3 and 8: the official code's README
# (megvii-model/ShuffleNet-Series, ShuffleNetV1 table, counted on its own code). Groups 1, 2, 4: the
# paper's Table 1 ("Complexity", MFLOPs only; the paper gives no parameter counts for them).
V1_PUBLISHED = {
    (3, 0.5): (0.7, 38),
    (3, 1.0): (1.9, 138),
    (3, 1.5): (3.4, 292),
    (3, 2.0): (5.4, 524),
    (8, 0.5): (1.0, 40),
    (8, 1.0): (2.4, 138),
    (8, 1.5): (4.3, 290),
    (8, 2.0): (6.5, 522),
    (1, 1.0): (None, 143),
    (2, 1.0): (None, 140),
    (4, 1.0): (None, 133),
}


@pytest.mark.parametrize("groups,width", list(V1_PUBLISHED))
def test_v1_params_and_macs_match_published(groups, width):
    params_m, mflops = V1_PUBLISHED[(groups, width)]
    model = Classifier(create_backbone("shufflenet_v1", groups=groups, width_mult=width), bias=False)
    macs = count_macs(model, torch.randn(1, 3, 224, 224)) / 1e6
    assert macs == pytest.approx(mflops, rel=0.02)
    if params_m is not None:
        # Published counts are rounded to 0.1M: allow that rounding on top of 2%.
        assert count_params(model) / 1e6 == pytest.approx(params_m, rel=0.02, abs=0.05)


def test_v2_params_and_macs_match_paper_and_torchvision():
    model = Classifier(create_backbone("shufflenet_v2"), bias=True)
    assert count_params(model) == count_params(torchvision.models.shufflenet_v2_x1_0())  # 2,278,604
    assert count_params(model) / 1e6 == pytest.approx(
        2.3, rel=0.03
    )  # official README (ShuffleNetV2 1.0x: 146M FLOPs, 2.3M params)
    assert count_macs(model, torch.randn(1, 3, 224, 224)) / 1e6 == pytest.approx(146, rel=0.05)


# --- Dense prediction: dilation, odd sizes, out_indices, input channels.


@pytest.mark.parametrize("name,options", [("shufflenet_v1", {"groups": 3}), ("shufflenet_v2", {})])
@pytest.mark.parametrize("output_stride,strides", [(16, (2, 4, 8, 16, 16)), (8, (2, 4, 8, 8, 8))])
def test_dilation(name, options, output_stride, strides):
    torch.manual_seed(0)
    os32 = randomize_bn_(create_backbone(name, **options)).eval()
    dense = create_backbone(name, output_stride=output_stride, **options).eval()
    assert dense.feature_info.strides == strides
    assert dense.feature_info.channels == os32.feature_info.channels
    dense.load_state_dict(os32.state_dict())  # the same weights, strictly: dilation adds no parameters
    images = torch.randn(1, 3, HEIGHT, WIDTH)
    with torch.no_grad():
        a, b = os32(images), dense(images)
    assert sizes(b) == expected_sizes(strides)
    undilated = strides.index(output_stride) + 1  # levels up to the first one at the output stride
    for level in range(undilated):
        torch.testing.assert_close(a[level], b[level], rtol=0, atol=0)


def test_v1_dilated_downsampling_unit_keeps_its_shortcut():
    backbone = create_backbone("shufflenet_v1", output_stride=16)
    first, second = backbone.features[12], backbone.features[13]  # stage 4: the unit that used to downsample
    assert first.branch_main_1[3].stride == (1, 1) and first.branch_main_1[3].dilation == (1, 1)
    assert first.branch_proj.stride == 1
    assert second.branch_main_1[3].dilation == (2, 2) and second.branch_main_1[3].padding == (2, 2)


def test_v2_dilated_units():
    backbone = create_backbone("shufflenet_v2", output_stride=8)
    stage3, stage4 = backbone.stage3, backbone.stage4
    assert stage3[0].branch1[0].stride == (1, 1) and stage3[0].branch1[0].dilation == (1, 1)
    assert stage3[1].branch2[3].dilation == (2, 2)
    assert stage4[0].branch2[3].stride == (1, 1) and stage4[0].branch2[3].dilation == (2, 2)
    assert stage4[1].branch2[3].dilation == (4, 4)


@pytest.mark.parametrize(
    "name,options",
    [
        ("shufflenet_v1", {"groups": 1}),
        ("shufflenet_v1", {"groups": 2}),
        ("shufflenet_v1", {"groups": 4}),
        ("shufflenet_v1", {"groups": 8, "width_mult": 0.5}),
        ("shufflenet_v1", {"groups": 3, "width_mult": 1.5}),
        ("shufflenet_v2", {"width_mult": 1.5}),
        ("shufflenet_v2", {"width_mult": 2.0}),
    ],
)
def test_every_variant_gives_ceil_sizes_at_os8(name, options):
    backbone = create_backbone(name, output_stride=8, **options).eval()
    with torch.no_grad():
        features = backbone(torch.randn(1, 3, HEIGHT, WIDTH))
    assert [f.shape[1] for f in features] == list(backbone.feature_info.channels)
    assert sizes(features) == expected_sizes(backbone.feature_info.strides)


@pytest.mark.parametrize("name", ["shufflenet_v1", "shufflenet_v2"])
def test_out_indices_drops_unused_modules_but_checks_the_whole_file(tmp_path, name):
    torch.manual_seed(0)
    full = randomize_bn_(create_backbone(name)).eval()
    path = tmp_path / "weights.pth"
    torch.save(full.state_dict(), path)
    shallow = create_backbone(name, pretrained=path, out_indices=(0, 2)).eval()
    assert shallow.feature_info == full.feature_info.select((0, 2))
    assert count_params(shallow) < count_params(full) / 5  # stages 3, 4 (and conv5) are gone
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, got = full(images), shallow(images)
    torch.testing.assert_close(got[0], expected[0])
    torch.testing.assert_close(got[1], expected[2])
    shallow.train()
    sum(f.mean() for f in shallow(images)).backward()
    assert all(p.grad is not None for p in shallow.parameters())
    # A truncated net still refuses a file of another width: the whole checkpoint is checked first.
    other = create_backbone(name, width_mult=0.5) if name == "shufflenet_v2" else create_backbone(name, groups=8)
    torch.save(other.state_dict(), path)
    with pytest.raises(WeightsMismatchError):
        create_backbone(name, pretrained=path, out_indices=(0,))


def test_v2_grayscale_stem_adapted_from_rgb_weights(tmp_path):
    """in_chans=1 sums the RGB stem kernels (timm's adapt_input_conv): gray x behaves as RGB (x, x, x)."""
    torch.manual_seed(0)
    path = tmp_path / "tv.pth"
    torch.save(randomize_bn_(torchvision.models.shufflenet_v2_x0_5()).state_dict(), path)
    rgb = create_backbone("shufflenet_v2", width_mult=0.5, pretrained=path).eval()
    gray = create_backbone("shufflenet_v2", width_mult=0.5, pretrained=path, in_chans=1).eval()
    four = create_backbone("shufflenet_v2", width_mult=0.5, pretrained=path, in_chans=4).eval()
    x = torch.randn(1, 1, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(gray(x)[-1], rgb(x.repeat(1, 3, 1, 1))[-1], rtol=1e-4, atol=1e-5)
        assert four(torch.randn(1, 4, 40, 56))[-1].shape[1] == 1024


def test_v1_in_chans_adapts_official_stem(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "1.0x.pth.tar"
    save_official_checkpoint(OfficialV1(3, "1.0x"), path)
    backbone = create_backbone("shufflenet_v1", pretrained=path, in_chans=4)
    assert backbone.first_conv[0].weight.shape == (24, 4, 3, 3)


# --- Bad input gets a clear error.


@pytest.mark.parametrize("groups,width", [(5, 1.0), (2, 1.5), (1, 0.5), (3, 0.75)])
def test_v1_unsupported_combination_lists_valid_ones(groups, width):
    with pytest.raises(ValueError, match=rf"groups={groups}, width_mult={width}.*groups 1, 2, 3, 4 or 8 at"):
        create_backbone("shufflenet_v1", groups=groups, width_mult=width)


def test_v2_unsupported_width_lists_valid_ones():
    with pytest.raises(ValueError, match=r"width_mult 0.75 .*\[0.5, 1.0, 1.5, 2.0\]"):
        create_backbone("shufflenet_v2", width_mult=0.75)


@pytest.mark.parametrize("name", ["shufflenet_v1", "shufflenet_v2"])
def test_expansion_taps_refused(name):
    with pytest.raises(ValueError, match=f"{name} has no inverted-residual expansion"):
        create_backbone(name, feature_location="expansion")


def test_wrong_checkpoints_are_rejected_with_the_mismatching_keys(tmp_path):
    v1_g3 = tmp_path / "1.0x.pth.tar"
    save_official_checkpoint(OfficialV1(3, "1.0x"), v1_g3)
    with pytest.raises(WeightsMismatchError, match=r"(?s)groups=8.*wrong shape: features\.0\.branch_main_1\.0\.weight"):
        create_backbone("shufflenet_v1", groups=8, pretrained=v1_g3)
    tv = tmp_path / "tv_x1_0.pth"
    torch.save(torchvision.models.shufflenet_v2_x1_0().state_dict(), tv)
    with pytest.raises(
        WeightsMismatchError, match=r"(?s)missing .*features\.0\.branch_main_1.*unexpected .*conv1\.0\.weight"
    ):
        create_backbone("shufflenet_v1", pretrained=tv)
    with pytest.raises(WeightsMismatchError, match=r"(?s)width_mult=0.5.*wrong shape: conv5\.0\.weight"):
        create_backbone("shufflenet_v2", width_mult=0.5, pretrained=tv)
    with pytest.raises(WeightsMismatchError, match=r"(?s)missing .*conv1\.0\.weight"):
        create_backbone("shufflenet_v2", pretrained=v1_g3)
