"""Compile memory follows the weights' size: a model of known weight bytes compiles in a process
whose address space is limited to twice that plus a fixed margin, and the library computes
what numpy computes.

Before the weights were streamed (compiler/weights.py, codegen/emit.WeightBlob), onnx.load, the
checker, shape inference, numpy and the blob each held a copy: about 5x the weights, which
this limit refuses. The C compiler runs under the same limit (a child inherits RLIMIT_AS), so
the assembler's and linker's share of the blob is bounded too."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import sparsec
from sparsec.codegen import targets

WIDTH = 4096
LAYERS = 3
WEIGHT_BYTES = LAYERS * WIDTH * WIDTH * 4  # 192 MiB of float32
MARGIN = 512 << 20
"""What the compile needs besides the weights' two copies (the mapped weights and what packing
makes of them): the interpreter with numpy, onnx and jinja2 mapped, and one weight's
temporaries at a time. Measured: VmPeak 614 MB for this model (Python 3.11, numpy 2.4, onnx
1.23, one BLAS thread), 280 MB under the limit, room for other versions; the compile before
the weights were streamed ran out of memory under it."""
ADDRESS_SPACE = 2 * WEIGHT_BYTES + MARGIN


def _layers() -> tuple[onnx.ModelProto, list[np.ndarray]]:
    """x @ W1 -> Relu -> @ W2 -> Relu -> @ W3: W1 pruned 90 % in 4x1 blocks, W2 dense, W3
    pruned 90 % without structure, so that sparse packing and dense panels are both made."""
    rng = np.random.default_rng(0)
    weights = []
    for layer in range(LAYERS):
        w = (rng.standard_normal((WIDTH, WIDTH), np.float32) / np.sqrt(WIDTH)).astype(np.float32)
        if layer == 0:
            keep = rng.random((WIDTH // 4, WIDTH)) < 0.1
            w *= np.repeat(keep, 4, axis=0)
        elif layer == 2:
            w *= rng.random((WIDTH, WIDTH)) < 0.1
        weights.append(w)
    nodes, previous = [], "x"
    for layer in range(LAYERS):
        out = "y" if layer == LAYERS - 1 else f"h{layer}"
        nodes.append(helper.make_node("MatMul", [previous, f"w{layer}"], [f"m{layer}"]))
        nodes.append(helper.make_node("Relu", [f"m{layer}"], [out]))
        previous = out
    graph = helper.make_graph(
        nodes, "layers", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, WIDTH])],
        [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), weights


@pytest.mark.parametrize("external", [False, True], ids=["embedded", "external-data"])
def test_a_model_compiles_in_twice_its_weights_and_computes_the_same(tmp_path, external):
    model, weights = _layers()
    path = tmp_path / "layers.onnx"
    onnx.save(model, str(path), save_as_external_data=external, location="layers.data")
    del model
    library = tmp_path / "layers.so"
    limited = textwrap.dedent(f"""
        import resource, runpy, sys
        resource.setrlimit(resource.RLIMIT_AS, ({ADDRESS_SPACE}, {ADDRESS_SPACE}))
        sys.argv = ["sparsec", "compile", {str(path)!r}, "--no-cache", "-o", {str(library)!r}]
        runpy.run_module("sparsec", run_name="__main__")
    """)
    # One BLAS thread: each OpenBLAS thread reserves its own buffers, which on a many-core
    # machine would spend the address space before sparsec starts.
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", limited], capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    x = np.random.default_rng(1).standard_normal((2, WIDTH)).astype(np.float32)
    expected = x.astype(np.float64)
    for w in weights:
        expected = np.maximum(expected @ w.astype(np.float64), 0)
    output = sparsec.load(library).run({"x": x})["y"]
    # float32 sums of 4,096 products in another order than numpy's float64 reference: the
    # error bound is about K x float32's epsilon (2.4e-4) of the largest partial sum, and
    # three layers compound it; typical errors are a hundred times smaller.
    np.testing.assert_allclose(output, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())


def _sections(library) -> dict[str, int]:
    """An ELF64 little-endian shared library's section sizes by name."""
    data = library.read_bytes()
    shoff, = struct.unpack_from("<Q", data, 0x28)
    entry_size, count, names_index = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", data, shoff + i * entry_size) for i in range(count)]
    names_offset = headers[names_index][4]
    sections = {}
    for name, _type, _flags, _address, _offset, size in headers:
        start = names_offset + name
        sections[data[start:data.index(b"\0", start)].decode()] = size
    return sections


@pytest.mark.skipif(targets.host_arch() != "x86_64", reason="the large data section is x86-64's")
def test_the_weights_are_in_the_large_data_section(tmp_path):
    """On x86-64 the blob lies in .lrodata, which the linker places after .data and .bss, so a
    blob over 2 GiB leaves the code's 32-bit references to them in reach (benchmarks/
    large_model.py compiles and runs a 2.25 GiB one); what lies in .rodata stays small."""
    model, _ = _layers()
    del model.graph.initializer[1:]  # one 64 MiB weight: x @ W0 -> Relu
    del model.graph.node[2:]
    model.graph.output[0].name = "h0"
    library = sparsec.compile(model, "generic", tmp_path / "one.so", use_cache=False)
    sections = _sections(library)
    assert sections[".lrodata"] >= WIDTH * WIDTH * 4 * 0.1  # W0's nonzeros at least
    assert sections[".rodata"] < 1 << 20
