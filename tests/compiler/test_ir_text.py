"""compiler/ir_text.py: the IR's text form reads back as the graph it was written from, and
says where a hand-written one is wrong."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import sparsec
from sparsec.compiler.ir_text import parse_graph

SAMPLES = Path(__file__).resolve().parents[2] / "samples"

# What the printer writes for the reader and the parser leaves to the passes that compute it.
DERIVED = re.compile(r" density=\S+ pattern=\S+( blocks=\d+)?|\n  arena .*|\n    @.*")


@pytest.mark.parametrize("sample", ["mlp_sparse.onnx", "tiny_bert.onnx"])
def test_every_dumped_stage_reads_back_as_written(sample, tmp_path, cache_dir):
    sparsec.compile(SAMPLES / sample, "x86-avx2", tmp_path / "m.so", dump_ir=tmp_path / "ir",
                    cache_dir=cache_dir)
    stages = sorted((tmp_path / "ir").glob("*.txt"))
    assert len(stages) >= 8
    for stage in stages:
        written = DERIVED.sub("", stage.read_text())
        graph = parse_graph(written)
        assert graph.to_text() == written, stage.name
        # node outputs typed where made: every value the nodes use is known
        assert all(name in graph.tensors for node in graph.nodes
                   for name in node.inputs + node.outputs if name)


def test_constants_come_by_name_and_kernels_and_layouts_are_read():
    weight = np.arange(8, dtype=np.float32).reshape(2, 4)
    graph = parse_graph("""
        graph opset=17
          input  'x': float32[3x2]
          const  'w': float32[2x4] const
          %0 Dense('x', 'w') -> 'h, odd': float32[3x4] layout=feature-major  {activation='Relu', alpha=1.0, trans_a=0}  => f32_gemm_avx2 | avx512f: f32_gemm_avx512
          %1 Transpose('h, odd') -> 'y'  {perm=[1, 0]}  # node 'flip'
          output 'y': float32[3x4]
        """, {"w": weight})
    assert graph.tensors["w"].data is weight
    dense, flip = graph.nodes
    assert dense.attrs == {"activation": "Relu", "alpha": 1.0, "trans_a": 0}
    assert dense.kernel == "f32_gemm_avx2" and dense.dispatch == (("avx512f", "f32_gemm_avx512"),)
    assert graph.tensors["h, odd"].layout == "feature-major" and flip.name == "flip"
    assert flip.attrs == {"perm": [1, 0]} and graph.outputs == ["y"]


@pytest.mark.parametrize("text, message", [
    ("opset 17", "starts with 'graph opset=N'"),
    ("graph opset=17\n  %0 Relu('x') -> 'y'\n  output 'y': float32[2]", "never types: 'x'"),
    ("graph opset=17\n  input  'x': float32[2\n", "line 2: expected 'name': dtype"),
    ("graph opset=17\n  input  'x': float32[2]\n  Relu x\n", "line 3: not an input"),
    ("graph opset=17\n  const  'w': float32[2] const\n", "given as float64"),
])
def test_a_wrong_text_says_which_line(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_graph(text, {"w": np.zeros(2)})
