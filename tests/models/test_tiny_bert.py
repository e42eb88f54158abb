"""The shipped tiny BERT (samples/tiny_bert.onnx, 2 layers, hidden 64, 90 % 4x1) end to end
against onnxruntime on every target, in fp32, with --quantize dynamic and with --dtype bf16."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import sparsec
from tests.conftest import TARGET_PARAMS, run_onnxruntime

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


@pytest.fixture(scope="module")
def bert():
    model = onnx.load(str(SAMPLES / "tiny_bert.onnx"))
    feeds = {name: np.load(SAMPLES / f"tiny_bert_{name}.npy")
             for name in ("input_ids", "attention_mask")}
    (expected,) = run_onnxruntime(model, feeds)
    return model, feeds, expected


def test_sample_is_what_the_script_makes():
    sys.path.insert(0, str(SAMPLES))
    try:
        from tiny_bert import tiny_bert
    finally:
        sys.path.remove(str(SAMPLES))
    assert tiny_bert().SerializeToString() == (SAMPLES / "tiny_bert.onnx").read_bytes()


@pytest.mark.parametrize("target", TARGET_PARAMS)
def test_fp32_matches_onnxruntime(target, bert, compiler):
    model, feeds, expected = bert
    result = compiler.compile(model, target)
    dense_layers = [layer for layer in result.info["layers"] if layer["op"] == "Dense"]
    assert len(dense_layers) == 12 and all(layer["pattern"] == "4x1" for layer in dense_layers)
    if not compiler.can_run(target):
        return
    actual = sparsec.load(result.library).run(feeds)["last_hidden_state"]
    # The bound: 1e-4 on hidden states of magnitude ~5 after 2 layers (fp32 sums in
    # another order; measured 1e-6).
    assert np.max(np.abs(actual - expected)) <= 1e-4


@pytest.mark.parametrize("target", TARGET_PARAMS)
def test_int8_stays_close_to_fp32(target, bert, compiler):
    """Dynamic int8 (each layer's activations in 255 steps, weights in 254) cannot be exact
    against the fp32 model; LayerNorm re-centres after every block, so the error stays at the
    size of a few quantization steps: bound 2 % of the output range (measured 0.4 %)."""
    model, feeds, expected = bert
    result = compiler.compile(model, target, quantize="dynamic", mixed_precision=False)
    if not compiler.can_run(target):
        return
    actual = sparsec.load(result.library).run(feeds)["last_hidden_state"]
    assert np.max(np.abs(actual - expected)) <= 0.02 * np.max(np.abs(expected))


@pytest.mark.parametrize("target", TARGET_PARAMS)
def test_bf16_stays_close_to_fp32(target, bert, compiler):
    """--dtype bf16 rounds every matrix product's operands to 8 significant bits (relative
    error up to 2**-9 each); LayerNorm re-centres after every block. Bound 1 % of the output
    range (measured 0.07 %); the kernels' own exactness is tests/codegen/test_bf16_kernels.py's."""
    model, feeds, expected = bert
    result = compiler.compile(model, target, quantize="bf16", mixed_precision=False)
    dense_layers = [layer for layer in result.info["layers"] if layer["op"] == "Dense"]
    assert len(dense_layers) == 12
    if not compiler.can_run(target):
        return
    actual = sparsec.load(result.library).run(feeds)["last_hidden_state"]
    assert np.max(np.abs(actual - expected)) <= 0.01 * np.max(np.abs(expected))
