"""Differential test: random pruned MLPs compiled by sparsec, checked against onnxruntime.

hypothesis draws MLP-like graphs: 1-4 layers, each a MatMul (+ bias Add) or a Gemm (transB,
C of several broadcast shapes, alpha, beta), then maybe an activation. Weights are pruned in
whole blocks of a drawn shape at a drawn density (partial blocks at the K and N tails too), so
detect_sparsity picks sparse kernels for some layers and the dense kernel for others; the test
asserts from the compiled model's layer info that both kinds ran on every target.

Outputs are compared element by element against a bound computed alongside a float64 reference:
the error each operator may add (TOLERANCE, one justified line per operator), carried through the
later layers. Targets the host cannot execute are compiled only.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from sparsec.codegen import targets
from tests.conftest import TARGET_PARAMS, run_onnxruntime
from tests.runs import Runs

EPS = float(np.finfo(np.float32).eps)
BLOCKS = ((1, 1), (4, 1), (1, 4), (1, 16), (16, 1), (4, 4))
ACTIVATIONS = ("", "Relu", "Sigmoid", "Tanh", "Clip")


@dataclass(frozen=True)
class Tolerance:
    """What one fp32 implementation of an operator may be off by, in float32 eps:
    `per_sqrt_k` x sqrt(K) x sum|a*w| for a product, `relative` x the magnitude of the terms it
    adds, `absolute` for a transcendental; an error in its input grows by at most `lipschitz`."""

    per_sqrt_k: float = 0.0
    relative: float = 0.0
    absolute: float = 0.0
    lipschitz: float = 1.0


TOLERANCE = {
    # K products summed in fp32 in an order onnxruntime does not share: the roundings walk like
    # sqrt(K) eps of sum|a*w|; the factor 2 is headroom for several standard deviations.
    "MatMul": Tolerance(per_sqrt_k=2.0),
    # The same sum, then alpha * sum + beta * C: one more rounding of each term.
    "Gemm": Tolerance(per_sqrt_k=2.0, relative=1.0),
    "Add": Tolerance(relative=1.0),  # one rounding of product + bias
    "Relu": Tolerance(),  # a compare and a select: exact
    "Clip": Tolerance(),  # two compares and selects: exact
    # expf-based (sparsec) and MLAS's logistic are within 1.4 eps of the true value on
    # [-20, 20] (measured); outputs lie in (0, 1), so an absolute bound; slope at most 1/4.
    "Sigmoid": Tolerance(absolute=4.0, lipschitz=0.25),
    # tanhf and MLAS's tanh are within 2.3 eps (measured on [-20, 20]); outputs in [-1, 1].
    "Tanh": Tolerance(absolute=4.0),
}


@dataclass(eq=False)
class Layer:
    op: str  # "MatMul" or "Gemm"
    weight: np.ndarray  # as the model stores it: K x N, or N x K when trans_b
    pruned: str  # the block shape the weight was pruned in, e.g. "4x1" (for messages)
    bias: np.ndarray | None = None  # MatMul: the Add's operand, [N]; Gemm: C
    bias_first: bool = False  # Add(bias, product) rather than Add(product, bias)
    trans_a: int = 0  # first layer only: the graph input is K x M
    trans_b: int = 0
    alpha: float | None = None  # None: attribute left out (ONNX default 1)
    beta: float | None = None
    activation: str = ""
    clip: tuple[float | None, float | None] = (None, None)  # None: that input left out

    @property
    def kn(self) -> np.ndarray:
        return self.weight.T if self.trans_b else self.weight

    def __repr__(self) -> str:
        k, n = self.kn.shape
        extras = [f"bias{list(self.bias.shape)}" if self.bias is not None else "",
                  "transA" if self.trans_a else "", "transB" if self.trans_b else "",
                  f"alpha={self.alpha}" if self.alpha is not None else "",
                  f"beta={self.beta}" if self.beta is not None else "",
                  self.activation + (str(self.clip) if self.activation == "Clip" else "")]
        density = np.count_nonzero(self.weight) / self.weight.size
        return (f"{self.op}({k}x{n}, {self.pruned} blocks, density {density:.2f}"
                + "".join(f", {e}" for e in extras if e) + ")")


@dataclass(eq=False)
class Case:
    name: str
    input_shape: tuple[int, ...]
    layers: list[Layer]
    expose_first_product: bool = False  # also return layer 0's raw product
    seed: int = 0
    tensors: list[list[str]] = field(default_factory=list, repr=False)  # filled by to_onnx

    def __repr__(self) -> str:
        expose = ", exposes p0" if self.expose_first_product else ""
        return (f"Case({self.name!r}, x{list(self.input_shape)}{expose}, seed={self.seed}, "
                f"{self.layers})")

    def _repr_pretty_(self, printer, cycle) -> None:  # hypothesis prints examples with this
        printer.text(repr(self))


# --- building cases ---------------------------------------------------------------------------

def pruned_weight(rng, k: int, n: int, block: tuple[int, int], density: float,
                  fill: float = 1.0) -> np.ndarray:
    """K x N weight whose R x C blocks (partial at the tails) are kept with probability
    `density`; inside a kept block each element survives with probability `fill`."""
    rows, cols = block
    kb, nb = -(-k // rows), -(-n // cols)
    keep = np.repeat(np.repeat(rng.random((kb, nb)) < density, rows, 0), cols, 1)[:k, :n]
    keep &= rng.random((k, n)) < fill
    return (rng.standard_normal((k, n)) / np.sqrt(k) * keep).astype(np.float32)


def make_layer(rng, k: int, n: int, lead: tuple[int, ...], *, op: str = "MatMul",
               block=(1, 1), density: float = 1.0, fill: float = 1.0, bias: str = "",
               trans_b: int = 0, **options) -> Layer:
    """lead: the output's leading dims. bias: "" none, "N" shape [N], "1N" [1, N], "one" [1],
    "scalar" [], "MN" the whole output (lead + [N]), "M1" lead + [1]."""
    weight = pruned_weight(rng, k, n, block, density, fill)
    shapes = {"": None, "N": (n,), "1N": (1, n), "one": (1,), "scalar": (),
              "MN": (*lead, n), "M1": (*lead, 1)}
    shape = shapes[bias]
    values = None if shape is None else rng.standard_normal(shape).astype(np.float32)
    return Layer(op, np.ascontiguousarray(weight.T) if trans_b else weight,
                 f"{block[0]}x{block[1]}", values, trans_b=trans_b, **options)


def edge(name: str, input_shape, *specs, expose_first_product=False) -> Case:
    """A pinned case: specs are (N, keyword options of make_layer) per layer."""
    rng = np.random.default_rng(0)
    lead, k = tuple(input_shape[:-1]), input_shape[-1]
    if specs[0][1].get("trans_a"):
        lead, k = tuple(input_shape[1:]), input_shape[0]
    layers = []
    for n, options in specs:
        layers.append(make_layer(rng, k, n, lead, **options))
        k = n
    return Case(name, tuple(input_shape), layers, expose_first_product)


WIDTHS = st.one_of(st.sampled_from([1, 3, 4, 16, 17, 33, 64]), st.integers(1, 70))
DENSITIES = st.one_of(st.sampled_from([0.0, 0.02, 0.1, 0.3, 1.0]), st.floats(0.0, 1.0))


@st.composite
def layers(draw, rng, k: int, n: int, lead: tuple[int, ...], first: bool) -> Layer:
    op = draw(st.sampled_from(["MatMul", "Gemm"] if len(lead) == 1 else ["MatMul"]))
    options = {"block": draw(st.sampled_from(BLOCKS)), "density": draw(DENSITIES),
               "fill": draw(st.sampled_from([1.0, 1.0, 0.5])),
               "activation": draw(st.sampled_from(ACTIVATIONS))}
    if options["activation"] == "Clip":
        bound = st.none() | st.sampled_from([-1.0, -0.25, 0.0, 0.5, 2.0])
        options["clip"] = (draw(bound), draw(bound))
    if op == "MatMul":
        # [N] is the usual bias; the others broadcast too, and MN, M1 cannot fuse.
        options["bias"] = draw(st.sampled_from(["", "N", "N", "1N", "one", "scalar", "MN", "M1"]))
        options["bias_first"] = draw(st.booleans())
    else:
        options["bias"] = draw(st.sampled_from(["", "N", "1N", "one", "scalar", "MN", "M1"]))
        options["trans_a"] = draw(st.integers(0, 1)) if first else 0
        options["trans_b"] = draw(st.integers(0, 1))
        scale = st.none() | st.sampled_from([0.5, -1.5, 2.0, 0.0])
        options["alpha"], options["beta"] = draw(scale), draw(scale)
    return make_layer(rng, k, n, lead, op=op, **options)


@st.composite
def mlp_cases(draw) -> Case:
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    widths = [draw(WIDTHS) for _ in range(draw(st.integers(1, 4)) + 1)]
    if draw(st.integers(0, 4)) == 0:  # 3-D activations [B, S, K]: MatMul layers only
        lead = (draw(st.integers(1, 3)), draw(WIDTHS))
    else:
        lead = (draw(WIDTHS),)
    drawn = [draw(layers(rng, k, n, lead, first=i == 0))
             for i, (k, n) in enumerate(zip(widths[:-1], widths[1:]))]
    input_shape = (widths[0], *lead) if drawn[0].trans_a else (*lead, widths[0])
    return Case("drawn", input_shape, drawn, draw(st.integers(0, 5)) == 0, seed)


# --- the model, and what it should compute -----------------------------------------------------

def to_onnx(case: Case) -> onnx.ModelProto:
    """The case as an opset-17 model; case.tensors gets each layer's [product, ..., output]."""
    nodes, inits, case.tensors = [], [], []
    current = "x"
    for i, layer in enumerate(case.layers):
        names = [f"p{i}"]
        inits.append(numpy_helper.from_array(layer.weight, f"w{i}"))
        if layer.bias is not None:
            inits.append(numpy_helper.from_array(layer.bias, f"b{i}"))
        if layer.op == "MatMul":
            nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [f"p{i}"]))
            if layer.bias is not None:
                operands = [f"b{i}", f"p{i}"] if layer.bias_first else [f"p{i}", f"b{i}"]
                nodes.append(helper.make_node("Add", operands, [f"a{i}"]))
                names.append(f"a{i}")
        else:
            attrs = {"transA": layer.trans_a, "transB": layer.trans_b}
            attrs.update({a: v for a, v in (("alpha", layer.alpha), ("beta", layer.beta))
                          if v is not None})
            operands = [current, f"w{i}"] + ([f"b{i}"] if layer.bias is not None else [])
            nodes.append(helper.make_node("Gemm", operands, [f"p{i}"], **attrs))
        if layer.activation:
            operands = [names[-1]]
            if layer.activation == "Clip":
                for which, value in zip(("min", "max"), layer.clip):
                    if value is not None:
                        inits.append(numpy_helper.from_array(np.float32(value), f"{which}{i}"))
                    operands.append(f"{which}{i}" if value is not None else "")
            nodes.append(helper.make_node(layer.activation, operands, [f"h{i}"]))
            names.append(f"h{i}")
        case.tensors.append(names)
        current = names[-1]
    outputs = [current] + (["p0"] if case.expose_first_product and current != "p0" else [])
    lead = list(case.input_shape[1:] if case.layers[0].trans_a else case.input_shape[:-1])
    out_widths = {current: case.layers[-1].kn.shape[1], "p0": case.layers[0].kn.shape[1]}
    graph = helper.make_graph(
        nodes, "differential",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(case.input_shape))],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, lead + [out_widths[o]])
         for o in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def activate(layer: Layer, v: np.ndarray) -> np.ndarray:
    if layer.activation == "Relu":
        return np.maximum(v, 0.0)
    if layer.activation == "Sigmoid":
        return 1.0 / (1.0 + np.exp(-v))
    if layer.activation == "Tanh":
        return np.tanh(v)
    if layer.activation == "Clip":
        low, high = layer.clip
        v = v if low is None else np.maximum(v, low)
        return v if high is None else np.minimum(v, high)
    return v


