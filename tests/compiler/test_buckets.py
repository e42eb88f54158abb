"""compiler/buckets.py: a bucket request expanded into per-plan input shapes, and the axes of
each output that follow the length."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from sparsec.compiler import buckets
from sparsec.errors import ShapeError


def encoder_inputs() -> onnx.ModelProto:
    """Three inputs as exporters declare them, sharing batch_size and sequence_length, and
    one that shares neither."""
    values = [helper.make_tensor_value_info(name, TensorProto.INT64,
                                            ["batch_size", "sequence_length"])
              for name in ("input_ids", "attention_mask", "token_type_ids")]
    values.append(helper.make_tensor_value_info("labels", TensorProto.INT64, ["batch_size"]))
    graph = helper.make_graph([], "inputs", values, [])
    return helper.make_model(graph)


def test_inputs_sharing_the_dimension_follow_it():
    plan = buckets.expand(encoder_inputs(), {"input_ids": (2, [64, 16, 32])})
    assert plan.lengths == (16, 32, 64)
    assert plan.axes == {"input_ids": 1, "attention_mask": 1, "token_type_ids": 1}
    assert plan.shapes(32) == {"input_ids": (2, 32), "attention_mask": (2, 32),
                               "token_type_ids": (2, 32)}  # labels: left to --input-shape


def test_the_same_lengths_may_be_given_on_several_inputs():
    plan = buckets.expand(encoder_inputs(), {"input_ids": (1, [8, 16]),
                                             "attention_mask": (1, [16, 8]), "labels": (1,)})
    assert plan.shapes(8) == {"input_ids": (1, 8), "attention_mask": (1, 8),
                              "token_type_ids": (1, 8), "labels": (1,)}


def test_no_set_is_no_buckets():
    assert buckets.expand(encoder_inputs(), {"input_ids": (1, 8)}) is None
    assert buckets.expand(encoder_inputs(), None) is None


def test_a_shape_must_be_a_tuple():
    with pytest.raises(ShapeError, match="must be a tuple of sizes"):
        buckets.split({"input_ids": 128})


def test_output_axes_follow_the_length():
    lengths = (8, 16)
    assert buckets.varying_axes("hidden", [(1, 8, 64), (1, 16, 64)], lengths) == [1]
    assert buckets.varying_axes("scores", [(1, 4, 8, 8), (1, 4, 16, 16)], lengths) == [2, 3]
    assert buckets.varying_axes("pooled", [(1, 64), (1, 64)], lengths) == []
    with pytest.raises(ShapeError, match="changes with the length other than along axes"):
        buckets.varying_axes("flat", [(1, 8 * 64), (1, 16 * 64)], lengths)
    with pytest.raises(ShapeError, match="changes with the length"):
        buckets.varying_axes("ranked", [(1, 8), (1, 16, 1)], lengths)
