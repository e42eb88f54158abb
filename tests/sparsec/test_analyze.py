"""`sparsec analyze`: its numbers against the same numbers computed here from the weights by
plain loops, the reorder pictures against the model's own weights, the page's escaping of
hostile names, the JSON, --measure, and the errors a user can cause.

The report in a real browser is tests/sparsec/test_analyze_browser.py's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from sparsec.analyze import analyze, density_grid, fill_histogram
from sparsec.analyze_html import render
from sparsec.cli import main
from sparsec.codegen import costs, targets
from tests.graphs import model

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
ROWS = 5  # activation rows of the models below
PATTERNS = [(1, 1), (4, 1), (1, 4), (1, 16), (16, 1), (4, 4), (2, 1)]


@pytest.fixture
def workdir(tmp_path, monkeypatch, cache_dir):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_dir))
    return tmp_path


def histogram_by_loops(weight: np.ndarray, rows: int, cols: int) -> list[int]:
    counts = [0] * (rows * cols)
    for i in range(0, weight.shape[0], rows):
        for j in range(0, weight.shape[1], cols):
            nonzeros = int(np.count_nonzero(weight[i:i + rows, j:j + cols]))
            if nonzeros:
                counts[nonzeros - 1] += 1
    return counts


def sparse(rng, k: int, n: int, density: float) -> np.ndarray:
    return (rng.standard_normal((k, n)) * (rng.random((k, n)) < density)).astype(np.float32)


@pytest.mark.parametrize("rows,cols", PATTERNS)
@pytest.mark.parametrize("shape", [(33, 50), (64, 64), (7, 129)])
def test_fill_histogram_counts_blocks_by_their_nonzeros(rows, cols, shape):
    weight = sparse(np.random.default_rng(rows * 100 + cols), *shape, 0.3)
    histogram = fill_histogram(weight, rows, cols)
    assert histogram == histogram_by_loops(weight, rows, cols)
    assert sum((i + 1) * count for i, count in enumerate(histogram)) == np.count_nonzero(weight)


def test_density_grid_averages_cells_and_their_tails():
    weight = sparse(np.random.default_rng(1), 200, 300, 0.2)
    grid = density_grid(weight, cells=96)  # cells of 3 x 4 weights; the last row of cells 2
    assert grid.shape == (67, 75)
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            assert grid[i, j] == pytest.approx(np.mean(weight[3 * i:3 * i + 3,
                                                              4 * j:4 * j + 4] != 0))
    small = sparse(np.random.default_rng(2), 12, 40, 0.5)
    np.testing.assert_array_equal(density_grid(small), small != 0)  # weight by weight


def mlp_model(weights: list[np.ndarray], rng, names=None) -> onnx.ModelProto:
    nodes, constants, current = [], [], "x"
    for index, weight in enumerate(weights):
        name = names[index] if names else f"fc{index}"
        nodes += [helper.make_node("MatMul", [current, f"w{index}"], [f"m{index}"], name=name),
                  helper.make_node("Add", [f"m{index}", f"b{index}"], [f"a{index}"],
                                   name=f"{name}/bias")]
        current = f"a{index}"
        if index + 1 < len(weights):
            nodes.append(helper.make_node("Relu", [current], [f"r{index}"]))
            current = f"r{index}"
        constants += [(f"w{index}", weight),
                      (f"b{index}", rng.standard_normal(weight.shape[1]).astype(np.float32))]
    nodes.append(helper.make_node("Identity", [current], ["y"]))
    return model(nodes, [("x", [ROWS, weights[0].shape[0]])],
                 [("y", [ROWS, weights[-1].shape[1]])], constants)


def test_summary_and_layers_match_the_weights(workdir, cache_dir):
    """Every count from the model's own weights by numpy and loops here: parameters,
    nonzeros, FLOPs, dense bytes, each candidate's blocks and fill histogram; a dense layer's
    stored bytes are its float32 weight and bias; predictions add up."""
    rng = np.random.default_rng(0)
    weights = [sparse(rng, 40, 64, 0.15), rng.standard_normal((64, 48)).astype(np.float32),
               sparse(rng, 48, 20, 0.05)]
    onnx_model = mlp_model(weights, rng)
    analysis = analyze(onnx_model, "generic", workdir=workdir, cache_dir=cache_dir,
                       reorder=False)
    data = analysis.data
    summary, layers = data["summary"], data["matrix_layers"]
    assert [layer["node"] for layer in layers] == ["fc0", "fc1", "fc2"]
    assert summary["parameters"] == sum(w.size for w in weights)
    assert summary["nonzeros"] == sum(int(np.count_nonzero(w)) for w in weights)
    assert summary["dense_flops"] == sum(2 * ROWS * w.size for w in weights)
    assert summary["sparse_flops"] == sum(2 * ROWS * int(np.count_nonzero(w)) for w in weights)
    assert summary["dense_bytes"] == sum(4 * w.size for w in weights)
    assert summary["other_parameters"] == sum(w.shape[1] for w in weights)  # the biases
    cost = costs.cost_model(targets.resolve("generic"), "float32")
    for layer, weight in zip(layers, weights):
        k, n = weight.shape
        assert layer["shape"] == [k, n] and layer["rows"] == ROWS
        assert layer["nonzeros"] == np.count_nonzero(weight)
        assert layer["predicted_dense_ms"] == pytest.approx(
            k * n * cost.dense_per_element * ROWS / 1e6)
        assert layer["predicted_ms"] == layer["candidates"].get(
            layer["pattern"], {"predicted_ms": layer["predicted_dense_ms"]})["predicted_ms"]
        for pattern, candidate in layer["candidates"].items():
            if "fill_histogram" not in candidate:
                continue
            rows, cols = map(int, pattern.split("x"))
            expected = histogram_by_loops(weight, rows, cols)
            assert candidate["fill_histogram"] == expected, pattern
            assert candidate["nonzero_blocks"] == sum(expected)
            assert candidate["fill"] == pytest.approx(
                np.count_nonzero(weight) / (sum(expected) * rows * cols))
        np.testing.assert_array_equal(analysis.pictures[layers.index(layer)]["after"],
                                      weight != 0)
    full = layers[1]  # every weight nonzero: whole blocks, or dense
    assert full["executed_flops"] == full["dense_flops"]
    assert all(layer["stored_bytes"] < layer["dense_bytes"] for layer in (layers[0], layers[2]))
    assert summary["predicted_speedup"] == pytest.approx(
        sum(layer["predicted_dense_ms"] for layer in layers)
        / sum(layer["predicted_ms"] for layer in layers))
    if summary["library_weight_bytes"] is not None:  # x86-64: the blob, 64-byte aligned pieces
        assert summary["stored_bytes"] <= summary["library_weight_bytes"] \
            < summary["stored_bytes"] + 64 * 6
    assert json.loads(json.dumps(data)) == data  # JSON-ready as it is
    forced = analyze(onnx_model, "generic", workdir=workdir, cache_dir=cache_dir,
                     force_pattern="dense").data["matrix_layers"]
    assert [layer["stored_bytes"] for layer in forced] == [4 * w.size + 4 * w.shape[1]
                                                           for w in weights]


def lines(grid: np.ndarray, axis: int) -> list[bytes]:
    """The grid's rows (axis 0) or columns (1), in an order of their own: equal for two grids
    that differ by a permutation of them."""
    return sorted(map(bytes, np.moveaxis(grid, axis, 0).astype(np.uint8)))


def test_reorder_pictures_show_the_models_own_channel_order(workdir, cache_dir):
    """A chain whose consumer's 4x1 blocks were shuffled: reorder_blocks permutes it, and the
    "before" pictures are the model's weights as given, the producer's by columns and the
    consumer's by rows (the permutation's two sides)."""
    rng = np.random.default_rng(0)
    k, n, m = 32, 64, 48
    up = sparse(rng, k, n, 0.5)
    keep = np.repeat(rng.random((n // 4, m)) < 0.2, 4, axis=0)[rng.permutation(n)]
    down = (rng.standard_normal((n, m)) * keep).astype(np.float32)
    analysis = analyze(mlp_model([up, down], rng, names=["up", "down"]), "generic",
                       workdir=workdir, cache_dir=cache_dir)
    layers = analysis.data["matrix_layers"]
    assert all("permuted" in layer["reorder"]["result"] for layer in layers)
    for index, original in enumerate((up, down)):
        before, after = analysis.pictures[index]["before"], analysis.pictures[index]["after"]
        np.testing.assert_array_equal(before, original != 0)
        assert not np.array_equal(after, before)
        axis = 1 if index == 0 else 0  # columns of the producer, rows of the consumer
        assert lines(after, axis) == lines(before, axis)


def test_hostile_names_are_escaped_in_the_page(workdir, cache_dir):
    rng = np.random.default_rng(3)
    names = ["<script>alert(1)</script>", "$\\frac{$ & \"quoted' </td>"]
    onnx_model = mlp_model([sparse(rng, 16, 32, 0.2), sparse(rng, 32, 8, 0.2)], rng, names)
    html = render(analyze(onnx_model, "generic", workdir=workdir, cache_dir=cache_dir))
    assert "<script" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "$\\frac{$ &amp; &#34;quoted&#39; &lt;/td&gt;" in html
    assert "Content-Security-Policy" in html and "default-src 'none'" in html


def test_cli_json_is_the_data_without_pictures(workdir, capsys):
    weights = {t.name: numpy_helper.to_array(t)
               for t in onnx.load(SAMPLES / "mlp_sparse.onnx").graph.initializer}
    matrices = [w for w in weights.values() if w.ndim == 2]
    assert main(["analyze", str(SAMPLES / "mlp_sparse.onnx"), "--target", "generic",
                 "--json"]) == 0
    out = capsys.readouterr().out
    data = json.loads(out)
    assert "data:image" not in out and not list(workdir.glob("*.html"))
    assert data["summary"]["nonzeros"] == sum(int(np.count_nonzero(w)) for w in matrices)
    assert data["summary"]["parameters"] == sum(w.size for w in matrices)
    assert data["measurement"] is None and data["target"] == "generic"


def test_cli_writes_the_report(workdir, capsys):
    assert main(["analyze", str(SAMPLES / "mlp_sparse.onnx"), "--target", "generic"]) == 0
    assert "wrote mlp_sparse-analysis.html" in capsys.readouterr().out
    html = (workdir / "mlp_sparse-analysis.html").read_text()
    assert html.count("<img") >= 4 and "fc1/MatMul" in html and "Why: " in html


def test_cli_measure_times_both_builds(workdir, capsys):
    assert main(["analyze", str(SAMPLES / "mlp_sparse.onnx"), "--target", "generic",
                 "--measure", "--time", "0.2", "--json", "-o", "report.html"]) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert "wrote report.html" in captured.err
    timing = data["measurement"]
    assert timing["runs"]["sparse"] > 0 and timing["runs"]["dense"] > 0
    assert timing["threads"] == 1 and len(timing["layers"]) == 3
    assert all(layer["measured_ms"] > 0 and layer["measured_dense_ms"] > 0
               for layer in data["matrix_layers"])
    summary = data["summary"]
    assert summary["measured_speedup"] == pytest.approx(
        timing["dense"]["p50"] / timing["sparse"]["p50"])
    html = (workdir / "report.html").read_text()
    assert "How it was measured" in html and "Predicted against measured" in html


@pytest.mark.parametrize("argv,message", [
    (["missing.onnx"], "missing.onnx"),
    (["garbage.onnx"], "garbage.onnx"),
    ([str(SAMPLES / "mlp_sparse.onnx"), "--emit", "static"], "drop --emit static"),
    ([str(SAMPLES / "mlp_sparse.onnx"), "--threads", "2"], "are for --measure"),
    ([str(SAMPLES / "mlp_sparse.onnx"), "--measure", "--time", "0"], "--time must be"),
    ([str(SAMPLES / "mlp_sparse.onnx"), "--target", "nosuch"], "unknown target"),
])
def test_cli_errors_are_messages(argv, message, workdir, capsys):
    (workdir / "garbage.onnx").write_bytes(b"\x00not a model")
    assert main(["analyze", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sparsec: error:") and message in err and "Traceback" not in err


def test_measure_refuses_a_target_this_host_does_not_run(workdir, capsys):
    foreign = next((t.name for t in targets.TARGETS.values()
                    if targets.execution_mode(t) != "native" and not targets.runs_emulated(t)),
                   None)
    if foreign is None:
        pytest.skip("this host runs every target")
    assert main(["analyze", str(SAMPLES / "mlp_sparse.onnx"), "--target", foreign,
                 "--measure"]) == 1
    assert "does not run natively" in capsys.readouterr().err


def test_import_sparsec_stays_without_matplotlib():
    script = ("import sys, sparsec, sparsec.cli, sparsec.analyze; "
              "print('matplotlib' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "False"
