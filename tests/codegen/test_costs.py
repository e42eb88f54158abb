"""codegen/costs.py: a Dense node's predicted time is its kernel's work plus its fused
activation's, priced by the kernel's vector width."""

from __future__ import annotations

import dataclasses

import pytest

from sparsec.codegen import costs, selection
from sparsec.codegen.targets import resolve
from sparsec.compiler import frontend
from sparsec.compiler.ops import DENSE
from sparsec.compiler.passes import run_pipeline
from tests.compiler.passes.helpers import selecting
from tests.graphs import mlp


@pytest.mark.parametrize("target, lanes", [("generic", 1), ("x86-avx2", 8), ("x86-avx512", 16)])
@pytest.mark.parametrize("activation", ["Tanh", "Sigmoid", "Relu"])
def test_a_fused_activation_adds_its_price_per_output(target, lanes, activation):
    graph = run_pipeline(frontend.import_model(mlp(k=64, n=48, m=8, density=0.2,
                                                   activation=activation)),
                         selecting(target))
    (node,) = [n for n in graph.nodes if n.op == DENSE]
    spec = selection.chosen(node)
    assert costs.ISA_LANES[spec.isa] == lanes
    plain = dataclasses.replace(node, attrs={**node.attrs, "activation": ""})
    added = (costs.predicted_ns(graph, node, spec, resolve(target))
             - costs.predicted_ns(graph, plain, spec, resolve(target)))
    expected = 8 * 48 * costs.ACTIVATION_NS[activation][lanes] \
        if activation in costs.ACTIVATION_NS else 0.0  # Relu: a max in the store
    assert added == pytest.approx(expected)


@pytest.mark.parametrize("target, packing", [("x86-avx2", costs.WIDENED_BF16_PACK_NS),
                                             ("x86-avx512", 0.0), ("x86-amx", 0.0),
                                             ("generic", 0.0)])
def test_bf16_widened_to_floats_pays_its_packing_per_activation(target, packing):
    """Only where bf16 has no arithmetic of its own (AVX2: the tile's pairs widened to floats
    as it is packed) does a bf16 layer pay per activation element; float32 never does."""
    assert costs.cost_model(resolve(target), "bfloat16").per_activation == packing
    assert costs.cost_model(resolve(target), "float32").per_activation == 0.0
