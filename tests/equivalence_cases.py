"""The models and compile variants tests/equivalence.py checks: the samples, about thirty
models drawn (seeded) with the test suite's own builders, and the pruned MiniLMs where present.

A model is built from its name alone (MODELS[name]()), so a worker process can rebuild it and
the case list stays small to pass around; everything is seeded, so the same name always gives
the same ONNX bytes and the same inputs.
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sparsec.codegen import targets
from tests.codegen import test_attention, test_layouts
from tests.codegen.test_transformer_ops import layer_norm_and_erf_gelu_written_out
from tests.graphs import mlp, model
from tests.models import test_differential
from tests.models import test_quantized_models as test_quantize
from tests.models import test_reordered_models as test_reorder
from tests.models.test_quantized_exports import quantized

ROOT = Path(__file__).resolve().parents[1]
MINILMS = ("minilm-1x16-90.onnx", "minilm-4x1-90.onnx")
PATTERNS = ("dense", "1x1", "4x1", "1x4", "1x16", "16x1", "4x4")


@dataclass(frozen=True)
class Built:
    model: onnx.ModelProto | str  # a path for the big files: no copy through memory
    feeds: Callable[[dict], dict] | None = None  # info -> inputs; None: sparsec's generator
    lengths: tuple[int, ...] = ()  # bucketed: the request lengths to run


@dataclass(frozen=True)
class Case:
    model: str
    target: str
    options: dict = field(default_factory=dict)  # compile_model keywords
    emulate: bool = False

    @property
    def name(self) -> str:
        extras = [f"{k}={v}" for k, v in sorted(self.options.items()) if k != "input_shapes"]
        extras += ["buckets"] if "input_shapes" in self.options else []
        extras += ["emulated"] if self.emulate else []
        return "@".join([self.model, self.target] + extras)


def _tiny_bert():
    spec = importlib.util.spec_from_file_location("tiny_bert", ROOT / "samples" / "tiny_bert.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- drawn models -----------------------------------------------------------------------------

def _differential_mlp(index: int) -> Built:
    """Every block pattern twice, MatMul and Gemm, activations and widths drawn from the
    differential test's lists."""
    rng = np.random.default_rng(1000 + index)
    block = test_differential.BLOCKS[index % len(test_differential.BLOCKS)]
    three_d = index % 4 == 3
    lead = (2, 9) if three_d else (int(rng.choice([1, 5, 16, 70])),)
    widths = [int(w) for w in rng.choice([16, 17, 33, 64, 96], size=int(rng.integers(2, 4)))]
    layers = []
    for i, (k, n) in enumerate(zip(widths, widths[1:])):
        op = "Gemm" if not three_d and (index + i) % 2 else "MatMul"
        activation = test_differential.ACTIVATIONS[(index + i) % len(test_differential.ACTIVATIONS)]
        options = {"trans_b": int(rng.integers(0, 2))} if op == "Gemm" else {}
        layers.append(test_differential.make_layer(
            rng, k, n, lead, op=op, block=block, density=float(rng.choice([0.05, 0.1, 0.3, 0.6])),
            bias="N", activation=activation,
            clip=(-0.25, 2.0) if activation == "Clip" else (None, None), **options))
    case = test_differential.Case(f"mlp-{index}", (*lead, widths[0]), layers)
    return Built(test_differential.to_onnx(case))


def _attention(index: int) -> Built:
    shapes = [(1, 2, 7, 7, 16, "keys", "Div", True), (2, 3, 5, 9, 8, "full", "Mul", False),
              (1, 1, 20, 20, 32, "", "", True), (1, 2, 16, 16, 20, "heads", "Mul", False)]
    onnx_model, inputs = test_attention.attention_model(*shapes[index])
    return Built(onnx_model, lambda info: test_attention.feeds_for(
        inputs, np.random.default_rng(index), masked_rows=index == 1))


def _encoder(index: int) -> Built:
    tiny_bert = _tiny_bert()
    heads, head, ffn = [(2, 16, 64), (4, 8, 128), (1, 24, 96)][index]
    onnx_model = tiny_bert.tiny_bert(index, hidden=heads * head, num_heads=heads, ffn=ffn,
                                     layers=1, vocab=64, seq=16)
    return Built(onnx_model, lambda info: tiny_bert.tiny_bert_inputs(index, vocab=64, seq=16,
                                                                     padded=3))


def _reordered_encoder() -> Built:
    """Value/output projections scrambled within heads: reorder_blocks has work to do."""
    tiny_bert = _tiny_bert()
    onnx_model = test_reorder.scramble_within_heads(
        tiny_bert.tiny_bert(7, hidden=32, num_heads=2, ffn=64, layers=1, vocab=64, seq=16), 2,
        np.random.default_rng(7))
    return Built(onnx_model, lambda info: tiny_bert.tiny_bert_inputs(7, vocab=64, seq=16,
                                                                     padded=3))


