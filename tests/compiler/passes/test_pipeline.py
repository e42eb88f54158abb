import dataclasses

import pytest

from sparsec.compiler import frontend
from sparsec.compiler.ir import Node
from sparsec.compiler.passes import PIPELINE, run_pipeline
from sparsec.compiler.verify import verify
from sparsec.errors import VerificationError
from tests.compiler.passes.helpers import context
from tests.graphs import mlp


def test_pipeline_is_data_with_reasons():
    names = [name for name, _, _ in PIPELINE]
    assert names == ["fold-constants", "lower-conv", "detect-sparsity", "fuse", "reorder-blocks",
                     "quantize", "select-kernels", "choose-layouts", "absorb-patches",
                     "absorb-residual", "plan-memory"]
    assert all(why for _, _, why in PIPELINE)


def test_dump_ir_writes_every_pass(tmp_path):
    ctx = context()
    ctx.options = dataclasses.replace(ctx.options, dump_ir=tmp_path)
    run_pipeline(frontend.import_model(mlp()), ctx)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["00-import.txt", "01-fold-constants.txt", "02-lower-conv.txt",
                     "03-detect-sparsity.txt", "04-fuse.txt", "05-reorder-blocks.txt",
                     "06-quantize.txt", "07-select-kernels.txt", "08-choose-layouts.txt",
                     "09-absorb-patches.txt", "10-absorb-residual.txt",
                     "11-plan-memory.txt"]
    assert "Dense(" in (tmp_path / "04-fuse.txt").read_text()


def test_verifier_names_the_pass_and_the_problem():
    graph = frontend.import_model(mlp())
    graph.nodes.insert(0, Node("Relu", ["pre"], ["early"]))
    graph.tensors["early"] = graph.tensors["pre"]
    with pytest.raises(VerificationError, match=r"after my-pass: node %0 \(Relu\) reads 'pre'"):
        verify(graph, "my-pass")
