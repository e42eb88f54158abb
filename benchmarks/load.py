"""A library under load: 1 and 2 threads alone, 2 processes at once (2 threads and 1 thread
each), and 4 streams in one process, all through `sparsec benchmark`.

    python benchmarks/load.py LIBRARY.so [--time 6]

Each case reports the median latency (p50) of every process or stream and its ratio to the
1-process 1-thread median, measured first and again last in the same run (their mean: this
VM's speed drifts by tens of percent over minutes). Writes benchmarks/results/load.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_table

SPARSEC = [sys.executable, "-m", "sparsec", "benchmark"]


def start(library: str, seconds: float, *options: str) -> subprocess.Popen:
    return subprocess.Popen([*SPARSEC, library, "--time", str(seconds), "--warmup", "1",
                             "--json", *options], stdout=subprocess.PIPE, text=True)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("library")
    parser.add_argument("--time", type=float, default=6.0, help="seconds per case")
    args = parser.parse_args()
    cases = [("1 process, 1 thread", 1, ["--threads", "1"]),
             ("1 process, 2 threads", 1, ["--threads", "2"]),
             ("2 processes at once, 2 threads each", 2, ["--threads", "2"]),
             ("2 processes at once, 1 thread each", 2, ["--threads", "1"]),
             ("1 process, 4 streams (Modules on 4 Python threads), 1 thread each", 1,
              ["--streams", "4", "--threads", "1"]),
             ("1 process, 1 thread, again", 1, ["--threads", "1"])]
    measured = []
    for name, count, options in cases:
        measured.append((name, medians([start(args.library, args.time, *options)
                                        for _ in range(count)])))
        print(name, measured[-1][1], flush=True)
    alone = (measured[0][1][0] + measured[-1][1][0]) / 2
    rows = [[name, " / ".join(f"{ms:.2f}" for ms in found),
             " / ".join(f"{ms / alone:.2f}x" for ms in found)] for name, found in measured]
    path = write_table("load", f"Under load: {Path(args.library).name}",
                       ["case", "p50 ms (each process or stream)",
                        "x 1 process, 1 thread (mean of first and last)"],
                       rows, "`sparsec benchmark --json` per process, started together; "
                       f"{args.time:g} s a case after 1 s of warm-up. Command: "
                       "`python benchmarks/load.py LIBRARY.so`.")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