def _layernorm(index: int) -> Built:
    rng = np.random.default_rng(20 + index)
    if index == 0:
        scale, bias = (rng.standard_normal(48).astype(np.float32) for _ in range(2))
        return Built(model([helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"],
                                             axis=-1, epsilon=1e-12)],
                           [("x", [2, 5, 48])], [("y", [2, 5, 48])], [("s", scale), ("b", bias)]))
    return Built(layer_norm_and_erf_gelu_written_out())


def _elementwise(index: int) -> Built:
    rng = np.random.default_rng(30 + index)
    shape = [4, 37] if index == 0 else [2, 3, 19]
    row = rng.standard_normal(shape[-1]).astype(np.float32)
    nodes = [helper.make_node("Mul", ["x", "row"], ["a"]),
             helper.make_node("Sub", ["a", "x2"], ["b"]),
             helper.make_node("Sigmoid", ["b"], ["c"]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Add", ["r", "one"], ["r1"]),
             helper.make_node("Sqrt", ["r1"], ["s"]),
             helper.make_node("Div", ["c", "s"], ["d"]),
             helper.make_node("Greater", ["x", "x2"], ["g"]),
             helper.make_node("Tanh", ["d"], ["t"]),
             helper.make_node("Exp", ["t"], ["e"]),
             helper.make_node("Where", ["g", "e", "b"], ["y"])]
    return Built(model(nodes, [("x", shape), ("x2", shape)], [("y", shape)],
                       [("row", row), ("one", np.float32(1))]))


def _gather(index: int) -> Built:
    rng = np.random.default_rng(40 + index)
    vocab, width, seq = (50, 16, 12) if index == 0 else (300, 32, 9)
    table = rng.standard_normal((vocab, width)).astype(np.float32)
    weight = (rng.standard_normal((width, 24)) * (rng.random((width, 24)) < 0.2)).astype("f4")
    nodes = [helper.make_node("Gather", ["table", "ids"], ["rows"]),
             helper.make_node("MatMul", ["rows", "w"], ["p"]),
             helper.make_node("Softmax", ["p"], ["y"], axis=-1)]
    graph = helper.make_graph(
        nodes, "gather", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, seq])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, seq, 24])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(weight, "w")])
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx_model.ir_version = 8
    return Built(onnx_model)


def _int8_export(index: int) -> Built:
    """onnxruntime's quantize_dynamic: per tensor, per channel, reduced range."""
    options = [{}, {"per_channel": True}, {"reduce_range": True}][index]
    with tempfile.TemporaryDirectory() as tmp:
        return Built(quantized(mlp(k=64, n=48, m=6, density=0.2, seed=3 + index), Path(tmp),
                               **options))


def _int8_chain() -> Built:
    """DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul chains, written by hand."""
    _, q = test_quantize.mlp(np.random.default_rng(50), 9, [40, 64, 24], [0.1, 1.0],
                             [True, False], [True, True], (4, 1))
    q.ir_version = 8
    return Built(q)


def _qdq() -> Built:
    """int8 weights behind a per-axis DequantizeLinear, activations through Q/DQ per tensor."""
    rng = np.random.default_rng(60)
    codes = (rng.integers(-127, 128, (32, 40)) * (rng.random((32, 40)) < 0.25)).astype(np.int8)
    scales = (rng.random(40) / 50 + 1e-3).astype(np.float32)
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"], axis=1),
             helper.make_node("MatMul", ["xd", "w"], ["y"])]
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 40])],
        [numpy_helper.from_array(np.float32(0.02), "xs"),
         numpy_helper.from_array(np.uint8(128), "xz"),
         numpy_helper.from_array(codes, "wq"), numpy_helper.from_array(scales, "ws")])
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx_model.ir_version = 8
    return Built(onnx_model)


def _layout_chain(index: int) -> Built:
    rng = np.random.default_rng(70 + index)
    widths, activations = ([40, 96, 64, 33], ["Relu", "", "Sigmoid"]) if index == 0 else \
        ([64, 64, 100], ["", "Relu", ""])
    onnx_model, _ = test_layouts.chain(rng, 70 if index == 0 else 130, widths, activations,
                                       ["N", "", "N"])
    return Built(onnx_model)


def _bucketed_bert() -> Built:
    tiny_bert = _tiny_bert()

    def feeds(info):
        rng = np.random.default_rng(80)
        return {length: {"input_ids": rng.integers(0, 64, (1, length)).astype(np.int64),
                         "attention_mask": np.ones((1, length), np.int64)}
                for length in (5, 16, 32)}
    return Built(tiny_bert.tiny_bert(8, hidden=32, num_heads=2, ffn=64, layers=1, vocab=64,
                                     seq=32, dynamic=True), feeds, (5, 16, 32))


