"""Run a compiled library without loading it into Python: through runtime_c/driver.c, natively
or under qemu-user when the library is for another architecture (an AArch64 library on x86).

Inputs and outputs travel as raw files in C order; the driver is built once per compiler and
kept in the build cache. `run_batch` runs many libraries in one driver process: qemu starts
once for all of them.
"""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sparsec.codegen import build, cache_files, targets
from sparsec.codegen.targets import Target
from sparsec.errors import InputError, RuntimeFailure, SparsecError

EMULATOR_TIMEOUT_S = 1800


def driver(target: Target, cache_dir: Path | None = None, flags: tuple[str, ...] = ()) -> Path:
    """The driver executable for `target`, built with the target's compiler (cached); `flags`
    such as sanitizers, which the driver must carry when the library does."""
    compiler = build.find_compiler(target)
    source = build.runtime_dir() / "driver.c"
    key = hashlib.sha256(source.read_bytes() + build.compiler_identity(compiler).encode()
                         + " ".join(flags).encode())
    path = (cache_dir or build.default_cache_dir()) / f"driver-{key.hexdigest()[:24]}"
    if not path.is_file():
        with tempfile.TemporaryDirectory(prefix="sparsec-driver-") as tmp:
            exe = Path(tmp) / "driver"
            build._run([compiler, "-O2", "-std=c11", "-Wall", *flags, str(source), "-o",
                        str(exe), "-ldl"], Path(tmp))
            cache_files.atomic_write(path, exe.read_bytes(), 0o755)
    return path


def command_prefix(target: Target) -> list[str]:
    """How to start the target's programs here: directly, or through qemu-user."""
    mode = targets.execution_mode(target)
    if mode == "native" or targets.runs_emulated(target):  # an emulation header: runs here
        return []
    if mode == "emulated":
        return [targets.emulator(target), "-L", str(targets.sysroot(target))]
    raise SparsecError(f"cannot run {target.name} code here ({mode}): it needs a "
                       f"{target.arch} CPU" + (f", or {target.emulator} (apt-get install "
                                               "qemu-user)" if target.emulator else ""))


@dataclass(frozen=True)
class Job:
    """One run: `library` (described by its `info`) on `feeds`, with `threads` threads."""
    library: Path
    info: dict
    feeds: dict
    threads: int = 1


