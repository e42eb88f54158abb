"""Run independent compiler commands at once, as many as the CPUs this process may use."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, as taskset or a container's cpuset
    sets it), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def run_parallel(commands: list[list[str]], cwd: Path,
                 run: Callable[[list[str], Path], None]) -> None:
    """`run` each command in `cwd`, as many at once as there are usable CPUs (threads: each
    waits on its compiler process). The first that fails (in `commands`' order) is raised once
    those running have finished; those not started are dropped."""
    workers = min(len(commands), usable_cpus())
    if workers <= 1:
        for argv in commands:
            run(argv, cwd)
        return
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(run, argv, cwd) for argv in commands]
        try:
            for future in futures:
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
