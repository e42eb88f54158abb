"""What a compile is doing, for the person waiting on it: each phase (import, every pass, emit,
the C build) as it runs, with the time it took, and the C build's translation units as they
finish. `compile_model(progress=...)` reports to one of these; the library is the same with
any of them.

- `Progress`: says nothing (the API's default, `sparsec compile -q`, and stderr that is not a
  terminal).
- `Lines`: a line per phase as it ends, with its time (`sparsec compile -v`; logs and CI).
- `Live`: on a terminal, one status line with a spinner, the phase and its elapsed time, and a
  bar for the C build, drawn by rich (a well-kept terminal library: it redraws in place and
  restores the terminal on errors and Ctrl-C, which hand-written escape codes would not).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Reports nothing; the interface the compiler calls."""

    def phase(self, name: str) -> None:
        """`name` starts (the previous phase, if any, has ended)."""

    def units(self, done: int, total: int) -> None:
        """`done` of the `total` translation units the C build compiles have finished."""

    def cached(self, what: str) -> None:
        """`what` came from the build cache instead of being made."""

    def finish(self) -> None:
        """The compile ended (or failed): close the last phase."""


class Lines(Progress):
    """`sparsec: PHASE 0.12 s` on `stream` as each phase ends."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.current: str | None = None
        self.started = 0.0
        self.detail = ""

    def phase(self, name: str) -> None:
        self._end()
        self.current, self.started, self.detail = name, time.perf_counter(), ""

    def units(self, done: int, total: int) -> None:
        self.detail = f" ({done} of {total} C files compiled)"

    def cached(self, what: str) -> None:
        self.detail = f" ({what} cached)"

    def finish(self) -> None:
        self._end()

    def _end(self) -> None:
        if self.current is not None:
            elapsed = time.perf_counter() - self.started
            print(f"sparsec: {self.current} {elapsed:.2f} s{self.detail}", file=self.stream,
                  flush=True)
        self.current = None


class Live(Progress):
    """One line on the terminal, redrawn: spinner, phase, bar (C build), elapsed time. It
    disappears when the compile ends, leaving the command's own output."""

    def __init__(self):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import Progress as RichProgress

        self.bar = RichProgress(
            SpinnerColumn(), TextColumn("sparsec: {task.description}"), BarColumn(),
            MofNCompleteColumn(), TimeElapsedColumn(),
            console=Console(stderr=True), transient=True)
        self.task = None
        self.bar.start()

    def phase(self, name: str) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
        self.task = self.bar.add_task(name, total=None)

    def units(self, done: int, total: int) -> None:
        if self.task is not None:
            self.bar.update(self.task, completed=done, total=total)

    def cached(self, what: str) -> None:
        if self.task is not None:
            self.bar.update(self.task, description=f"{what} cached")

    def finish(self) -> None:
        self.bar.stop()


def for_terminal(verbose: bool, quiet: bool, stream: TextIO | None = None) -> Progress:
    """The CLI's choice: -q nothing, -v lines, else a live line where stderr is a terminal."""
    stream = stream or sys.stderr
    if quiet:
        return Progress()
    if verbose:
        return Lines(stream)
    return Live() if stream.isatty() else Progress()
