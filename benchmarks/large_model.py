"""Compile a model whose weights are over 2 GiB (external data), run it, compare with numpy, and
report the compile's peak memory.

    python benchmarks/large_model.py [--layers 9] [--width 8192] [--dir /tmp/sparsec-large]

The model: `layers` dense `width` x `width` float32 MatMuls, each followed by Relu, their
weights in one external data file (9 x 8192 x 8192: 2.25 GiB, past protobuf's 2 GiB limit and
past the reach of the 32-bit references of x86-64's small code model). Dense weights are packed
into panels whole, so the library's weight blob is as large as the weights. Not a test: it
writes about 7 GB (model, blob, object, library) and takes minutes;
tests/codegen/test_weight_memory.py checks the same mechanism at 192 MiB.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[1]


def write_model(folder: Path, layers: int, width: int) -> tuple[Path, int]:
    """The model and its data file, one weight generated and written at a time; the weights'
    seed is the layer number, so `reference` can make them again."""
    folder.mkdir(parents=True, exist_ok=True)
    initializers, offset = [], 0
    with open(folder / "large.data", "wb") as data:
        for layer in range(layers):
            w = _weight(layer, width)
            tensor = TensorProto(name=f"w{layer}", data_type=TensorProto.FLOAT, dims=w.shape)
            for key, value in (("location", "large.data"), ("offset", str(offset)),
                               ("length", str(w.nbytes))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            tensor.data_location = TensorProto.EXTERNAL
            data.write(w.tobytes())
            offset += w.nbytes
            initializers.append(tensor)
    nodes, previous = [], "x"
    for layer in range(layers):
        out = "y" if layer == layers - 1 else f"h{layer}"
        nodes += [helper.make_node("MatMul", [previous, f"w{layer}"], [f"m{layer}"]),
                  helper.make_node("Relu", [f"m{layer}"], [out])]
        previous = out
    graph = helper.make_graph(
        nodes, "large", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, width])], initializers)
    path = folder / "large.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path, offset


def _weight(layer: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(layer)
    return (rng.standard_normal((width, width), np.float32) * (2 / width) ** 0.5).astype(
        np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=9)
    parser.add_argument("--width", type=int, default=8192)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/sparsec-large"))
    args = parser.parse_args()
    path, weight_bytes = write_model(args.dir, args.layers, args.width)
    print(f"{path}: {weight_bytes / 2**30:.2f} GiB of weights in external data")
    library = args.dir / "large.so"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sparsec", "compile", str(path), "--no-cache",
                    "--max-memory", "8G", "-o", str(library)], check=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    # Children's peak: the compile's Python process and the C compiler's, the larger.
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    print(f"compiled in {seconds:.0f} s, peak RSS {peak:.2f} GiB "
          f"({peak * 2**30 / weight_bytes:.2f}x the weights); library "
          f"{library.stat().st_size / 2**30:.2f} GiB")
    import sparsec

    x = np.random.default_rng(100).standard_normal((2, args.width)).astype(np.float32)
    output = sparsec.load(library).run({"x": x})["y"]
    expected = x.astype(np.float64)
    for layer in range(args.layers):
        expected = np.maximum(expected @ _weight(layer, args.width).astype(np.float64), 0)
    error = float(np.abs(output - expected).max() / np.abs(expected).max())
    print(f"largest difference from numpy (float64): {error:.1e} of the largest output")
    if error > 1e-3:
        raise SystemExit("the library does not compute what numpy does")


if __name__ == "__main__":
    main()
