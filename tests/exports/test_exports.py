"""Encoders as users export them today (tests/exports/encoders.py), compiled with static
shapes on `native` and `generic`, run, and compared with onnxruntime on the same file; every
attention layer must have become one Attention kernel.

Needs the `[bench]` extra (torch, transformers, onnxscript for the dynamo exporter); CI
installs only `[test]`, where this module skips and says so.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

pytest.importorskip("torch", reason="exports need torch: pip install -e '.[bench]'")
pytest.importorskip("transformers", reason="exports need transformers: pip install -e '.[bench]'")

import sparsec  # noqa: E402
from sparsec.compiler.ops import ATTENTION  # noqa: E402
from tests.conftest import run_onnxruntime  # noqa: E402
from tests.exports import encoders  # noqa: E402

TARGETS = ("native", "generic")

FP32_TOLERANCE = 1e-4
"""Of the output range: float32 sums in another order (measured about 1e-7)."""

FP16_TOLERANCE = 1e-2
"""Of the output range, for float16 models. Both runtimes multiply the same float16 weights,
but onnxruntime also rounds every activation to float16 (relative error up to 2**-11 each),
sparsec keeps them in float32. A 2-layer encoder rounds some 20 activations on the way from
embedding to output, each re-normalised by LayerNorm: 20 * 2**-11 is 1 % of the range
(measured: 0.03-0.06 %)."""



def _params():
    params = []
    for case in encoders.cases():
        marks = []
        if case.exporter == "dynamo":
            marks.append(pytest.mark.skipif(not _has("onnxscript"),
                                            reason="torch's dynamo exporter needs onnxscript"))
        if case.exporter == "optimum":
            marks.append(pytest.mark.skipif(
                not _has("optimum.exporters.onnx"),
                reason="optimum-onnx is not installed; the newest on the package mirror "
                       "(0.1.0) requires transformers<4.58, and [bench] has transformers 5"))
        params.append(pytest.param(case, id=case.id, marks=marks))
    return params


def _has(module: str) -> bool:
    import importlib.util
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.parametrize("case", _params())
def test_export_compiles_fuses_and_matches(case, tmp_path, compiler):
    """Both targets in one test, so that each case is exported once however xdist splits
    the tests."""
    path = str(encoders.export(case, tmp_path))
    feeds = encoders.inputs(case)
    (expected,) = run_onnxruntime(onnx.load(path), feeds)
    tolerance = FP16_TOLERANCE if case.variant == "fp16" else FP32_TOLERANCE
    for target in TARGETS:
        result = compiler.compile(path, target,
                                  input_shapes={name: v.shape for name, v in feeds.items()})
        ops = [node.op for node in result.graph.nodes]
        assert ops.count(ATTENTION) == encoders.LAYERS, (
            f"{target}: {ops.count(ATTENTION)} Attention kernels for {encoders.LAYERS} "
            f"layers; left: {sorted(set(ops))}")
        assert "Softmax" not in ops
        got = sparsec.load(result.library).run(feeds)["last_hidden_state"]
        assert got.dtype == expected.dtype and got.shape == expected.shape
        error = np.max(np.abs(got.astype(np.float64) - expected))
        assert error <= tolerance * np.ptp(expected), f"{target}: max error {error:.3g}"
        if case.variant == "pruned":  # prune_4x1 prunes Linear layers, not ViT's patch Conv
            dense = [layer for layer in result.info["layers"] if layer["op"] == "Dense"
                     and "patch_embeddings" not in layer["node"]]
            assert dense and all(layer["pattern"] != "dense" for layer in dense), target


BUCKET_CASES = [encoders.Case("bert", "dynamo", "sdpa"),
                encoders.Case("roberta", "torchscript", "sdpa")]
"""A default (dynamo) export, and one whose position ids come from a CumSum over the token ids
(RoBERTa: the padding that the loader adds must not move a real token's position)."""


@pytest.mark.parametrize("case", [
    pytest.param(case, id=case.id, marks=[pytest.mark.skipif(
        case.exporter == "dynamo" and not _has("onnxscript"),
        reason="torch's dynamo exporter needs onnxscript")]) for case in BUCKET_CASES])
def test_export_with_length_buckets_matches_unpadded(case, tmp_path, compiler):
    """One library with 8- and 16-token plans, run at lengths between and at the buckets,
    against onnxruntime on the same file at each real (unpadded) length."""
    path = str(encoders.export(case, tmp_path))
    full = encoders.inputs(case)
    buckets = [encoders.SEQ // 2, encoders.SEQ]
    result = compiler.compile(path, "native", input_shapes={
        name: (encoders.BATCH, buckets) for name in full})
    module = sparsec.load(result.library)
    for length in (3, buckets[0], buckets[0] + 1, buckets[1]):
        feeds = {name: np.ascontiguousarray(value[:, :length]) for name, value in full.items()}
        (expected,) = run_onnxruntime(onnx.load(path), feeds)
        got = module.run(feeds)["last_hidden_state"]
        assert got.shape == expected.shape, length
        error = np.max(np.abs(got.astype(np.float64) - expected))
        assert error <= FP32_TOLERANCE * np.ptp(expected), f"length {length}: {error:.3g}"