def run(library: Path, target: Target, info: dict, feeds: dict, threads: int = 1,
        cache_dir: Path | None = None, cpu: str | None = None,
        driver_flags: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Outputs of one run of `library` (compiled for `target`, described by `info`) on
    `feeds`. `cpu`: the CPU model qemu emulates (e.g. cortex-a53), when emulated;
    `driver_flags`: compiler flags the driver needs too (sanitizers)."""
    (result,) = run_batch([Job(Path(library), info, feeds, threads)], target, cache_dir, cpu,
                          driver_flags)
    if isinstance(result, SparsecError):
        raise result
    return result


def run_batch(jobs: Sequence[Job], target: Target, cache_dir: Path | None = None,
              cpu: str | None = None, driver_flags: tuple[str, ...] = ()
              ) -> list[dict[str, np.ndarray] | SparsecError]:
    """Each job's outputs, or the error it ended with, from one driver process (one qemu
    start for all, where emulated); a job that crashes the process (or, in a sanitized driver,
    leaks) is reported as such and the jobs after it run in a new process. Inputs are checked
    before anything runs."""
    prefix = command_prefix(target)
    if cpu and prefix:
        prefix = prefix[:1] + ["-cpu", cpu] + prefix[1:]
    where = " ".join(prefix[:1]) or "natively"
    exe = str(driver(target, cache_dir, driver_flags))
    results: list[dict[str, np.ndarray] | SparsecError] = []
    with tempfile.TemporaryDirectory(prefix="sparsec-run-") as tmp:
        folder = Path(tmp)
        lines = [" ".join(_job_args(job, folder / f"job{i}")) for i, job in enumerate(jobs)]
        while len(results) < len(jobs):
            start = len(results)
            listing = folder / f"jobs{start}.txt"
            listing.write_text("".join(line + "\n" for line in lines[start:]))
            try:
                done = subprocess.run(prefix + [exe, "--batch", str(listing)],
                                      capture_output=True, text=True,
                                      timeout=EMULATOR_TIMEOUT_S, check=False)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise RuntimeFailure(f"running {jobs[start].library} failed: {exc}") from None
            statuses = _statuses(done.stdout)
            stderr = _stderr_per_job(done.stderr, len(statuses))
            for index, (status, message) in enumerate(statuses):
                job = jobs[len(results)]
                # What the job left on stderr: a crash's last words, a sanitizer's report.
                detail = stderr[index] or (f"exit {done.returncode}" if status is None else "")
                if status != 0:
                    message = f"{message}\n{detail}".strip()
                if status == 0:
                    results.append(_outputs(job, folder / f"job{len(results)}"))
                else:
                    results.append(RuntimeFailure(
                        f"running {job.library} ({where}) failed: "
                        f"{message or f'exit {status}'}"))
            if len(results) == start:  # not even one job began: the driver itself failed
                raise RuntimeFailure(f"the driver did not start ({where}): "
                                     f"{done.stderr.strip() or f'exit {done.returncode}'}")
            if statuses[-1][0] is not None and done.returncode != 0:
                # Every job reported, then the process failed (a sanitizer's check at exit):
                # no job can be blamed, so none passes.
                raise RuntimeFailure(f"the driver exited with status {done.returncode} after "
                                     f"its jobs ({where}): {done.stderr.strip()}")
    return results


def _job_args(job: Job, stem: Path) -> list[str]:
    """The driver's arguments for one job, with its inputs written next to `stem`."""
    args = [str(Path(job.library).resolve()), str(job.threads)]
    for index, spec in enumerate(job.info["inputs"]):
        array = _checked(spec, job.feeds)
        path = Path(f"{stem}-in{index}.bin")
        path.write_bytes(np.ascontiguousarray(array).tobytes())
        args.append(str(path))
    args.append("--")
    for index, spec in enumerate(job.info["outputs"]):
        nbytes = int(np.prod(spec["shape"], dtype=np.int64)) * np.dtype(spec["dtype"]).itemsize
        args.append(f"{stem}-out{index}.bin:{nbytes}")
    if any(" " in arg or "\n" in arg for arg in args):
        raise SparsecError(f"the driver's job list cannot hold a path with a space: {args}")
    return args


def _statuses(stdout: str) -> list[tuple[int | None, str]]:
    """(status, message) per job the driver began, in order; status None for a job that did
    not finish (the process crashed in it)."""
    found: list[tuple[int | None, str]] = []
    message: list[str] | None = None
    for line in stdout.splitlines():
        if line.startswith("job ") and line[4:].isdigit():
            message = []
        elif line.startswith("status ") and message is not None:
            found.append((int(line[7:]), "\n".join(message).strip()))
            message = None
        elif message is not None:
            message.append(line)
    if message is not None:
        found.append((None, "\n".join(message).strip() or "crashed"))
    return found


def _stderr_per_job(stderr: str, count: int) -> list[str]:
    """The driver's stderr split at its "job i" lines: what each of the `count` jobs it began
    wrote there (a driver without the markers: all of it, for every job)."""
    parts: list[list[str]] = []
    for line in stderr.splitlines():
        if line.startswith("job ") and line[4:].isdigit():
            parts.append([])
        elif parts:
            parts[-1].append(line)
    if not parts:
        return [stderr.strip()] * count
    texts = ["\n".join(part).strip() for part in parts]
    return (texts + [""] * count)[:count]


def _outputs(job: Job, stem: Path) -> dict[str, np.ndarray]:
    return {spec["name"]: np.fromfile(f"{stem}-out{index}.bin", dtype=spec["dtype"])
            .reshape(spec["shape"]) for index, spec in enumerate(job.info["outputs"])}


def _checked(spec: dict, feeds: dict) -> np.ndarray:
    if spec["name"] not in feeds:
        raise InputError(f"input {spec['name']!r} is missing")
    array = np.asarray(feeds[spec["name"]])
    if array.dtype != np.dtype(spec["dtype"]) or list(array.shape) != list(spec["shape"]):
        raise InputError(f"input {spec['name']!r} must be {spec['dtype']}{spec['shape']}, got "
                         f"{array.dtype}{list(array.shape)}")
    return array