def _pattern_mlp() -> Built:
    """Two layers wide enough for every block shape to tile them, unstructured at 30 %."""
    rng = np.random.default_rng(90)
    w1 = (rng.standard_normal((64, 96)) * (rng.random((64, 96)) < 0.3)).astype(np.float32)
    w2 = (rng.standard_normal((96, 48)) * (rng.random((96, 48)) < 0.3)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["a"]),
             helper.make_node("MatMul", ["a", "w2"], ["y"])]
    return Built(model(nodes, [("x", [20, 64])], [("y", [20, 48])], [("w1", w1), ("w2", w2)]))


MODELS: dict[str, Callable[[], Built]] = {
    "sample-mlp_sparse": lambda: Built(str(ROOT / "samples" / "mlp_sparse.onnx")),
    "sample-tiny_bert": lambda: Built(str(ROOT / "samples" / "tiny_bert.onnx")),
    **{f"mlp-{i}": (lambda i=i: _differential_mlp(i)) for i in range(12)},
    **{f"attention-{i}": (lambda i=i: _attention(i)) for i in range(4)},
    **{f"encoder-{i}": (lambda i=i: _encoder(i)) for i in range(3)},
    "encoder-reorder": _reordered_encoder,
    **{f"layernorm-{i}": (lambda i=i: _layernorm(i)) for i in range(2)},
    **{f"elementwise-{i}": (lambda i=i: _elementwise(i)) for i in range(2)},
    **{f"gather-{i}": (lambda i=i: _gather(i)) for i in range(2)},
    **{f"int8-export-{i}": (lambda i=i: _int8_export(i)) for i in range(3)},
    "int8-chain": _int8_chain,
    "qdq": _qdq,
    **{f"layouts-{i}": (lambda i=i: _layout_chain(i)) for i in range(2)},
    "bucketed-bert": _bucketed_bert,
    "patterns": _pattern_mlp,
}


def add_minilms(models_dir: Path, log) -> list[str]:
    found = []
    for file in MINILMS:
        path = models_dir / file
        if path.exists():
            MODELS[path.stem] = lambda path=path: Built(str(path))
            found.append(path.stem)
        else:
            log(f"skipped {path}: not present (benchmarks/export_encoders.py makes it)")
    return found


# --- the case list ----------------------------------------------------------------------------

def host_targets(arm: bool) -> tuple[list[str], list[str], bool]:
    """(targets run natively, best last; ARM targets run under qemu; whether the x86-amx
    emulation build runs here)."""
    native = [t.name for t in targets.TARGETS.values() if targets.can_execute(t)]
    qemu = [t.name for t in targets.TARGETS.values()
            if arm and t.arch != targets.host_arch() and t.arch != "any"
            and targets.execution_mode(t) == "emulated"]
    amx = targets.TARGETS["x86-amx"]
    have = targets.host_features()
    amx_emulated = amx.emulation is not None and all(f in have for f in amx.emulation.features)
    return native, qemu, amx_emulated


def cases(quick: bool, arm: bool, minilms: list[str]) -> list[Case]:
    native, qemu, amx_emulated = host_targets(arm and not quick)
    simd = [t for t in native if t != "generic"] or native
    best = native[-1]
    dtypes = [{}, {"quantize": "dynamic"}, {"quantize": "bf16"}]
    found: list[Case] = []
    sample_targets = ["generic", best] if quick else native + qemu
    for sample in ("sample-mlp_sparse", "sample-tiny_bert"):
        found += [Case(sample, t, o) for t in sample_targets for o in dtypes]
        if amx_emulated:
            found += [Case(sample, "x86-amx", o, emulate=True) for o in dtypes]
        found.append(Case(sample, best, {"layouts": False}))
    drawn = [m for m in MODELS if not m.startswith(("sample-", "minilm-", "bucketed",
                                                    "patterns"))]
    if quick:
        drawn = drawn[::3]
    for index, name in enumerate(drawn):
        rotating = simd[index % len(simd)]
        found += [Case(name, "generic"), Case(name, rotating)]
        if not quick and name.startswith("mlp-") and index < 8:
            found.append(Case(name, simd[(index + 1) % len(simd)],
                              dtypes[1 + index % 2]))
        if not quick and qemu and name in ("mlp-2", "encoder-0", "int8-chain"):
            found += [Case(name, t) for t in qemu]
    found += [Case("layouts-0", best, {"layouts": False})]
    shapes = {"input_ids": (1, [8, 16, 32])}
    found += [Case("bucketed-bert", t, {"input_shapes": shapes}) for t in ("generic", best)]
    for pattern in PATTERNS[2:5] if quick else PATTERNS:
        found += [Case("patterns", t, {"force_pattern": pattern})
                  for t in ([best] if quick else sorted({"generic", "x86-avx2", best}
                                                        & set(native)))]
    if not quick:
        for name in minilms:
            found += [Case(name, best), Case(name, "x86-avx2" if "x86-avx2" in native else
                                             "generic"), Case(name, best, {"quantize": "dynamic"})]
    return found
