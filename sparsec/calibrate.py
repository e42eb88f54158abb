"""`sparsec calibrate`: measure this host's kernel costs and save them as its host profile.

For each weight dtype the target has kernels for (fp32; int8 and bf16 where the target has
rows for them) and each pattern the cost model prices, one Dense layer is compiled with that
pattern forced and timed on 1 thread: a dense weight per element, a sparse one per nonzero
block (weights pruned in whole blocks of the pattern, so the block count is exact), both per
activation row, as the kernel table states its costs. `compile` then chooses kernels by these
numbers when it builds for this target on this CPU (codegen/profiles.py).
"""

from __future__ import annotations

import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from sparsec.codegen import costs, profiles, targets
from sparsec.compiler.patterns import Pattern
from sparsec.errors import PortableKernelWarning, SparsecError

QUANTIZE = {"float32": None, "int8": "dynamic", "bfloat16": "bf16"}
DENSITY = 0.1


def layer(weight: np.ndarray, rows: int):
    k, n = weight.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "calibrate",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, n])],
        [numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def pruned(rng, k: int, n: int, pattern: str) -> tuple[np.ndarray, int]:
    """A k x n weight whose nonzeros fill whole `pattern` blocks, and their count."""
    if pattern == "dense":
        return rng.standard_normal((k, n)).astype(np.float32), k * n
    r, c = Pattern(pattern).block
    keep = rng.random((k // r, n // c)) < DENSITY
    weight = rng.standard_normal((k, n)) * np.kron(keep, np.ones((r, c)))
    return weight.astype(np.float32), int(keep.sum())


def median_seconds(fn: Callable[[], object], min_time: float) -> float:
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < 5 or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(target_name: str = "native", *, quick: bool = False,
            progress: Callable[[str], None] | None = None) -> tuple[targets.Target,
                                                                    profiles.Measured]:
    from sparsec.api import compile_model
    from sparsec.module import load

    target = targets.resolve(target_name)
    if not targets.can_execute(target):
        raise SparsecError(f"target {target.name} does not run natively on this host, so its "
                           "kernels cannot be timed here; calibrate on a machine that runs it")
    rows, k, n = (64, 256, 256) if quick else (128, 768, 768)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, k)).astype(np.float32)
    measured: profiles.Measured = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in profiles.WEIGHT_DTYPES:
            model = costs.cost_model(target, dtype)
            # block patterns and dense; BITMASK is priced by streaming, not timed here
            for pattern in ["dense", *model.per_block]:
                weight, units = pruned(rng, k, n, pattern)
                if units == 0:
                    continue
                library = Path(tmp) / f"{dtype}-{pattern}.so"
                with warnings.catch_warnings():  # a portable row is timed like any other
                    warnings.simplefilter("ignore", PortableKernelWarning)
                    compile_model(layer(weight, rows), target.name, library,
                                  force_pattern=pattern, quantize=QUANTIZE[dtype],
                                  use_cache=False, host_profile=False)
                with load(library, threads=1) as module:
                    seconds = median_seconds(lambda m=module: m.run({"x": x}),
                                             0.2 if quick else 1.0)
                measured[(dtype, pattern)] = 1e9 * seconds / (units * rows)
                if progress:
                    progress(f"{dtype:>8} {pattern:>6}: {measured[(dtype, pattern)]:.4g} ns")
    return target, measured


def calibrate(target_name: str = "native", *, quick: bool = False,
              progress: Callable[[str], None] | None = None) -> tuple[Path, profiles.Measured]:
    """Measure and save this host's profile for the target; returns its path and the costs."""
    target, measured = measure(target_name, quick=quick, progress=progress)
    return profiles.save(target, measured), measured
