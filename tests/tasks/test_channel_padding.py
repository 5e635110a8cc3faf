"""Zero channels for onnxruntime's int8 kernels (tasks.common.deploy.channel_padding), checked with onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import helper, numpy_helper  # noqa: E402

from backbones import create_backbone  # noqa: E402
from tasks.common.deploy.channel_padding import (  # noqa: E402
    DEPTHWISE_CHANNEL_MULTIPLE,
    pad_depthwise_channels,
    pad_input_channels,
)
from tasks.common.deploy.quantize import rewrite_hard_swish, rewrite_spatial_mean  # noqa: E402

FLOAT = onnx.TensorProto.FLOAT


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    onnx.checker.check_model(model)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)


def _depthwise_groups(model: onnx.ModelProto) -> list[int]:
    weights = {t.name: t for t in model.graph.initializer}
    groups = []
    for node in model.graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.op_type == "Conv" and group > 1 and node.input[1] in weights and weights[node.input[1]].dims[1] == 1:
            groups.append(group)
    return groups


@pytest.fixture(scope="module")
def mobilenet_v3_small(tmp_path_factory) -> Path:
    """timm's MobileNetV3-small features (depthwise widths 16, 72, 88, 96, 240, 120, 144, 288, 576), ONNX."""
    torch.manual_seed(0)
    net = create_backbone("mobilenet_v3_small", out_indices=(1, 4)).eval()
    path = tmp_path_factory.mktemp("onnx") / "mnv3s.onnx"
    torch.onnx.export(
        net, (torch.randn(1, 3, 64, 64),), str(path), dynamo=False, opset_version=17, input_names=["x"],
        output_names=["c2", "c5"], dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}},
    )  # fmt: skip
    return path


@pytest.mark.parametrize("rewritten", [False, True], ids=["onnx-hardswish", "int8-form"])
def test_padding_aligns_every_depthwise_convolution_and_the_stem_and_keeps_the_outputs(mobilenet_v3_small, rewritten):
    model = onnx.load(str(mobilenet_v3_small))
    if rewritten:  # the form quantize_int8 pads: hard-swish as Add/Clip/Mul, squeeze-excite mean as a pool
        rewrite_hard_swish(model)
        rewrite_spatial_mean(model)
    reference = onnx.ModelProto()
    reference.CopyFrom(model)
    misaligned = [g for g in _depthwise_groups(model) if g % DEPTHWISE_CHANNEL_MULTIPLE]
    assert sorted(set(misaligned)) == [72, 88, 120]

    assert pad_depthwise_channels(model) == len(misaligned)
    assert pad_input_channels(model) == ["/model/conv_stem/Conv_channel_pad"]
    # each depthwise convolution widened to the next multiple of 16 (72 -> 80, 88 -> 96, 120 -> 128), in order
    assert _depthwise_groups(model) == [-(-g // 16) * 16 for g in _depthwise_groups(reference)]
    stem = next(n for n in model.graph.node if n.op_type == "Conv")
    producer = {o: n for n in model.graph.node for o in n.output}
    assert producer[stem.input[0]].op_type == "Pad"
    assert numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == stem.input[1])).shape[1] == 4

    # The same function, at a second (dynamic) size and batch too; the stem's Pad works on any size.
    for shape in ((1, 3, 64, 64), (2, 3, 96, 80)):
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        for want, got in zip(_run(reference, {"x": x}), _run(model, {"x": x})):
            assert want.shape == got.shape
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def _conv(name: str, x: str, out: str, weight: str, bias: str, group: int = 1, pads: int = 0) -> onnx.NodeProto:
    return helper.make_node("Conv", [x, weight, bias], [out], name=name, group=group, pads=[pads] * 4)


