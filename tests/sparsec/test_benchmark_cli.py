"""`sparsec benchmark`, and the valid default inputs `run`, `benchmark` and `verify` share.

Timings are only checked for shape (counts, fields, order of percentiles), never for speed."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparsec import inputs
from sparsec.cli import main

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
MLP = SAMPLES / "mlp_sparse.onnx"
BERT = SAMPLES / "tiny_bert.onnx"
QUICK = ["--repeat", "6", "--warmup", "0"]
STAT_FIELDS = {"mean", "p50", "p90", "p99", "min", "max"}


@pytest.fixture
def workdir(tmp_path, monkeypatch, cache_dir):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_dir))
    return tmp_path


def embeddings_model() -> onnx.ModelProto:
    """BERT's embedding inputs in miniature: token ids into a 10-row table, token types into a
    2-row one, a mask, and ids that reach a 3-row table through Cast and Unsqueeze. The former
    generator's integers 0..7 fail two of these tables' bounds checks."""
    rng = np.random.default_rng(0)
    tables = {"words": 10, "types": 2, "extra": 3}
    nodes = [
        helper.make_node("Gather", ["words", "input_ids"], ["w"], name="word_gather"),
        helper.make_node("Gather", ["types", "token_type_ids"], ["t"], name="type_gather"),
        helper.make_node("Cast", ["extra_ids"], ["extra32"], to=TensorProto.INT32),
        helper.make_node("Unsqueeze", ["extra32", "zero"], ["extra4"]),
        helper.make_node("Gather", ["extra", "extra4"], ["e4"], name="extra_gather"),
        helper.make_node("Squeeze", ["e4", "zero"], ["e"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "last"], ["mask3"]),
        helper.make_node("Add", ["w", "t"], ["wt"]),
        helper.make_node("Add", ["wt", "e"], ["wte"]),
        helper.make_node("Mul", ["wte", "mask3"], ["y"]),
    ]
    ints = [helper.make_tensor_value_info(name, TensorProto.INT64, [1, 8])
            for name in ("input_ids", "token_type_ids", "extra_ids", "attention_mask")]
    graph = helper.make_graph(
        nodes, "embeddings", ints, [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                   [1, 8, 4])],
        [numpy_helper.from_array(rng.standard_normal((rows, 4)).astype(np.float32), name)
         for name, rows in tables.items()]
        + [numpy_helper.from_array(np.array([0], np.int64), "zero"),
           numpy_helper.from_array(np.array([-1], np.int64), "last")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def benchmark_json(capsys, *argv) -> dict:
    assert main(["benchmark", *map(str, argv), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def check_stats(record: dict, runs: int) -> None:
    assert record["runs"] == runs
    stats = record["latency_ms"]
    assert set(stats) == STAT_FIELDS
    assert 0 < stats["min"] <= stats["p50"] <= stats["p90"] <= stats["p99"] <= stats["max"]
    assert record["items_per_second"] > 0


def test_json_has_every_field(workdir, capsys):
    record = benchmark_json(capsys, MLP, "--target", "generic", *QUICK)
    assert record["target"] == "generic" and record["batch"] == 4
    assert record["streams"] == 1 and record["threads"] >= 1 and record["seconds"] > 0
    check_stats(record, 6)
    assert len(record["per_stream"]) == 1
    check_stats(record["per_stream"][0], 6)
    assert record["inputs"] == ["input 'x': random float32[4x64] (seed 0)"]


def test_text_report_parses(workdir, capsys):
    assert main(["benchmark", str(MLP), "--target", "generic", *QUICK]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{MLP}: target generic, batch 4, 1 stream x ")
    fields = lines[2].split(", ")
    assert fields[0] == "sparsec: 6 runs" and fields[1].endswith(" items/s")
    float(fields[1].split()[0])
    assert [f.split()[0] for f in fields[2:]] == ["latency", "p50", "p90", "p99"]
    assert all(float(f.split()[-1]) > 0 for f in fields[2:])


def test_compare_with_onnxruntime_agrees(workdir, capsys):
    pytest.importorskip("onnxruntime")
    record = benchmark_json(capsys, BERT, "--target", "generic", "--compare", "onnxruntime",
                            *QUICK)
    compared = record["compare"]
    assert compared["engine"] == "onnxruntime" and compared["latency_ratio"] > 0
    check_stats(record, 6)
    check_stats(compared, 6)
    (name, diff), = compared["outputs"].items()
    assert name == "last_hidden_state"
    # float32 sums in another order: verify's default tolerances (rtol 1e-4, atol 1e-5)
    assert diff["max_abs_diff"] <= 1e-5 + 1e-4 * diff["max_abs"]
    assert diff["max_abs"] > 0.1, "the comparison saw real outputs"
    assert "note" not in compared


def test_compare_notes_reduced_precision(workdir, capsys):
    pytest.importorskip("onnxruntime")
    record = benchmark_json(capsys, MLP, "--target", "generic", "--dtype", "int8",
                            "--no-mixed-precision", "--compare", "onnxruntime", *QUICK)
    assert "matrix products are int8" in record["compare"]["note"]


def test_compare_without_onnxruntime_says_so(workdir, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    assert main(["benchmark", str(MLP), "--target", "generic", "--compare", "onnxruntime",
                 *QUICK]) == 1
    assert "needs onnxruntime, which is not installed" in capsys.readouterr().err


def test_two_streams_on_a_built_library(workdir, capsys):
    assert main(["compile", str(BERT), "--target", "generic", "-o", "bert.so"]) == 0
    capsys.readouterr()
    record = benchmark_json(capsys, "bert.so", "--streams", "2", "--threads", "1", *QUICK)
    assert record["streams"] == 2 and record["threads"] == 1
    check_stats(record, 12)
    assert [s["runs"] for s in record["per_stream"]] == [6, 6]


@pytest.mark.parametrize("argv, message", [
    (["bert.so", "--target", "generic"], "--target: build options, for an .onnx model"),
    (["bert.so", "--compare", "onnxruntime"], "--compare onnxruntime needs the .onnx model"),
    ([str(MLP), "--compare", "onnxruntime", "--streams", "2"], "drop --streams"),
    ([str(MLP), "--streams", "0"], "--streams must be at least 1"),
    ([str(MLP), "--time", "-1"], "--time must be a number of seconds"),
    (["model.txt"], "takes a .onnx model or a .so library"),
])
def test_contradictory_options_are_refused(workdir, capsys, argv, message):
    assert main(["benchmark", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sparsec: error: ") and message in err


def test_run_repeat_prints_its_timing(workdir, capsys):
    main(["compile", str(MLP), "--target", "generic", "-o", "m.so"])
    assert main(["run", "m.so", "--repeat", "3", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "3 runs on 1 thread(s): median " in out and " ms, mean " in out


def info_inputs(capsys, library: str) -> dict:
    capsys.readouterr()
    assert main(["info", library, "--json"]) == 0
    return {r["name"]: r for r in json.loads(capsys.readouterr().out)["inputs"]}


def test_index_ranges_are_recorded_and_defaults_are_valid(workdir, capsys):
    onnx.save(embeddings_model(), "emb.onnx")
    assert main(["compile", "emb.onnx", "--target", "generic", "-o", "emb.so"]) == 0
    records = info_inputs(capsys, "emb.so")
    assert records["input_ids"]["index_range"] == [0, 10]
    assert records["token_type_ids"]["index_range"] == [0, 2]
    assert records["extra_ids"]["index_range"] == [0, 3], "traced through Cast and Unsqueeze"
    assert "index_range" not in records["attention_mask"], "a Cast to float ends the trace"
    assert main(["run", "emb.so", "--out", "y.npz"]) == 0
    out = capsys.readouterr().out
    assert "input 'input_ids': random int64[1x8] (seed 0) in [0, 10)" in out
    assert "input 'token_type_ids': zeros int64[1x8]" in out
    assert "input 'attention_mask': ones int64[1x8]" in out
    assert main(["verify", "emb.onnx", "--target", "generic"]) == 0


def test_generated_ids_cover_the_table(workdir):
    record = {"name": "ids", "shape": [4096], "dtype": "int32", "index_range": [0, 10]}
    ids, how = inputs.generate(record, np.random.default_rng(0))
    assert ids.dtype == np.int32 and how == "random in [0, 10)"
    assert ids.min() == 0 and ids.max() == 9


def test_run_on_tiny_bert_without_inputs(workdir, capsys):
    """The sample's token ids index its word embeddings: the range is that table's rows; the
    mask is ones."""
    assert main(["compile", str(BERT), "--target", "generic", "-o", "bert.so"]) == 0
    model = onnx.load(BERT)
    gather = next(n for n in model.graph.node
                  if n.op_type == "Gather" and n.input[1] == "input_ids")
    table = next(t for t in model.graph.initializer if t.name == gather.input[0])
    assert info_inputs(capsys, "bert.so")["input_ids"]["index_range"] == [0, table.dims[0]]
    # the former generator's mask values 0..7 made Hugging Face's additive mask overflow to
    # inf, and every output NaN
    assert main(["run", "bert.so", "--out", "out.npz"]) == 0
    hidden = np.load("out.npz")["last_hidden_state"]
    assert hidden.shape == (1, 128, 64) and np.isfinite(hidden).all()


def test_a_failing_stream_is_an_error_not_a_hang(workdir, capsys):
    np.save("x.npy", np.zeros((3, 64), np.float32))  # the library takes 4x64
    assert main(["benchmark", str(MLP), "--target", "generic", "--streams", "2",
                 "--input", "x=x.npy", *QUICK]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sparsec: error: input 'x' has shape (3, 64)")


def test_progress_goes_to_a_terminal_only_after_a_while(monkeypatch, capsys):
    from sparsec import cli_benchmark

    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    progress = cli_benchmark._Progress()
    progress(cli_benchmark.PROGRESS_AFTER_SECONDS / 2, 5)
    progress.clear()
    assert capsys.readouterr().err == "", "silent for short runs"
    progress(cli_benchmark.PROGRESS_AFTER_SECONDS + 1, 50)
    progress.clear()
    err = capsys.readouterr().err
    shown = f"{cli_benchmark.PROGRESS_AFTER_SECONDS + 1:.1f} s, 50 runs"
    assert shown in err and err.endswith("\033[K")
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    quiet = cli_benchmark._Progress()
    quiet(cli_benchmark.PROGRESS_AFTER_SECONDS + 1, 50)
    assert capsys.readouterr().err == ""
