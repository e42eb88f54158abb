"""The CNNs of tests/cnn_models.py (issue 23): each exports both ways and runs in onnxruntime
as it does in torch, pruned ones keep exactly the requested zeros through the export, and
sparsec compiles each and matches onnxruntime on the same file.

Needs the `[bench]` extra (torch, and onnxscript for the dynamo exporter), which `.ci/run`
installs; without it this module skips and says so.
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

pytest.importorskip("torch", reason="the CNN exports need torch: pip install -e '.[bench]'")

import sparsec  # noqa: E402
from tests import cnn_models  # noqa: E402
from tests.cnn_models import TINY_PRUNED, TINY_SPECS, Pruning  # noqa: E402
from tests.conftest import run_onnxruntime  # noqa: E402

HAS_ONNXSCRIPT = importlib.util.find_spec("onnxscript") is not None

SPECS = list(TINY_SPECS.values()) + TINY_PRUNED



def _cases(specs):
    return [pytest.param(spec, exporter, id=f"{spec.id}-{exporter}", marks=[pytest.mark.skipif(
        exporter == "dynamo" and not HAS_ONNXSCRIPT,
        reason="torch's dynamo exporter needs onnxscript")])
        for spec in specs for exporter in cnn_models.EXPORTERS]


@pytest.fixture(scope="session")
def export_cache(request, tmp_path_factory):
    """Exports kept between sessions in pytest's cache folder (keyed by everything they
    depend on), or per session where the cache plugin is off."""
    cache = getattr(request.config, "cache", None)
    return cache.mkdir("cnn-exports") if cache else tmp_path_factory.mktemp("cnn-exports")


@pytest.mark.parametrize("spec, exporter", _cases(SPECS))
def test_export_runs_in_onnxruntime_as_in_torch(spec, exporter, export_cache):
    result = cnn_models.check(spec, exporter, export_cache)
    assert result.error <= cnn_models.TOLERANCE, (
        f"onnxruntime differs from torch by {result.error:.2e} of the logits' range")
    assert result.ops.get("Conv", 0) > 0, result.ops


@pytest.mark.parametrize("spec, exporter", _cases(TINY_PRUNED))
def test_pruned_weights_stay_exactly_zero_through_the_export(spec, exporter, export_cache):
    """Both exporters fold BatchNorm into the conv weights (a scale per output channel),
    which keeps zeros zero: each pruned conv still has its density, the others none."""
    model = onnx.load(str(cnn_models.export(spec, exporter, export_cache)))
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    densities = sorted(float(np.mean(weights[node.input[1]] != 0))
                       for node in model.graph.node if node.op_type == "Conv")
    pruned_count = len(cnn_models.prunable_convs(cnn_models.build(spec), spec.pruning.scope))
    assert 0 < pruned_count < len(densities)
    # prune rounds to whole blocks: half a block of the smallest pruned conv (8 x 8 channels,
    # 16 blocks of 4x1) is 1/32
    assert all(abs(d - spec.pruning.density) <= 1 / 32 for d in densities[:pruned_count]), \
        densities
    assert all(d == 1.0 for d in densities[pruned_count:]), densities


@pytest.mark.parametrize("block", [(1, 1), (4, 1), (1, 4)])
def test_prune_zeroes_whole_blocks_to_the_density(block):
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(16, 32, 3), torch.nn.Conv2d(32, 8, 1))
    cnn_models.prune(model, Pruning(0.25, "all", block))
    rows, cols = block
    for conv in model:
        weight = conv.weight.detach()
        taps = weight.permute(2, 3, 1, 0).reshape(*weight.shape[2:], weight.shape[1] // rows,
                                                  rows, weight.shape[0] // cols, cols)
        nonzero_blocks = (taps != 0).any(dim=3).any(dim=-1)
        assert torch.equal(nonzero_blocks[:, :, :, None, :, None].expand_as(taps), taps != 0)
        assert float(nonzero_blocks.float().mean()) == pytest.approx(0.25, abs=0.5 / 64)
        assert not torch.signbit(weight[weight == 0]).any()


def test_cache_key_follows_the_spec_and_the_exporter():
    spec = TINY_SPECS["mobilenet-v2"]
    keys = {cnn_models.cache_key(s, e) for s in (spec, replace(spec, seed=1))
            for e in cnn_models.EXPORTERS}
    assert len(keys) == 4
    assert cnn_models.cache_key(spec, "dynamo") == cnn_models.cache_key(spec, "dynamo")


@pytest.mark.parametrize("target", ["generic", "native"])
@pytest.mark.parametrize("spec, exporter", _cases(SPECS))
def test_compiles_and_matches_onnxruntime(spec, exporter, target, export_cache, compiler):
    path = cnn_models.export(spec, exporter, export_cache)
    feeds = cnn_models.inputs(spec)
    result = compiler.compile(str(path), target)
    (expected,) = run_onnxruntime(onnx.load(str(path)), feeds)
    got = sparsec.load(result.library).run(feeds)["logits"]
    assert got.shape == expected.shape and got.dtype == expected.dtype
    error = np.max(np.abs(got.astype(np.float64) - expected)) / np.ptp(expected)
    assert error <= cnn_models.TOLERANCE, f"{target}: {error:.2e} of the logits' range"
