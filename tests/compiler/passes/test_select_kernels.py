"""select-kernels decides each node's kernel once; everything after it reads the record."""

import dataclasses

import numpy as np
import pytest

from sparsec.codegen import emit, kernels, selection
from sparsec.codegen.targets import resolve
from sparsec.compiler import frontend
from sparsec.compiler.ops import DENSE
from sparsec.compiler.passes import run_pipeline
from sparsec.errors import KernelNotFoundError
from tests.compiler.passes.helpers import context, selecting
from tests.graphs import mlp


@pytest.mark.parametrize("target", ["generic", "x86-avx2", "x86-avx512", "arm-neon-dotprod"])
def test_every_node_records_the_row_select_chooses(target):
    graph = run_pipeline(frontend.import_model(mlp(density=0.1)), selecting(target))
    for node in graph.nodes:
        assert node.kernel == selection.select(graph, node, resolve(target)).symbol
        assert f"=> {node.kernel}" in graph.to_text()


def test_dispatched_rows_are_recorded_with_their_feature():
    graph = run_pipeline(frontend.import_model(mlp(density=0.1)), selecting("x86-avx512"))
    recorded = {feature for node in graph.nodes for feature, _ in node.dispatch}
    offered = {option.feature for option in resolve("x86-avx512").dispatch}
    assert recorded <= offered
    for node in graph.nodes:
        for _, key in node.dispatch:
            assert kernels.by_key(key).op == node.op


def test_emit_renders_the_recorded_kernel_not_a_fresh_choice():
    """Overriding a Dense node's key by hand (here: the portable row) is what gets built."""
    graph = run_pipeline(frontend.import_model(mlp(density=1.0)), selecting("x86-avx2"))
    dense = next(n for n in graph.nodes if n.op == DENSE)
    portable = next(k for k in kernels.KERNELS if k.op == DENSE and k.isa == "scalar"
                    and k.pattern == "dense")
    assert dense.kernel != portable.symbol
    dense.kernel, dense.dispatch = portable.symbol, ()
    with pytest.warns(Warning):  # a portable product on a SIMD target is never silent
        rendered = emit.emit(graph, resolve("x86-avx2"), "test")
    layer = next(layer for layer in rendered.info["layers"] if layer["node"] == dense.name)
    assert layer["kernel"] == portable.symbol


def test_a_node_without_a_recorded_kernel_is_an_error_not_a_silent_choice():
    graph = run_pipeline(frontend.import_model(mlp()), context())  # no select_kernel
    assert all(not node.kernel for node in graph.nodes)
    with pytest.raises(KernelNotFoundError, match="select-kernels pass has not run"):
        emit.emit(graph, resolve("generic"), "test")


def test_unknown_key_is_named():
    with pytest.raises(KernelNotFoundError, match="no kernel 'sparsec_nope'"):
        kernels.by_key("sparsec_nope")


def test_every_node_without_a_kernel_is_reported_at_once():
    graph = frontend.import_model(mlp())
    for node in graph.nodes:
        node.op = "NoSuchOp"
    ctx = selecting("generic")
    with pytest.raises(KernelNotFoundError) as error:
        run_pipeline(graph, dataclasses.replace(ctx, options=dataclasses.replace(
            ctx.options, verify_each=False)))
    assert f"{len(graph.nodes)} node(s) cannot be compiled for target generic" in str(
        error.value)


def test_keys_are_unique_and_name_their_rows():
    assert len({k.symbol for k in kernels.KERNELS}) == len(kernels.KERNELS)
    assert all(kernels.by_key(k.symbol) is k for k in kernels.KERNELS)
    assert np.all([k.symbol.startswith("sparsec_") for k in kernels.KERNELS])