def reference(case: Case, x: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every tensor's exact value (float64) and how far one fp32 implementation may be from it:
    the error each operator adds (TOLERANCE), plus its input's error carried through it."""
    value = (x.T if case.layers[0].trans_a else x).astype(np.float64)
    error = np.zeros(value.shape)
    found = {}
    for layer, names in zip(case.layers, case.tensors):
        w = layer.kn.astype(np.float64)
        tol = TOLERANCE[layer.op]
        magnitude = np.abs(value) @ np.abs(w)
        value = value @ w
        error = np.abs(error) @ np.abs(w) + tol.per_sqrt_k * EPS * np.sqrt(w.shape[0]) * magnitude
        if layer.op == "Gemm":
            alpha = 1.0 if layer.alpha is None else layer.alpha
            beta = 1.0 if layer.beta is None else layer.beta
            c = 0.0 if layer.bias is None else beta * layer.bias.astype(np.float64)
            error = abs(alpha) * error + tol.relative * EPS * (np.abs(alpha * value) + np.abs(c))
            value = alpha * value + c
        found[names[0]] = (value, error)
        if layer.op == "MatMul" and layer.bias is not None:
            b = layer.bias.astype(np.float64)
            error = error + TOLERANCE["Add"].relative * EPS * (np.abs(value) + np.abs(b))
            value = value + b
        if layer.activation:
            act = TOLERANCE[layer.activation]
            value, error = activate(layer, value), act.lipschitz * error + act.absolute * EPS
        found[names[-1]] = (value, error)
    return found


# --- the test ---------------------------------------------------------------------------------

def inputs_of(case: Case) -> dict:
    return {"x": np.random.default_rng(case.seed).standard_normal(case.input_shape)
            .astype(np.float32)}


def check_against_onnxruntime(case: Case, model: onnx.ModelProto, got: dict) -> None:
    x = inputs_of(case)["x"]
    names = [o.name for o in model.graph.output]
    expected = dict(zip(names, run_onnxruntime(model, {"x": x})))
    bounds = reference(case, x)
    assert list(got) == names
    for name in names:
        actual, wanted = got[name], expected[name]
        assert actual.shape == wanted.shape, name
        # Both implementations lie within the bound of the exact value, so within twice of
        # each other.
        allowed = 2 * bounds[name][1]
        excess = np.abs(actual.astype(np.float64) - wanted) - allowed
        if not np.all(excess <= 0):
            worst = np.unravel_index(np.argmax(excess), excess.shape)
            raise AssertionError(
                f"{name}{[int(i) for i in worst]}: sparsec {float(actual[worst])!r}, "
                f"onnxruntime {float(wanted[worst])!r}, allowed difference "
                f"{allowed[worst]:.3g} "
                f"({int(np.sum(excess > 0))} of {excess.size} elements differ)")


@pytest.mark.parametrize("target", TARGET_PARAMS)
def test_random_mlps_match_onnxruntime(target, compiler):
    """Run natively as drawn, or for another architecture in one batch under qemu once every
    case is drawn; compile-only targets check the kernel choice."""
    patterns: Counter[str] = Counter()  # weight patterns the compiler chose, over all examples
    runs = Runs(targets.resolve(target), compiler.cache_dir)

    @settings(max_examples=15, deadline=None)
    @given(case=mlp_cases())
    @example(case=edge("all_zero_weight", (3, 17),
                       (17, {"density": 0.0, "bias": "N", "activation": "Relu"}),
                       (5, {"density": 0.0})))
    @example(case=edge("fully_dense_weight", (17, 33),
                       (33, {"op": "Gemm", "trans_b": 1, "bias": "1N", "alpha": 0.5,
                             "beta": 2.0, "activation": "Tanh"}),
                       (17, {"op": "Gemm", "bias": "MN", "beta": -1.5}),
                       (17, {"op": "Gemm", "bias": "scalar"})))
    @example(case=edge("k_eq_1_and_n_eq_1", (4, 1),
                       (64, {"density": 0.05, "bias": "N", "activation": "Sigmoid"}),
                       (1, {"block": (16, 1), "density": 0.5, "bias": "N"})))
    @example(case=edge("m_eq_1", (1, 17),
                       (17, {"block": (4, 4), "density": 0.3, "activation": "Clip",
                             "clip": (-0.25, None)}),
                       (17, {"op": "Gemm", "block": (1, 16), "density": 0.3, "bias": "M1"})))
    @example(case=edge("widths_17", (17, 17),
                       (17, {"block": (16, 1), "density": 0.1, "bias": "N"}),
                       (17, {"block": (1, 4), "density": 0.1, "activation": "Relu"}),
                       (17, {"block": (1, 1), "density": 0.02, "bias": "N", "bias_first": True}),
                       (17, {"op": "Gemm", "block": (4, 1), "density": 0.1, "bias": "MN",
                             "trans_b": 1})))
    @example(case=edge("three_d_input", (2, 3, 17),
                       (33, {"block": (1, 16), "density": 0.2, "bias": "N",
                             "activation": "Relu"}),
                       (3, {"block": (4, 4), "density": 0.5})))
    @example(case=edge("gemm_trans_a_sparse", (33, 5),
                       (17, {"op": "Gemm", "trans_a": 1, "block": (4, 1), "density": 0.02,
                             "bias": "M1", "alpha": 2.0, "beta": -1.5})))
    @example(case=edge("exposed_product", (5, 16),
                       (16, {"block": (1, 4), "density": 0.05, "bias": "N",
                             "activation": "Relu"}),
                       expose_first_product=True))
    def check(case: Case):
        model = to_onnx(case)
        result = compiler.compile(model, target)
        dense_layers = [layer for layer in result.info["layers"] if layer["op"] == "Dense"]
        assert len(dense_layers) == len(case.layers), "every matrix product runs as Dense"
        patterns.update(layer["pattern"] for layer in dense_layers)
        runs.submit(result, inputs_of(case), functools.partial(check_against_onnxruntime,
                                                               case, model), label=repr(case))

    check()
    runs.flush()
    assert patterns["dense"] and set(patterns) - {"dense"}, \
        f"both dense and sparse kernels must run; the patterns chosen were {dict(patterns)}"

