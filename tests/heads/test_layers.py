"""The heads' shared bilinear resize: its ONNX form (two MatMuls) against PyTorch's and onnxruntime's Resize."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heads._layers import MATMUL_RESIZE_MAX_SOURCE, bilinear_as_matmuls, bilinear_resize, interpolation_matrix

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


@pytest.mark.parametrize(
    ("source", "target"),
    [((32, 32), (512, 512)), ((13, 7), (100, 51)), ((7, 13), (51, 100)), ((40, 30), (17, 11)), ((5, 9), (5, 9))],
    ids=["x16", "odd-up", "odd-up-wide", "down", "same"],
)
def test_matmul_form_equals_pytorch_bilinear(source, target):
    x = torch.randn(2, 3, *source, dtype=torch.float64)
    expected = F.interpolate(x, size=target, mode="bilinear", align_corners=False)
    torch.testing.assert_close(bilinear_as_matmuls(x, target), expected, rtol=0, atol=1e-12)


def test_interpolation_matrix_rows_are_two_tap_convex_weights():
    a = interpolation_matrix(7, 50, torch.zeros((), dtype=torch.float64))
    assert a.shape == (50, 7)
    torch.testing.assert_close(a.sum(dim=1), torch.ones(50, dtype=torch.float64))
    assert (a >= 0).all() and ((a > 0).sum(dim=1) <= 2).all()


class _Upsampler(nn.Module):
    def forward(self, x: Tensor, like: Tensor) -> Tensor:
        """(N, C, h, w), (N, 1, H, W) -> (N, C, H, W)."""
        return bilinear_resize(x, like.shape[-2:])


def _export(source: tuple[int, int], target: tuple[int, int]) -> bytes:
    f = io.BytesIO()
    axes = {"x": {0: "n", 2: "h", 3: "w"}, "like": {0: "n", 2: "H", 3: "W"}, "y": {0: "n", 2: "H", 3: "W"}}
    example = (torch.randn(1, 4, *source), torch.zeros(1, 1, *target))
    torch.onnx.export(
        _Upsampler(), example, f, input_names=["x", "like"], output_names=["y"], dynamic_axes=axes,
        dynamo=False, opset_version=17,
    )  # fmt: skip
    return f.getvalue()


def test_onnx_export_writes_matmuls_that_stay_dynamic():
    proto = _export((16, 20), (128, 160))
    ops = {n.op_type for n in onnx.load_from_string(proto).graph.node}
    assert "MatMul" in ops and "Resize" not in ops
    session = ort.InferenceSession(proto, providers=["CPUExecutionProvider"])
    for source, target in [((16, 20), (128, 160)), ((32, 32), (512, 512)), ((13, 7), (100, 51)), ((40, 30), (17, 11))]:
        x = torch.randn(2, 4, *source)
        (y,) = session.run(None, {"x": x.numpy(), "like": np.zeros((2, 1, *target), np.float32)})
        expected = F.interpolate(x, size=target, mode="bilinear", align_corners=False).numpy()
        np.testing.assert_allclose(y, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_large_sources_export_as_resize():
    side = MATMUL_RESIZE_MAX_SOURCE + 1  # past the crossover two MatMuls cost more than onnxruntime's Resize
    ops = {n.op_type for n in onnx.load_from_string(_export((side, side), (2 * side, 2 * side))).graph.node}
    assert "Resize" in ops and "MatMul" not in ops
