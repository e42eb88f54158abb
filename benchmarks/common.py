"""Shared benchmark helpers: timing medians, onnxruntime sessions, and markdown tables."""

from __future__ import annotations

import os
import platform
import re
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def unset_openblas_overrides() -> None:
    """OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE may be set on these machines and slow numpy down;
    a numpy baseline must not carry that handicap. numpy runs on one thread, like the other
    single-thread columns. Affects this process only, and must run before numpy is imported."""
    for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        os.environ.pop(name, None)
    os.environ["OPENBLAS_NUM_THREADS"] = "1"


def median_seconds(fn, *, min_runs: int = 10, min_time: float = 0.5) -> float:
    fn()  # warm up caches and lazy initialisation
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def ort_session(model_bytes: bytes, threads: int = 1):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def host_description() -> str:
    """The CPU model, its x86 family and model numbers (a VM may hide the model's name: "AMD
    EPYC" is a Zen 3 at family 25 and a Zen 5 at 26), and the vector ISAs it offers."""
    cpu = platform.processor() or platform.machine()
    flags: set[str] = set()
    numbers: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "model name":
                cpu = value
            elif key in ("cpu family", "model") and key not in numbers:
                numbers[key] = value
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    if numbers.keys() == {"cpu family", "model"}:
        cpu += f", family {numbers['cpu family']} model {numbers['model']}"
    isas = [name for flag, name in (("avx2", "AVX2"), ("avx512f", "AVX-512"),
                                    ("avx512_vnni", "VNNI"), ("avx512_bf16", "BF16"),
                                    ("amx_tile", "AMX"), ("asimd", "NEON"), ("asimddp", "dotprod"))
            if flag in flags]
    return f"{cpu} ({', '.join(isas) or 'no SIMD flags read'}), {os.cpu_count()} logical CPUs"


def write_table(name: str, title: str, header: list[str], rows: list[list], notes: str,
                folder: Path = RESULTS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", "", f"Host: {host_description()}. {notes}", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    path = folder / f"{name}.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def one_layer(pattern: str, k: int = 256, n: int = 64, m: int = 64, density: float = 0.2):
    """A one-MatMul model whose k x n weight is pruned in `pattern` blocks (R x C), keeping
    about `density` of them (seeded)."""
    import numpy as np
    from onnx import helper

    from sparsec.compiler.patterns import Pattern

    rows, cols = Pattern(pattern).block
    rng = np.random.default_rng(0)
    keep = np.kron(rng.random((k // rows, n // cols)) < density, np.ones((rows, cols)))
    weight = (rng.standard_normal((k, n)) * keep).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "layer",
        [helper.make_tensor_value_info("x", 1, [m, k])],
        [helper.make_tensor_value_info("y", 1, [m, n])],
        [helper.make_tensor("w", 1, [k, n], weight.ravel())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def functions(disassembly: str, line: re.Pattern) -> dict[str, list[tuple[int, str, str]]]:
    """objdump -d output as {function: [(address, mnemonic, operands)]}; `line` matches one
    instruction line with those three groups (the encoding column differs by architecture)."""
    found, current = {}, None
    for text in disassembly.splitlines():
        header = re.match(r"^[0-9a-f]+ <(.+)>:$", text)
        if header:
            current = found.setdefault(header.group(1), [])
            continue
        match = line.match(text)
        if match and current is not None:
            current.append((int(match.group(1), 16), match.group(2), match.group(3)))
    return found
