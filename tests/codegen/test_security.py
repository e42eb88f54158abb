"""Model files are untrusted: no text from a model reaches generated C except escaped."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import HOST_TARGETS, run_onnxruntime

HOSTILE = [
    'x"; system("touch PWNED"); //',
    "*/ int evil = 1; /*",
    "new\nline",
    "back\\\nslash",
    "??/ trigraph",
    '#include "/etc/passwd"',
    "int",
    "名前-naïve",
    "q" * 5000,
    "a.b",
    "a_b",  # collides with "a.b" after any sanitising
]


def hostile_model():
    """Every name in the graph is hostile: inputs, outputs, nodes, weights, intermediates."""
    rng = np.random.default_rng(0)
    names = HOSTILE
    nodes, inits = [], []
    inputs = [names[0], names[9]]  # two inputs
    # y0 = relu(in0 @ W + b), y1 = in1 * y0
    w = (rng.standard_normal((4, 4)) * (rng.random((4, 4)) < 0.5)).astype(np.float32)
    inits += [numpy_helper.from_array(w, names[1]),
              numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), names[2])]
    nodes.append(helper.make_node("MatMul", [inputs[0], names[1]], [names[3]], name=names[4],
                                  doc_string=names[5]))
    nodes.append(helper.make_node("Add", [names[3], names[2]], [names[6]], name=names[7]))
    nodes.append(helper.make_node("Relu", [names[6]], [names[8]], name=names[0]))
    nodes.append(helper.make_node("Mul", [inputs[1], names[8]], [names[10]], name=names[5]))
    graph = helper.make_graph(
        nodes, names[5],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 4]) for n in inputs],
        [helper.make_tensor_value_info(names[8], TensorProto.FLOAT, [2, 4]),
         helper.make_tensor_value_info(names[10], TensorProto.FLOAT, [2, 4])], inits,
        doc_string=names[1])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name=names[0], doc_string=names[2])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("target", HOST_TARGETS)
def test_hostile_names_compile_and_run_correctly(compiler, tmp_path, monkeypatch, target):
    monkeypatch.chdir(tmp_path)
    model = hostile_model()
    source = tmp_path / "source"
    result = compiler.compile(model, target, keep_source=source)
    text = (source / "model.c").read_text()
    for name in HOSTILE:
        if len(name) > 3 and name not in ("a.b", "a_b"):
            assert name not in text, f"raw model text {name[:30]!r} reached the C source"
    assert not list(tmp_path.glob("PWNED*")) and not list(tmp_path.rglob("PWNED"))
    import sparsec

    module = sparsec.load(result.library)
    rng = np.random.default_rng(1)
    feeds = {HOSTILE[0]: rng.standard_normal((2, 4)).astype(np.float32),
             HOSTILE[9]: rng.standard_normal((2, 4)).astype(np.float32)}
    got = module.run(feeds)
    expected = run_onnxruntime(model, feeds)
    assert [o.name for o in module.outputs] == [HOSTILE[8], HOSTILE[10]]
    for name, value in zip([HOSTILE[8], HOSTILE[10]], expected):
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6)
    header = result.header.read_text()
    assert HOSTILE[0] not in header and "#include \"/etc/passwd\"" not in header


def test_colliding_names_stay_distinct(compiler):
    nodes = [helper.make_node("Sub", ["a.b", "a_b"], ["a-b"])]
    graph = helper.make_graph(nodes, "g", [
        helper.make_tensor_value_info("a.b", TensorProto.FLOAT, [3]),
        helper.make_tensor_value_info("a_b", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("a-b", TensorProto.FLOAT, [3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    module = compiler.load(model, "generic")
    out = module.run({"a.b": np.array([5, 6, 7], np.float32),
                      "a_b": np.array([1, 2, 3], np.float32)})
    np.testing.assert_array_equal(out["a-b"], [4, 4, 4])


def test_generated_header_compiles_and_spells_hostile_names(compiler, tmp_path):
    import subprocess

    from sparsec.codegen.build import find_compiler

    result = compiler.compile(hostile_model(), "generic")
    program = tmp_path / "names.c"
    program.write_text(
        "#include <stdio.h>\n"
        "#include \"sparsec.h\"\n"
        f"#include \"{result.header.name}\"\n"
        "int main(void) {\n"
        "  fputs(SPARSEC_MODEL_INPUT0_NAME, stdout); fputc(0, stdout);\n"
        "  fputs(SPARSEC_MODEL_INPUT1_NAME, stdout); fputc(0, stdout);\n"
        "  fputs(SPARSEC_MODEL_OUTPUT0_NAME, stdout); fputc(0, stdout);\n"
        "  fputs(SPARSEC_MODEL_OUTPUT1_NAME, stdout); fputc(0, stdout);\n"
        "  return 0;\n}\n")
    exe = tmp_path / "names"
    subprocess.run([find_compiler(), "-std=c11", "-Wall", "-Werror", "-trigraphs",
                    "-I", str(result.header.parent), str(program), "-o", str(exe)],
                   check=True, capture_output=True)
    printed = subprocess.run([str(exe)], check=True, capture_output=True).stdout.split(b"\0")
    assert printed[:4] == [n.encode() for n in (HOSTILE[0], HOSTILE[9], HOSTILE[8],
                                                HOSTILE[10])]
