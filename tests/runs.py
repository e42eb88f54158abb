"""Running compiled test libraries on their target: natively at once, or in batches under qemu.

A test that checks many compiled cases asks a `Runs` for its target and submits each case with
the check its outputs must pass. Where the host runs the target, the library is loaded through
cffi and checked at once (so hypothesis shrinks a failure as usual). For another architecture
the cases queue, and `flush()` runs them all in one driver process under qemu-user (one
emulator start for the lot), then checks each and fails with every failing case named. A
target built with its emulation header (x86-amx without AMX: mode "emulated") runs here
in-process, like a native one. On a compile-only target, nothing runs; `mode` says which,
for the test to report.

With `driver_flags` (sanitizers: tests/runtime_c/test_sanitizers.py), cases queue on the host's
targets too and run in one driver built with those flags: a sanitized library cannot be loaded into
this unsanitized Python.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import sparsec
from sparsec import emulation
from sparsec.codegen import targets
from sparsec.errors import SparsecError

Check = Callable[[dict], None]
MAX_REPORTED = 8  # failing cases shown in full; the rest are counted


@dataclass
class Runs:
    target: targets.Target
    cache_dir: Path
    cpu: str | None = None  # the CPU model qemu emulates (cortex-a53: no dot product)
    threads: int = 1
    driver_flags: tuple[str, ...] = ()  # compiler flags the driver needs too (sanitizers)
    _queued: list[tuple[str, emulation.Job, Check]] = field(default_factory=list)

    @property
    def mode(self) -> str:
        return targets.execution_mode(self.target)

    def submit(self, result: sparsec.CompileResult, feeds: dict, check: Check,
               label: str) -> None:
        in_process = self.mode == "native" or targets.runs_emulated(self.target)
        if in_process and not self.driver_flags:  # a CPU model: qemu only
            check(sparsec.load(result.library, threads=self.threads).run(feeds))
        elif self.mode in ("native", "emulated"):
            job = emulation.Job(result.library, result.info, feeds, self.threads)
            self._queued.append((label, job, check))

    def flush(self) -> int:
        """Run and check every queued case; returns how many ran."""
        queued, self._queued = self._queued, []
        if not queued:
            return 0
        results = emulation.run_batch([job for _, job, _ in queued], self.target,
                                      self.cache_dir, cpu=self.cpu,
                                      driver_flags=self.driver_flags)
        failures = []
        for (label, _, check), outputs in zip(queued, results):
            try:
                if isinstance(outputs, SparsecError):
                    raise AssertionError(str(outputs))
                check(outputs)
            except AssertionError as exc:
                failures.append(f"{label}: {exc}")
        if failures:
            shown = "\n\n".join(failures[:MAX_REPORTED])
            more = len(failures) - MAX_REPORTED
            how = ", ".join([self.mode] + ([f"cpu {self.cpu}"] if self.cpu else [])
                            + ([f"driver {' '.join(self.driver_flags)}"]
                               if self.driver_flags else []))
            raise AssertionError(f"{len(failures)} of {len(queued)} cases failed on "
                                 f"{self.target.name} ({how}):\n\n{shown}"
                                 + (f"\n\n... and {more} more" if more > 0 else ""))
        return len(queued)
