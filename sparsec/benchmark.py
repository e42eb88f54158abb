"""Timing a compiled model: warm-up, then latencies of repeated runs, from one or several
concurrent streams (one run context each, driven from its own Python thread: runs release the
GIL), optionally alternating with onnxruntime on the same inputs.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np


def latency_stats(seconds: list[float]) -> dict:
    """Milliseconds: mean, p50, p90, p99, min, max of per-run times in seconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"mean": float(ms.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99),
            "min": float(ms.min()), "max": float(ms.max())}


@dataclass
class Budget:
    """How long to time: `repeat` runs (per stream) if given, else `seconds` of wall time."""

    seconds: float
    repeat: int | None = None

    def round(self, index: int, rounds: int) -> Budget:
        """Round `index` of `rounds` alternating ones: an equal share of the time, or of the
        runs (the shares adding up to `repeat` exactly)."""
        return Budget(self.seconds / rounds, None if self.repeat is None else
                      self.repeat * (index + 1) // rounds - self.repeat * index // rounds)


@dataclass
class Timings:
    latencies: list[float] = field(default_factory=list)  # seconds per run

    def time(self, run, budget: Budget, started: float | None = None) -> Timings:
        """Call `run()` until the budget is spent (from `started`, default now)."""
        deadline = (time.perf_counter() if started is None else started) + budget.seconds
        count = 0
        while True:
            begin = time.perf_counter()
            run()
            end = time.perf_counter()
            self.latencies.append(end - begin)
            count += 1
            if (count >= budget.repeat) if budget.repeat is not None else end >= deadline:
                return self


def warm_up(run, seconds: float) -> None:
    """Run at least once and for about `seconds`: first-touch page faults, the thread pool's
    start and the caches' filling stay out of the timings."""
    Timings().time(run, Budget(seconds))


def run_streams(runs: list, budget: Budget, warmup_seconds: float,
                progress=None) -> tuple[list[Timings], float]:
    """Time each of `runs` (one callable per stream) on its own thread, all starting together
    after every stream has warmed up. Returns each stream's timings and the wall seconds from
    the start to the last stream's end.
    `progress(elapsed, runs_so_far)` is called about twice a second from this thread."""
    timings = [Timings() for _ in runs]
    errors: list[BaseException] = []
    began = [0.0]
    start = threading.Barrier(len(runs) + 1,
                              action=lambda: began.__setitem__(0, time.perf_counter()))

    def stream(index: int) -> None:
        try:
            warm_up(runs[index], warmup_seconds)
            start.wait()
            timings[index].time(runs[index], budget, began[0])
        except threading.BrokenBarrierError:
            pass  # another stream failed; its error is the one to report
        except BaseException as exc:  # reported by the caller, after every thread has ended
            errors.append(exc)
            start.abort()

    threads = [threading.Thread(target=stream, args=(i,), daemon=True)
               for i in range(len(runs))]
    for thread in threads:
        thread.start()
    try:
        start.wait()
    except threading.BrokenBarrierError:
        pass
    while alive := [thread for thread in threads if thread.is_alive()]:
        alive[0].join(0.5)
        if progress is not None and alive[0].is_alive() and not errors:
            progress(time.perf_counter() - began[0], sum(len(t.latencies) for t in timings))
    wall = time.perf_counter() - began[0]
    if errors:
        raise errors[0]
    return timings, wall


def alternate(runs: dict, budget: Budget, warmup_seconds: float, rounds: int = 10,
              progress=None) -> dict[str, Timings]:
    """Time several engines on one thread in alternating rounds (each gets `budget` in all,
    split into `rounds`), so that a drift in the machine's clock or load shows in all of them
    alike instead of favouring whichever ran first."""
    for run in runs.values():
        warm_up(run, warmup_seconds)
    rounds = max(1, min(rounds, budget.repeat or rounds))
    timings = {name: Timings() for name in runs}
    began = time.perf_counter()
    for index in range(rounds):
        for name, run in runs.items():
            timings[name].time(run, budget.round(index, rounds))
            if progress is not None:
                progress(time.perf_counter() - began,
                         sum(len(t.latencies) for t in timings.values()))
    return timings
