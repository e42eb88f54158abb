"""Run independent compiler commands at once, as many as the CPUs this process may use."""

from __future__ import annotations

import os
import threading
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
                 run: Callable[[list[str], Path], None],
                 finished: Callable[[int, int], None] | None = None) -> None:
    """`run` each command in `cwd`, as many at once as there are usable CPUs (threads: each
    waits on its compiler process). The first that fails (in `commands`' order) is raised once
    those running have finished; those not started are dropped. `finished(done, total)` hears
    of each command that succeeds."""
    lock = threading.Lock()
    done = 0

    def counted(argv: list[str], where: Path) -> None:
        nonlocal done
        run(argv, where)
        if finished is not None:
            with lock:
                done += 1
                finished(done, len(commands))

    workers = min(len(commands), usable_cpus())
    if workers <= 1:
        for argv in commands:
            counted(argv, cwd)
        return
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(counted, argv, cwd) for argv in commands]
        try:
            for future in futures:
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
