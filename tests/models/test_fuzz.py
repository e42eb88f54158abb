"""Fuzzing the compiler with mutated models: whatever a model file holds, compiling it either
succeeds or raises a `SparsecError` (which the CLI prints as one `sparsec: error:` line), and a
library that compiles runs on random inputs or refuses them with a `SparsecError`. Any other
exception, and any crash (which takes the test process down with it), is a bug. Two thirds
of the mutants are compiled with --quantize dynamic or --dtype bf16, through those passes and
kernels.

Hypothesis draws a valid base model and a few mutations of its protobuf: nodes dropped,
duplicated or rewired; dims corrupted; attributes given other values, types or none; initializer
data cut short or retyped; opsets changed; or bytes flipped in the serialized file.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from onnx import TensorProto

import sparsec
from sparsec.errors import SparsecError
from tests.graphs import mlp

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = 200  # per base model; about 15 s in all
MEMORY_LIMIT = 1 << 28  # mutated dims must not make one example allocate gigabytes


def _tiny_bert() -> onnx.ModelProto:
    spec = importlib.util.spec_from_file_location("tiny_bert", ROOT / "samples" / "tiny_bert.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # Small enough that every surviving mutant compiles in about a second.
    return module.tiny_bert(hidden=16, num_heads=2, ffn=32, layers=1, vocab=20, seq=8)


BASES = {"mlp": mlp(k=8, n=12, m=3, density=0.5), "tiny-bert": _tiny_bert()}

# Values a corrupted field takes: edge cases of their types rather than uniform noise.
INTS = [-(2**63), -(2**31), -7, -1, 0, 1, 2, 3, 5, 64, 2**31 - 1, 2**40]
FLOATS = [float("nan"), float("inf"), -float("inf"), -1.0, 0.0, 1e-45, 1e30]
NAMES = ["", "x", "ghost", "y", 'a"; system("id"); //', "*/", "input_ids"]
DTYPES = [TensorProto.UNDEFINED, TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT64,
          TensorProto.INT8, TensorProto.UINT8, TensorProto.FLOAT16, TensorProto.BOOL,
          TensorProto.STRING, TensorProto.COMPLEX64, 99]

mutation = st.one_of(
    st.tuples(st.just("drop-node"), st.integers(0, 10**6)),
    st.tuples(st.just("duplicate-node"), st.integers(0, 10**6), st.integers(0, 10**6)),
    st.tuples(st.just("rewire"), st.integers(0, 10**6), st.booleans(), st.integers(0, 10),
              st.sampled_from(NAMES) | st.integers(0, 10**6)),
    st.tuples(st.just("dim"), st.integers(0, 10**6), st.integers(0, 5),
              st.sampled_from(INTS) | st.just("n")),
    st.tuples(st.just("attribute"), st.integers(0, 10**6),
              st.sampled_from(["int", "float", "ints", "type", "remove", "add"]),
              st.integers(0, 10**6)),
    st.tuples(st.just("initializer"), st.integers(0, 10**6),
              st.sampled_from(["truncate", "retype", "dims"]), st.integers(0, 10**6)),
    st.tuples(st.just("opset"), st.sampled_from([1, 6, 11, 13, 17, 21, 23, 99])),
    st.tuples(st.just("elem-type"), st.integers(0, 10**6), st.sampled_from(DTYPES)),
    st.tuples(st.just("flip-bytes"), st.lists(st.tuples(st.integers(0, 10**7),
                                                        st.integers(1, 255)),
                                              min_size=1, max_size=8)),
)


def _value_infos(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    return [*graph.input, *graph.output, *graph.value_info]


def _all_names(graph: onnx.GraphProto) -> list[str]:
    return sorted({name for node in graph.node for name in [*node.input, *node.output]}
                  | {init.name for init in graph.initializer})


def mutate(model: onnx.ModelProto, change: tuple) -> None:
    """Apply one drawn change to `model` in place (flip-bytes is applied to the file)."""
    graph, kind = model.graph, change[0]
    nodes = graph.node
    if kind == "drop-node" and nodes:
        del nodes[change[1] % len(nodes)]
    elif kind == "duplicate-node" and nodes:
        copy = onnx.NodeProto()
        copy.CopyFrom(nodes[change[1] % len(nodes)])
        nodes.insert(change[2] % (len(nodes) + 1), copy)
    elif kind == "rewire" and nodes:
        node = nodes[change[1] % len(nodes)]
        slots = node.output if change[2] else node.input
        names = _all_names(graph)
        name = change[4] if isinstance(change[4], str) else names[change[4] % len(names)]
        if slots:
            slots[change[3] % len(slots)] = name
        else:
            slots.append(name)
    elif kind == "dim":
        shaped = [v.type.tensor_type.shape for v in _value_infos(graph)
                  if v.type.tensor_type.HasField("shape")]
        dims = [d for shape in shaped for d in shape.dim]
        inits = list(graph.initializer)
        if change[1] % 2 and inits:
            init = inits[change[1] // 2 % len(inits)]
            if init.dims and isinstance(change[3], int):
                init.dims[change[2] % len(init.dims)] = change[3]
        elif dims:
            dim = dims[change[1] % len(dims)]
            if isinstance(change[3], int):
                dim.dim_value = change[3]
            else:
                dim.dim_param = change[3]
    elif kind == "attribute":
        _mutate_attribute(graph, change[1], change[2], change[3])
    elif kind == "initializer" and graph.initializer:
        _mutate_initializer(graph.initializer[change[1] % len(graph.initializer)], change[2],
                            change[3])
    elif kind == "opset":
        model.opset_import[0].version = change[1]
    elif kind == "elem-type":
        infos = _value_infos(graph)
        infos[change[1] % len(infos)].type.tensor_type.elem_type = change[2]


def _mutate_attribute(graph: onnx.GraphProto, index: int, how: str, value: int) -> None:
    with_attributes = [n for n in graph.node if n.attribute]
    if how == "add" or not with_attributes:
        if graph.node:
            node = graph.node[index % len(graph.node)]
            node.attribute.append(onnx.helper.make_attribute("axis", INTS[value % len(INTS)]))
        return
    node = with_attributes[index % len(with_attributes)]
    attribute = node.attribute[value % len(node.attribute)]
    if how == "remove":
        node.attribute.remove(attribute)
    elif how == "int":
        attribute.i = INTS[value % len(INTS)]
        attribute.type = onnx.AttributeProto.INT
    elif how == "float":
        attribute.f = FLOATS[value % len(FLOATS)]
        attribute.type = onnx.AttributeProto.FLOAT
    elif how == "ints":
        attribute.ints[:] = [INTS[(value + i) % len(INTS)] for i in range(value % 4)]
        attribute.type = onnx.AttributeProto.INTS
    elif how == "type":
        attribute.type = [onnx.AttributeProto.STRING, onnx.AttributeProto.TENSOR,
                          onnx.AttributeProto.GRAPH, onnx.AttributeProto.FLOATS][value % 4]


def _mutate_initializer(init: onnx.TensorProto, how: str, value: int) -> None:
    if how == "truncate":
        if init.raw_data:
            init.raw_data = init.raw_data[:value % (len(init.raw_data) + 1)]
        else:
            for field in ("float_data", "int64_data", "int32_data", "double_data"):
                data = getattr(init, field)
                if len(data):
                    del data[value % len(data):]
    elif how == "retype":
        init.data_type = DTYPES[value % len(DTYPES)]
    elif init.dims:
        init.dims.append(value % 7)


def flip_bytes(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    if not data:
        return data
    buffer = bytearray(data)
    for position, mask in flips:
        buffer[position % len(buffer)] ^= mask
    return bytes(buffer)


def random_inputs(module: sparsec.Module) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in module.inputs:
        if spec.dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(spec.shape).astype(spec.dtype)
        elif spec.dtype.kind == "b":
            feeds[spec.name] = rng.random(spec.shape) < 0.5
        else:  # indices and masks: small values, in range for most tables
            feeds[spec.name] = rng.integers(0, 4, spec.shape).astype(spec.dtype)
    return feeds


@pytest.mark.parametrize("base", sorted(BASES))
@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(changes=st.lists(mutation, min_size=1, max_size=3),
       quantize=st.sampled_from([None, "dynamic", "bf16"]))
def test_mutated_models_compile_or_fail_cleanly(base, changes, quantize, compiler, tmp_path):
    model = onnx.ModelProto()
    model.CopyFrom(BASES[base])
    for change in changes:
        if change[0] != "flip-bytes":
            mutate(model, change)
    data = model.SerializeToString()
    for change in changes:
        if change[0] == "flip-bytes":
            data = flip_bytes(data, change[1])
    path = tmp_path / f"{compiler.count}.onnx"
    path.write_bytes(data)
    try:
        # every layer lowered: on generic the portable int8 and bf16 kernels are predicted
        # slower than float32, and would otherwise never be fuzzed
        result = compiler.compile(path, "generic", max_memory=MEMORY_LIMIT,
                                  quantize=quantize, mixed_precision=False)
    except SparsecError as exc:
        event(f"compile refused: {type(exc).__name__}")
        assert str(exc).strip(), "an error must say what is wrong"
        return
    try:
        with sparsec.load(result.library) as module:
            module.run(random_inputs(module))
        event("compiled and ran")
    except SparsecError as exc:
        event(f"compiled, run refused: {type(exc).__name__}")
        assert str(exc).strip(), "an error must say what is wrong"


def test_the_mutations_reach_the_compiler():
    """The strategy's changes are not no-ops: each kind alters a base model."""
    for change in [("drop-node", 0), ("duplicate-node", 0, 0), ("rewire", 0, False, 0, "ghost"),
                   ("dim", 0, 0, -1), ("attribute", 0, "int", 2), ("initializer", 0,
                                                                   "truncate", 1),
                   ("opset", 99), ("elem-type", 0, TensorProto.STRING)]:
        model = onnx.ModelProto()
        model.CopyFrom(BASES["tiny-bert"])
        mutate(model, change)
        assert model.SerializeToString() != BASES["tiny-bert"].SerializeToString(), change
