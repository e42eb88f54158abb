"""Libraries under load: 1 and 2 threads alone, 2 processes at once (2 threads and 1 thread
each), and 4 streams in one process, all through `sparsec benchmark`.

    python benchmarks/load.py LIBRARY.so [LIBRARY.so ...] [--time 6]

Each case reports the median latency (p50) of every process or stream and its ratio to the
1-process 1-thread median, measured first and again last in the same run (their mean: this
VM's speed drifts by tens of percent over minutes). Before and after the cases, a 1-thread
process pinned to each CPU in turn measures that CPU's speed: a 2-thread run is only as fast
as its slower core allows, and on a VM one vCPU can run far slower than the other for
minutes (its host core shared with other guests). Last, 1 and 2 threads in alternating
batches in one process, the steadiest measure of what the second thread gives. Writes
benchmarks/results/load.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_table

SPARSEC = [sys.executable, "-m", "sparsec", "benchmark"]


def start(library: str, seconds: float, *options: str, cpu: int | None = None
          ) -> subprocess.Popen:
    pin = None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu}))
    return subprocess.Popen([*SPARSEC, library, "--time", str(seconds), "--warmup", "1",
                             "--json", *options], stdout=subprocess.PIPE, text=True,
                            preexec_fn=pin)


def medians(processes: list[subprocess.Popen]) -> list[float]:
    found = []
    for process in processes:
        out, _ = process.communicate()
        if process.returncode:
            raise SystemExit(f"sparsec benchmark failed ({process.returncode})")
        record = json.loads(out)
        streams = record.get("per_stream") or [record]
        found += [stream["latency_ms"]["p50"] for stream in streams]
    return found


def cpu_speeds(library: str, seconds: float) -> list[float]:
    """p50 of a 1-thread run pinned to each CPU this process may use, one CPU at a time."""
    return [medians([start(library, seconds, "--threads", "1", cpu=cpu)])[0]
            for cpu in sorted(os.sched_getaffinity(0))]


def alternating_speedup(library: str, rounds: int = 12, runs: int = 10) -> tuple[float, float]:
    """1 thread against 2 threads in this process: a Module each, batches of back-to-back runs
    in alternation, so that a change in the host's speed hits both. The median batch times and
    their ratio."""
    import numpy as np

    import sparsec
    from sparsec.inputs import model_inputs

    modules = [sparsec.load(library, threads=threads) for threads in (1, 2)]
    feeds = model_inputs(modules[0].info["inputs"], [], 0)
    batches: list[list[float]] = [[], []]
    for _ in range(rounds):
        for module, kept in zip(modules, batches):
            module.run(feeds)  # the workers awake, as in a serving loop
            start = time.perf_counter()
            for _ in range(runs):
                module.run(feeds)
            kept.append(1e3 * (time.perf_counter() - start) / runs)
    one, two = (float(np.median(kept)) for kept in batches)
    return one, two


def measure(library: str, seconds: float) -> tuple[list[list], list[float], list[float]]:
    cases = [("1 process, 1 thread", 1, ["--threads", "1"]),
             ("1 process, 2 threads", 1, ["--threads", "2"]),
             ("2 processes at once, 2 threads each", 2, ["--threads", "2"]),
             ("2 processes at once, 1 thread each", 2, ["--threads", "1"]),
             ("1 process, 4 streams (Modules on 4 Python threads), 1 thread each", 1,
              ["--streams", "4", "--threads", "1"]),
             ("1 process, 1 thread, again", 1, ["--threads", "1"])]
    before = cpu_speeds(library, seconds / 2)
    measured = []
    for name, count, options in cases:
        measured.append((name, medians([start(library, seconds, *options)
                                        for _ in range(count)])))
        print(Path(library).name, name, measured[-1][1], flush=True)
    one, two = alternating_speedup(library)
    after = cpu_speeds(library, seconds / 2)
    alone = (measured[0][1][0] + measured[-1][1][0]) / 2
    rows = [[Path(library).name, name, " / ".join(f"{ms:.2f}" for ms in found),
             " / ".join(f"{ms / alone:.2f}x" for ms in found)] for name, found in measured]
    rows.append([Path(library).name, "1 process, 2 threads against 1, in alternation",
                 f"{two:.2f} (1 thread {one:.2f})", f"{two / one:.2f}x ({one / two:.2f}x faster)"])
    return rows, before, after


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("libraries", nargs="+")
    parser.add_argument("--time", type=float, default=6.0, help="seconds per case")
    args = parser.parse_args()
    rows, probes = [], []
    for library in args.libraries:
        found, before, after = measure(library, args.time)
        rows += found
        probes.append(f"{Path(library).name}: "
                      + ", ".join(f"CPU {cpu} {b:.2f} then {a:.2f} ms" for cpu, b, a
                                  in zip(sorted(os.sched_getaffinity(0)), before, after)))
    path = write_table("load", "Under load: " + ", ".join(Path(p).name for p in args.libraries),
                       ["library", "case", "p50 ms (each process or stream)",
                        "x 1 process, 1 thread (mean of first and last)"],
                       rows, "`sparsec benchmark --json` per process, started together; "
                       f"{args.time:g} s a case after 1 s of warm-up. Each CPU's speed, a "
                       "1-thread run pinned to it before and after the cases (p50): "
                       + "; ".join(probes) + ". Command: "
                       "`python benchmarks/load.py LIBRARY.so [LIBRARY.so ...]`.")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
