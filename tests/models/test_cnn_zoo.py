"""The architectures of tests/cnn_zoo.py (ShuffleNet, EfficientNet, MobileNet-v3, DenseNet,
ConvNeXt, Inception, a YOLO-style detector head), 90 % pruned, exported by both torch
exporters at batch 2 on a non-square image: sparsec compiles each and matches onnxruntime on
the same file. A sweep of these found three gaps, each now covered here: the dynamo
exporter's Split (ShuffleNet's chunk), and LeakyRelu and PRelu.

Needs the `[bench]` extra (torch, and onnxscript for the dynamo exporter), which `.ci/run`
installs; without it this module skips and says so.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest

pytest.importorskip("torch", reason="the CNN exports need torch: pip install -e '.[bench]'")

import torch  # noqa: E402

import sparsec  # noqa: E402
from tests import cnn_zoo  # noqa: E402
from tests.conftest import run_onnxruntime  # noqa: E402

HAS_ONNXSCRIPT = importlib.util.find_spec("onnxscript") is not None
SHAPE = (2, 3, 32, 40)

TOLERANCE = 1e-4
"""Absolute, on outputs of magnitude below 2: sums of at most 48 * 9 products of values near
1, rounded in float32 in another order than onnxruntime's (a few 1e-7 apart, measured at most
5e-7), and far below the 1e-2 or more that a wrong tap, channel or activation leaves."""


def cases():
    return [pytest.param(name, exporter, id=f"{name}-{exporter}", marks=[pytest.mark.skipif(
        exporter == "dynamo" and not HAS_ONNXSCRIPT,
        reason="torch's dynamo exporter needs onnxscript")])
        for name in cnn_zoo.ZOO for exporter in ("torchscript", "dynamo")]


@pytest.mark.parametrize("name, exporter", cases())
def test_zoo_net_matches_onnxruntime(name, exporter, compiler, tmp_path):
    model = cnn_zoo.build(name, density=0.1)
    x = torch.randn(*SHAPE, generator=torch.Generator().manual_seed(1))
    path = tmp_path / f"{name}-{exporter}.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["y"],
                      opset_version=17, dynamo=exporter == "dynamo")
    feeds = {"x": x.numpy()}
    (expected,) = run_onnxruntime(onnx.load(str(path)), feeds)
    result = compiler.compile(str(path), "native")
    assert "Dense" in [node.op for node in result.graph.nodes]
    got = sparsec.load(result.library).run(feeds)["y"]
    assert got.shape == expected.shape
    assert np.abs(expected).max() < 2
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)
