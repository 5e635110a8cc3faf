"""SkipblockNet: reference parity at 224x224, checkpoint loading, any size, dilation, taps, gradients."""

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from backbones import WeightsMismatchError, create_backbone
from backbones.complexity import count_macs, count_params
from backbones.skipblocknet import SkipblockNetClassifier

# ---------------------------------------------------------------------------------------------------
# A minimal, independent re-statement of the reference (lusinlu/bias-loss-skipblocknet, skipnet.py:
# SkipNet with its `skipnet()` configuration), including its fixed 28 / 14 skip pooling. Module names
# and Sequential indices are the reference's, so its state dict has the published checkpoint's keys.
# ---------------------------------------------------------------------------------------------------


def _div8(v):
    new = max(8, int(v + 4) // 8 * 8)
    return new + 8 if new < 0.9 * v else new


class _HSwish(nn.Module):
    def forward(self, x):
        return x * (F.relu6(x + 3) / 6)


class _HSigmoid(nn.Module):
    def forward(self, x):
        return F.relu6(x + 3) / 6


class _SE(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        r = _div8(c // 4)
        self.fc = nn.Sequential(nn.Linear(c, r), nn.ReLU(inplace=True), nn.Linear(r, c), _HSigmoid())

    def forward(self, x):
        b, c = x.shape[:2]
        return x * self.fc(self.avg_pool(x).view(b, c)).view(b, c, 1, 1)


class _RefIR(nn.Module):
    def __init__(self, inp, hid, out, k, s, se, hs):
        super().__init__()
        self.identity = s == 1 and inp == out
        act = _HSwish if hs else (lambda: nn.ReLU(inplace=True))
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hid, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hid),
            act(),
            nn.Conv2d(hid, hid, k, s, (k - 1) // 2, groups=hid, bias=False),
            nn.BatchNorm2d(hid),
            act(),
            _SE(hid) if se else nn.Identity(),
            nn.Conv2d(hid, out, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out),
        )

    def forward(self, x):
        return x + self.conv(x) if self.identity else self.conv(x)


class _RefSkip(nn.Module):
    def __init__(self, inp, hid, out, k, size):
        super().__init__()
        self.size = size
        self.identity = inp == out
        self.core_block = nn.Sequential(
            nn.Conv2d(inp, hid, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hid),
            nn.ReLU(inplace=True),
            nn.Conv2d(hid, hid, k, 1, (k - 1) // 2, groups=hid, bias=False),
            nn.BatchNorm2d(hid),
            nn.ReLU(inplace=True),
            nn.Conv2d(hid, out, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out),
        )

    def forward(self, x):
        x = F.adaptive_avg_pool2d(x, self.size)
        return x + self.core_block(x) if self.identity else self.core_block(x)


_REF_CFGS = [
    [3, 4, 24, 0, 0, 2, False],
    [3, 3, 24, 0, 0, 1, False],
    [5, 3, 40, 1, 0, 2, False],
    [5, 3, 40, 1, 0, 1, False],
    [5, 6, 40, 1, 1, 1, True],
    [3, 6, 80, 0, 1, 2, False],
    [3, 2.5, 80, 0, 1, 1, False],
    [3, 2.3, 80, 0, 1, 1, False],
    [3, 2.3, 80, 0, 1, 1, True],
    [3, 6, 112, 1, 1, 1, False],
    [3, 6, 112, 1, 1, 1, True],
    [5, 6, 160, 1, 1, 2, False],
    [5, 6, 160, 1, 1, 1, False],
    [5, 6, 160, 1, 1, 1, True],
]


class _RefSkipNet(nn.Module):
    def __init__(self, num_classes=1000, width=1.0):
        super().__init__()
        c = _div8(16 * width)
        self.first_layer = nn.Sequential(nn.Conv2d(3, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c), _HSwish())
        self.base_block = _RefIR(c, c, c, 3, 1, 0, 1)
        self.blocks, feats = nn.ModuleList(), []
        for k, t, o, se, hs, s, make in _REF_CFGS:
            o = _div8(o * width)
            exp = _div8(c * t)
            feats.append(_RefIR(c, exp, o, k, s, se, hs))
            c = o
            if make:
                self.blocks.append(nn.Sequential(*feats))
                feats = []
        self.skip1 = _RefSkip(16, _div8(16 * 6), _div8(40 * width), 5, 28)
        self.skip2 = _RefSkip(16, _div8(16 * 2.3), _div8(80 * width), 3, 14)
        self.conv = nn.Sequential(nn.Conv2d(c, exp, 1, 1, 0, bias=False), nn.BatchNorm2d(exp), _HSwish())
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        hidden = _div8(1280 * width) if width > 1.0 else 1280
        self.classifier = nn.Sequential(
            nn.Linear(exp, hidden), _HSwish(), nn.Dropout(0.2), nn.Linear(hidden, num_classes)
        )

    def forward(self, x):
        x = self.first_layer(x)
        x_base = self.base_block(x)
        x = self.blocks[0](x_base)
        x = self.blocks[1](x + self.skip1(x_base))
        x = self.blocks[2](x + self.skip2(x_base))
        x = self.blocks[3](x)
        x_features = self.conv(x)
        return self.classifier(self.avgpool(x_features).flatten(1))


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BN statistics, so that a key or layer mix-up cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                r = torch.rand(t.shape, generator=g)
                t.copy_(0.5 + r if name.endswith("running_var") else (r - 0.5) * 0.4)
    return model.eval()


@pytest.fixture(scope="module")
def reference() -> _RefSkipNet:
    return _randomize(_RefSkipNet())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, reference) -> str:
    """The reference's state dict (classifier included) saved the way its train script does."""
    path = tmp_path_factory.mktemp("ckpt") / "skipnet-m.pth"
    torch.save(reference.state_dict(), path)
    return str(path)


def _reference_taps(reference: _RefSkipNet, x: torch.Tensor) -> list[torch.Tensor]:
    """The reference's stage-tap tensors (base block, 2nd block, blocks[0]+skip1, blocks[2], conv)."""
    seen = {}
    hooks = [
        reference.base_block.register_forward_hook(lambda m, i, o: seen.__setitem__(0, o)),
        reference.blocks[0][1].register_forward_hook(lambda m, i, o: seen.__setitem__(1, o)),
        reference.blocks[1].register_forward_pre_hook(lambda m, i: seen.__setitem__(2, i[0])),
        reference.blocks[2].register_forward_hook(lambda m, i, o: seen.__setitem__(3, o)),
        reference.conv.register_forward_hook(lambda m, i, o: seen.__setitem__(4, o)),
    ]
    with torch.no_grad():
        logits = reference(x)
    for h in hooks:
        h.remove()
    return [seen[i].clone() for i in range(5)] + [logits]


def test_counts_match_paper():
    model = SkipblockNetClassifier()
    params, macs = count_params(model), count_macs(model, torch.randn(1, 3, 224, 224))
    assert params == count_params(_RefSkipNet())
    assert abs(params / 5.53e6 - 1) < 0.02, params
    assert abs(macs / 237e6 - 1) < 0.02, macs


@pytest.mark.parametrize("width", [0.75, 1.0])
def test_state_dict_layout_is_the_reference(width):
    ours = {k: tuple(v.shape) for k, v in SkipblockNetClassifier(width_mult=width).state_dict().items()}
    ref = {k: tuple(v.shape) for k, v in _RefSkipNet(width=width).state_dict().items()}
    assert ours == ref


def test_equals_reference_at_224(reference, checkpoint):
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    expected = _reference_taps(reference, x)

    classifier = SkipblockNetClassifier().eval()
    classifier.load_state_dict(reference.state_dict())  # strict: exactly the reference's keys
    backbone = create_backbone("skipblocknet", pretrained=checkpoint).eval()
    with torch.no_grad():
        logits = classifier(x)
        features = backbone(x)
    assert torch.equal(logits, expected[-1])
    assert [tuple(f.shape[1:]) for f in features] == [
        (16, 112, 112),
        (24, 56, 56),
        (40, 28, 28),
        (112, 14, 14),
        (960, 7, 7),
    ]
    for ours, ref in zip(features, expected[:5]):
        assert torch.equal(ours, ref)


def test_expansion_taps_match_reference_layers(reference, checkpoint):
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    modules = [reference.blocks[0][0], reference.blocks[0][2], reference.blocks[1][0], reference.blocks[3][0]]
    seen = {}
    hooks = [
        m.conv[2].register_forward_hook(lambda m, i, o, k=k: seen.__setitem__(k, o.clone()))
        for k, m in enumerate(modules)
    ]
    hooks.append(reference.conv.register_forward_hook(lambda m, i, o: seen.__setitem__(4, o.clone())))
    with torch.no_grad():
        reference(x)
        features = create_backbone("skipblocknet", pretrained=checkpoint, feature_location="expansion").eval()(x)
    for h in hooks:
        h.remove()
    assert [f.shape[1] for f in features] == [64, 72, 240, 672, 960]
    for k, f in enumerate(features):
        assert torch.equal(f, seen[k])


def test_safetensors_and_wrapped_checkpoints_load(reference, tmp_path):
    x = torch.randn(1, 3, 48, 64)
    st = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(st))
    wrapped = tmp_path / "w.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, wrapped)
    a = create_backbone("skipblocknet", pretrained=str(st)).eval()
    b = create_backbone("skipblocknet", pretrained=str(wrapped)).eval()
    with torch.no_grad():
        for fa, fb in zip(a(x), b(x)):
            assert torch.equal(fa, fb)


def test_same_checkpoint_at_every_output_stride(checkpoint):
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        f32 = create_backbone("skipblocknet", pretrained=checkpoint).eval()(x)
        f16 = create_backbone("skipblocknet", pretrained=checkpoint, output_stride=16).eval()(x)
        f8 = create_backbone("skipblocknet", pretrained=checkpoint, output_stride=8).eval()(x)
    # Levels above the dilated ones are untouched; the dilated levels keep a finer grid.
    for i in range(4):
        assert torch.equal(f16[i], f32[i])
    for i in range(3):
        assert torch.equal(f8[i], f32[i])
    assert f16[4].shape[-2:] == (4, 4) and f8[3].shape[-2:] == (8, 8) and f8[4].shape[-2:] == (8, 8)


def test_dilation_follows_deeplab_rule():
    b = create_backbone("skipblocknet", output_stride=8)
    rows = [blk for stage in b.blocks for blk in stage]
    dw = [blk.conv[3] for blk in rows]
    # Stride 16 level: its downsampling conv keeps stride 1 and dilation 1, the later ones dilation 2.
    assert dw[5].stride == (1, 1) and dw[5].dilation == (1, 1)
    assert all(c.dilation == (2, 2) and c.padding == (2, 2) for c in dw[6:11])
    # Stride 32 level: downsampling conv at the previous dilation 2, the later ones 4 (5x5: padding 8).
    assert dw[11].stride == (1, 1) and dw[11].dilation == (2, 2)
    assert all(c.dilation == (4, 4) and c.padding == (8, 8) for c in dw[12:])
    # The skip blocks take the dilation of the level they join.
    assert b.skip1.core_block[3].dilation == (1, 1) and b.skip2.core_block[3].dilation == (2, 2)


@pytest.mark.parametrize("output_stride", [32, 16, 8])
@pytest.mark.parametrize("location", ["stage", "expansion"])
@pytest.mark.parametrize("size", [(67, 93), (32, 40)])
def test_any_size(output_stride, location, size):
    b = create_backbone("skipblocknet", output_stride=output_stride, feature_location=location).eval()
    with torch.no_grad():
        features = b(torch.randn(1, 3, *size))
    strides = [min(s, output_stride) for s in (2, 4, 8, 16, 32)]
    assert list(b.feature_info.strides) == strides
    for f, c, s in zip(features, b.feature_info.channels, strides):
        assert tuple(f.shape) == (1, c, math.ceil(size[0] / s), math.ceil(size[1] / s))


@pytest.mark.parametrize("in_chans", [1, 4])
def test_in_chans_adapts_the_stem(in_chans, reference, checkpoint):
    b = create_backbone("skipblocknet", pretrained=checkpoint, in_chans=in_chans).eval()
    stem = reference.first_layer[0].weight
    if in_chans == 1:
        assert torch.allclose(b.first_layer[0].weight, stem.sum(1, keepdim=True))
    else:
        assert b.first_layer[0].weight.shape[1] == 4
    assert b(torch.randn(1, in_chans, 40, 40))[-1].shape == (1, 960, 2, 2)


@pytest.mark.parametrize(
    ("location", "out_indices"), [("stage", None), ("stage", (1,)), ("expansion", (0, 2)), ("stage", (0,))]
)
def test_every_parameter_gets_a_gradient(location, out_indices):
    torch.manual_seed(0)
    full = create_backbone("skipblocknet", feature_location=location).eval()
    torch.manual_seed(0)
    b = create_backbone("skipblocknet", feature_location=location, out_indices=out_indices).eval()
    x = torch.randn(2, 3, 48, 48)
    # Pruning drops unused modules but keeps what is computed, so outputs match the full net's.
    if out_indices is not None:
        assert count_params(b) < count_params(full)
        with torch.no_grad():
            wanted, got = full(x), b(x)
            assert len(got) == len(out_indices)
            for f, i in zip(got, out_indices):
                assert torch.equal(f, wanted[i])
    features = b.train()(x)
    sum(f.mean() for f in features).backward()
    assert all(p.grad is not None for p in b.parameters())


def test_eval_is_deterministic_and_out_indices_select():
    b = create_backbone("skipblocknet", out_indices=(-1, 2)).eval()
    assert b.feature_info.channels == (40, 960) and b.feature_info.strides == (8, 32)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        first, second = b(x), b(x)
    assert all(torch.equal(a, c) for a, c in zip(first, second))
    with pytest.raises(ValueError, match="out of range"):
        create_backbone("skipblocknet", out_indices=(5,))


def test_pretrained_true_says_where_the_weights_are():
    with pytest.raises(RuntimeError, match=r"drive\.google\.com.*pretrained='/path/to/skipnet-m_76\.2\.pth'"):
        create_backbone("skipblocknet", pretrained=True)


def test_wrong_checkpoint_is_rejected(tmp_path):
    from torchvision.models import mobilenet_v2

    other = tmp_path / "mobilenet_v2.pth"
    torch.save(mobilenet_v2().state_dict(), other)
    with pytest.raises(WeightsMismatchError, match=r"missing \d+ key\(s\): .*base_block") as err:
        create_backbone("skipblocknet", pretrained=str(other))
    assert "unexpected" in str(err.value) and "features.0.0.weight" in str(err.value)
    # Another width of the same family: every shape that differs is named.
    narrow = tmp_path / "skipnet_075.pth"
    torch.save(_RefSkipNet(width=0.75).state_dict(), narrow)
    with pytest.raises(WeightsMismatchError, match="wrong shape: blocks"):
        create_backbone("skipblocknet", pretrained=str(narrow))


@pytest.mark.parametrize(("height", "width", "out_h", "out_w"), [(48, 48, 6, 6), (50, 37, 7, 5), (13, 9, 13, 9)])
def test_exportable_adaptive_pooling_equals_torch(height, width, out_h, out_w):
    """The skip blocks' pooling used under ONNX export gives PyTorch's adaptive windows at any size ratio."""
    from backbones._skipblock_blocks import adaptive_avg_pool2d_by_sums

    x = torch.randn(2, 3, height, width, dtype=torch.float64)
    expected = F.adaptive_avg_pool2d(x, (out_h, out_w))
    torch.testing.assert_close(adaptive_avg_pool2d_by_sums(x, (out_h, out_w)), expected, rtol=1e-12, atol=1e-12)


def test_onnx_export_with_dynamic_size_equals_pytorch(tmp_path):
    """With dynamic height and width the skip blocks' pooling follows the input in the exported graph."""
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    net = create_backbone("skipblocknet", out_indices=(4,)).eval()
    path = tmp_path / "skipblocknet.onnx"
    with torch.no_grad():
        torch.onnx.export(
            net, (torch.randn(1, 3, 96, 96),), str(path), input_names=["x"], output_names=["y"], dynamo=False,
            opset_version=17, dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "y": {0: "n", 2: "h32", 3: "w32"}},
        )  # fmt: skip
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for size in ((96, 96), (160, 128), (100, 75)):
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            expected = net(x)[-1].numpy()
        got = session.run(None, {"x": x.numpy()})[0]
        assert got.shape == expected.shape
        assert abs(got - expected).max() <= 1e-4 * abs(expected).max(), size