def _toy(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], outputs: dict[str, int]) -> onnx.ModelProto:
    """x (1, 8, 6, 6) -> `nodes` -> `outputs` (name -> channels, 6 x 6)."""
    graph = helper.make_graph(
        nodes, "toy", [helper.make_tensor_value_info("x", FLOAT, [1, 8, 6, 6])],
        [helper.make_tensor_value_info(o, FLOAT, [1, c, 6, 6]) for o, c in outputs.items()],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "w_expand": rng.standard_normal((24, 8, 1, 1)),
        "w_dw": rng.standard_normal((24, 1, 3, 3)),
        "w_project": rng.standard_normal((8, 24, 1, 1)),
        "w_other": rng.standard_normal((24, 8, 1, 1)),
        "b24": rng.standard_normal(24),
        "b8": rng.standard_normal(8),
    }


def test_a_constant_shared_with_another_convolution_is_copied_not_padded_in_place():
    # torch's exporter stores equal constants once: here the expansion, the depthwise convolution and an
    # unrelated convolution (straight to a graph output) read one bias. Padding the block must leave that one
    # at 24 channels.
    nodes = [
        _conv("expand", "x", "e", "w_expand", "b24"),
        helper.make_node("Relu", ["e"], ["e_act"], name="relu"),
        _conv("dw", "e_act", "d", "w_dw", "b24", group=24, pads=1),
        _conv("project", "d", "y", "w_project", "b8"),
        _conv("other", "x", "z", "w_other", "b24"),
    ]
    model = _toy(nodes, _weights(np.random.default_rng(0)), {"y": 8, "z": 24})
    x = np.random.default_rng(1).standard_normal((1, 8, 6, 6)).astype(np.float32)
    want = _run(model, {"x": x})
    assert pad_depthwise_channels(model) == 1
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    by_name = {n.name: n for n in model.graph.node}
    assert shapes[by_name["dw"].input[1]] == (32, 1, 3, 3) and shapes[by_name["dw"].input[2]] == (32,)
    assert shapes[by_name["project"].input[1]] == (8, 32, 1, 1)
    assert by_name["other"].input[2] == "b24" and shapes["b24"] == (24,)
    for a, b in zip(want, _run(model, {"x": x})):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "reader",
    [
        (helper.make_node("Concat", ["d", "x"], ["y"], name="concat", axis=1), 32),  # would see the extra channels
        (helper.make_node("Relu", ["d"], ["y"], name="to_output"), 24),  # a graph output of the depthwise width
    ],
    ids=["concat", "graph-output"],
)
def test_a_region_that_reaches_a_channel_mixing_op_or_an_output_is_left_alone(reader):
    reader, channels = reader
    nodes = [
        _conv("expand", "x", "e", "w_expand", "b24"),
        _conv("dw", "e", "d", "w_dw", "b24", group=24, pads=1),
        reader,
    ]
    model = _toy(nodes, _weights(np.random.default_rng(0)), {"y": channels})
    before = model.SerializeToString()
    assert pad_depthwise_channels(model) == 0
    assert model.SerializeToString() == before


def test_only_convolutions_that_read_the_image_get_input_channels():
    # x / 255 -> stem (3 -> 1 channel) -> conv (1 -> 8): the stem reads the (normalized) graph input and is padded;
    # the 1-channel conv inside the network is not (a Pad there would sit between quantized tensors)
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Div", ["x", "k"], ["n"], name="normalize"),
        _conv("stem", "n", "m", "w_stem", "b_stem"),
        _conv("inner", "m", "y", "w_inner", "b_inner"),
    ]
    inits = {
        "k": np.array(255.0),
        "w_stem": rng.standard_normal((1, 3, 1, 1)),
        "b_stem": rng.standard_normal(1),
        "w_inner": rng.standard_normal((8, 1, 1, 1)),
        "b_inner": rng.standard_normal(8),
    }
    graph = helper.make_graph(
        nodes, "toy", [helper.make_tensor_value_info("x", FLOAT, [1, 3, 6, 6])],
        [helper.make_tensor_value_info("y", FLOAT, [1, 8, 6, 6])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float32) * 255
    want = _run(model, {"x": x})[0]
    assert pad_input_channels(model) == ["stem_channel_pad"]
    np.testing.assert_allclose(_run(model, {"x": x})[0], want, rtol=1e-5, atol=1e-5)
