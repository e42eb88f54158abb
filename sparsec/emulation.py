"""Run a compiled library without loading it into Python: through runtime_c/driver.c, natively
or under qemu-user when the library is for another architecture (an AArch64 library on x86).

Inputs and outputs travel as raw files in C order; the driver is built once per compiler and
kept in the build cache.
"""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from sparsec.codegen import build, targets
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
            build.atomic_write(path, exe.read_bytes(), 0o755)
    return path


def command_prefix(target: Target) -> list[str]:
    """How to start the target's programs here: directly, or through qemu-user."""
    mode = targets.execution_mode(target)
    if mode == "native":
        return []
    if mode == "emulated":
        return [targets.emulator(target), "-L", str(targets.sysroot(target))]
    raise SparsecError(f"cannot run {target.name} code here ({mode}): it needs a "
                       f"{target.arch} CPU" + (f", or {target.emulator} (apt-get install "
                                               "qemu-user)" if target.emulator else ""))


def run(library: Path, target: Target, info: dict, feeds: dict, threads: int = 1,
        cache_dir: Path | None = None, cpu: str | None = None,
        driver_flags: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Outputs of one run of `library` (compiled for `target`, described by `info`) on
    `feeds`. `cpu`: the CPU model qemu emulates (e.g. cortex-a53), when emulated;
    `driver_flags`: compiler flags the driver needs too (sanitizers)."""
    prefix = command_prefix(target)
    if cpu and prefix:
        prefix = prefix[:1] + ["-cpu", cpu] + prefix[1:]
    with tempfile.TemporaryDirectory(prefix="sparsec-run-") as tmp:
        folder = Path(tmp)
        args = [str(driver(target, cache_dir, driver_flags)), str(Path(library).resolve()),
                str(threads)]
        for index, spec in enumerate(info["inputs"]):
            array = _checked(spec, feeds)
            path = folder / f"in{index}.bin"
            path.write_bytes(np.ascontiguousarray(array).tobytes())
            args.append(str(path))
        args.append("--")
        for index, spec in enumerate(info["outputs"]):
            nbytes = int(np.prod(spec["shape"], dtype=np.int64)) * np.dtype(spec["dtype"]).itemsize
            args.append(f"{folder / f'out{index}.bin'}:{nbytes}")
        try:
            done = subprocess.run(prefix + args, capture_output=True, text=True,
                                  timeout=EMULATOR_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeFailure(f"running {library} failed: {exc}") from None
        if done.returncode != 0:
            raise RuntimeFailure(f"running {library} ({' '.join(prefix[:1]) or 'natively'}) "
                                 f"failed: {done.stderr.strip() or f'exit {done.returncode}'}")
        return {spec["name"]: np.fromfile(folder / f"out{index}.bin", dtype=spec["dtype"])
                .reshape(spec["shape"]) for index, spec in enumerate(info["outputs"])}


def _checked(spec: dict, feeds: dict) -> np.ndarray:
    if spec["name"] not in feeds:
        raise InputError(f"input {spec['name']!r} is missing")
    array = np.asarray(feeds[spec["name"]])
    if array.dtype != np.dtype(spec["dtype"]) or list(array.shape) != list(spec["shape"]):
        raise InputError(f"input {spec['name']!r} must be {spec['dtype']}{spec['shape']}, got "
                         f"{array.dtype}{list(array.shape)}")
    return array
