"""Models quantized by onnxruntime's own tool (quantize_dynamic): DynamicQuantizeLinear,
MatMulInteger, Cast and Mul chains. With int8 symmetric weights fuse maps each chain onto an
int8 Dense kernel, which quantizes activations in DynamicQuantizeLinear's arithmetic: outputs
equal the exact reference's (tests/quantization.py) bit for bit, and onnxruntime's where its
int8 is exact on this host (tests/conftest.py's int8_oracles; the test ids say which). Other
weights (uint8 with zero points) run on the portable MatMulInteger and DynamicQuantizeLinear
kernels, also exactly."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest

import sparsec
from sparsec.compiler.ops import DENSE
from tests.conftest import TARGET_PARAMS, assert_int8_equal, int8_expected, int8_oracles
from tests.graphs import mlp

ROOT = Path(__file__).resolve().parents[2]


def quantized(model: onnx.ModelProto, tmp_path: Path, **options) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source, target = tmp_path / "float.onnx", tmp_path / "quantized.onnx"
    onnx.save(model, str(source))
    quantize_dynamic(str(source), str(target), weight_type=options.pop("weight_type",
                                                                        QuantType.QInt8),
                     **options)
    return onnx.load(str(target))


# quantize_dynamic's int8 weight codes: [-127, 127], or [-64, 64] with reduce_range, which
# onnxruntime multiplies exactly on any host: the latter compare with it everywhere.
CODE_RANGES = [pytest.param(reduce_range, *oracle.values, id=f"codes-{bound}-{oracle.id}")
               for reduce_range, bound in ((False, 127), (True, 64))
               for oracle in [int8_oracles(bound)]]


@pytest.mark.parametrize("target", TARGET_PARAMS)
@pytest.mark.parametrize("per_channel", [False, True], ids=["per-tensor", "per-channel"])
@pytest.mark.parametrize("reduce_range,with_onnxruntime", CODE_RANGES)
def test_int8_export_maps_onto_int8_dense_exactly(target, per_channel, reduce_range,
                                                  with_onnxruntime, compiler, tmp_path):
    model = quantized(mlp(k=64, n=48, m=6, density=0.2, seed=3), tmp_path,
                      per_channel=per_channel, reduce_range=reduce_range)
    codes = max(int(np.abs(onnx.numpy_helper.to_array(t).astype(int)).max())
                for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8)
    assert codes == (64 if reduce_range else 127), codes
    result = compiler.compile(model, target)
    ops = [n.op for n in result.graph.nodes]
    assert ops == [DENSE], ops
    (dense,) = result.graph.nodes
    assert result.graph.tensors[dense.inputs[1]].dtype == "int8"
    assert dense.attrs["activation"] == "Relu", "bias and activation stay in the epilogue"
    if not compiler.can_run(target):
        return
    x = np.random.default_rng(4).standard_normal((6, 64)).astype(np.float32)
    got = sparsec.load(result.library).run({"x": x})["y"]
    assert_int8_equal([got], int8_expected(model, {"x": x}, with_onnxruntime))


# onnxruntime's u8 x u8 products widen both operands to int16 before summing pairs into int32
# (VPMADDWD, or VPDPBUSD): exact on every host, so compared everywhere.
@pytest.mark.parametrize("target", TARGET_PARAMS)
def test_uint8_weights_run_the_portable_integer_kernels(target, compiler, tmp_path):
    from onnxruntime.quantization import QuantType

    model = quantized(mlp(k=32, n=16, m=5, density=0.5, seed=5), tmp_path,
                      weight_type=QuantType.QUInt8)
    result = compiler.compile(model, target)
    ops = [n.op for n in result.graph.nodes]
    assert "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops, ops
    if not compiler.can_run(target):
        return
    x = np.random.default_rng(6).standard_normal((5, 32)).astype(np.float32)
    got = sparsec.load(result.library).run({"x": x})["y"]
    assert_int8_equal([got], int8_expected(model, {"x": x}, with_onnxruntime=True))


@pytest.mark.parametrize("with_onnxruntime", [int8_oracles()])
def test_quantized_tiny_bert_matches_the_references(with_onnxruntime, compiler, tmp_path):
    """The sample encoder through quantize_dynamic: every Linear becomes an int8 Dense; the
    rest is fp32 and fuses as before. Each int8 layer is exact, but its input comes from fp32
    layers (LayerNorm, attention) that agree with the oracle (the exact reference's numpy, or
    onnxruntime) only to their last bits, and a last-bit difference can move an activation
    across a rounding boundary: one quantization step (range / 255) on that element, which
    later layers spread. So: almost every output equal to fp32 precision, none off by more
    than 2 % of the output range (as the --quantize dynamic test of the sample)."""
    spec = importlib.util.spec_from_file_location("tiny_bert", ROOT / "samples" / "tiny_bert.py")
    tiny_bert = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny_bert)
    model = quantized(tiny_bert.tiny_bert(), tmp_path)
    result = compiler.compile(model, "native")
    int8_dense = [n for n in result.graph.nodes if n.op == DENSE
                  and result.graph.tensors[n.inputs[1]].dtype == "int8"]
    assert len(int8_dense) == 12
    assert "MatMulInteger" not in [n.op for n in result.graph.nodes]
    feeds = tiny_bert.tiny_bert_inputs()
    got = sparsec.load(result.library).run(feeds)["last_hidden_state"]
    for oracle, (wanted,) in int8_expected(model, feeds, with_onnxruntime).items():
        difference = np.abs(got - wanted)
        assert np.mean(difference > 1e-4) < 0.02, oracle
        assert difference.max() <= 0.02 * (wanted.max() - wanted.min()), oracle
