"""Load a library built by sparsec and run it from Python (cffi, ABI mode).

A `Module` owns one run context. Calls into the library release the GIL; a lock serialises
runs on the same Module, so sharing one Module between threads is safe (for parallel runs,
load one Module per thread: contexts are independent).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from importlib import resources
from pathlib import Path

import cffi
import numpy as np

from sparsec.bucketing import Buckets
from sparsec.errors import InputError, LoadError, RuntimeFailure
from sparsec.version import ABI_VERSION

SPARSEC_ERROR_INPUT = 4
_FFI = None
_FFI_LOCK = threading.Lock()
# Path -> (identity of the file, its library), one per file for the life of the process:
# cffi keeps every library it opens (closed or not) in the FFI, so opening one per Module would
# grow without bound; modules of the same file share it. The dynamic loader hands back a library
# already loaded under the same path even if the file was rebuilt since, so a rebuilt file is
# loaded through a private copy instead.
_LOADED: dict[str, tuple[tuple[int, int, int, int], object]] = {}


def _ffi() -> cffi.FFI:
    """One FFI for all modules, declared from sparsec.h itself (between its cdef markers)."""
    global _FFI
    with _FFI_LOCK:
        if _FFI is None:
            ffi = cffi.FFI()
            ffi.cdef(_cdef_body())
            _FFI = ffi
        return _FFI


def _cdef_body() -> str:
    """sparsec.h's declarations between its cdef markers, without comments or SPARSEC_API."""
    header = (resources.files("sparsec.runtime_c") / "sparsec.h").read_text()
    body = header.split("/* cdef-begin")[1].split("*/", 1)[1].split("/* cdef-end */")[0]
    return re.sub(r"/\*.*?\*/", "", body, flags=re.S).replace("SPARSEC_API ", "")


class Module:
    """A compiled model: `run({name: array}) -> {name: array}`, or call it with positionals."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise LoadError(f"no compiled model at {self.path}")
        if self.path.suffix == ".a":
            raise LoadError(f"{self.path} is a static archive (--emit static), for linking "
                            "into a C program; compile a shared library (.so) to load it here")
        ffi = _ffi()
        try:
            self._lib = _dlopen_current(ffi, self.path.resolve())
        except OSError as exc:
            raise LoadError(f"cannot load {self.path}: {exc}. Is it a sparsec library built "
                            "for this machine's architecture?") from None
        try:
            abi = self._lib.sparsec_abi_version()
        except AttributeError:  # a library compiled with --name, or no sparsec library
            self._lib = _renamed(ffi, self._lib, self.path)
            abi = self._lib.sparsec_abi_version()
        if abi != ABI_VERSION:
            raise LoadError(f"{self.path} uses sparsec ABI {abi}; this sparsec reads ABI "
                            f"{ABI_VERSION}. Recompile the model with this sparsec")
        message = ffi.new("char[]", 1024)
        if self._lib.sparsec_cpu_check(message, 1024) != 0:
            raise LoadError(f"{self.path}: {ffi.string(message).decode()}")
        self.info = json.loads(ffi.string(self._lib.sparsec_model_info()).decode())
        # With buckets (sparsec/bucketing.py), one plan per length, shortest first; the
        # top-level inputs and outputs are the longest plan's, the last.
        self.buckets = Buckets(self.info["buckets"]) if "buckets" in self.info else None
        self._plans = [([_TensorSpec(t) for t in plan["inputs"]],
                        [_TensorSpec(t) for t in plan["outputs"]])
                       for plan in self.info.get("plans", [self.info])]
        self.inputs, self.outputs = self._plans[-1]
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise LoadError(f"threads must be a positive integer, got {threads!r}")
        context = ffi.new("sparsec_context **")
        status = self._lib.sparsec_create_threads(context, threads or 0)
        if status != 0:
            raise LoadError(f"{self.path}: cannot create a run context: "
                            f"{ffi.string(self._lib.sparsec_status_message(status)).decode()}")
        self._context = context[0]
        self.threads = self._lib.sparsec_threads(self._context)
        self._lock = threading.Lock()
        self._input_pointers = ffi.new("void *[]", max(len(self.inputs), 1))
        self._output_pointers = ffi.new("void *[]", max(len(self.outputs), 1))

    @property
    def target(self) -> str:
        return self.info["target"]

    def close(self) -> None:
        """Free the run context; the Module cannot run afterwards. Closing twice is harmless.
        The library stays loaded, for other Modules of the same file (see _LOADED)."""
        lock = getattr(self, "_lock", None)
        if lock is None:
            return
        with lock:
            if getattr(self, "_context", None) is not None:
                self._lib.sparsec_destroy(self._context)
                self._context = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self) -> Module:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        sig = ", ".join(f"{t.name}: {t.dtype}{list(t.shape)}" for t in self.inputs)
        return f"<sparsec.Module {str(self.path)!r} target={self.target} ({sig})>"

    def __call__(self, *arrays):
        """Positional inputs in model order; one output returns an array, several a tuple."""
        if len(arrays) != len(self.inputs):
            raise InputError(f"the model takes {len(self.inputs)} input(s) "
                             f"({', '.join(repr(t.name) for t in self.inputs)}), got "
                             f"{len(arrays)}")
        results = self.run({spec.name: a for spec, a in zip(self.inputs, arrays)})
        values = tuple(results[t.name] for t in self.outputs)
        return values[0] if len(values) == 1 else values

    def profile(self, plan: int | None = None) -> list[dict]:
        """Each layer of the model info with `ms`, its time summed over this module's runs.
        Needs a library compiled with profile=True (`sparsec compile --profile`). With
        buckets, the layers of plan `plan` (an index into `buckets.lengths`; default the
        longest, the model info's top-level layers)."""
        plan = len(self._plans) - 1 if plan is None else plan
        if not isinstance(plan, int) or not 0 <= plan < len(self._plans):
            raise InputError(f"plan must be an index below {len(self._plans)}, got {plan!r}")
        layers = self.info["plans"][plan]["layers"] if self.buckets else self.info["layers"]
        ms = _ffi().new("double[]", max(len(layers), 1))
        with self._lock:
            if self._context is None:
                raise RuntimeFailure(f"{self.path}: the module is closed")
            count = self._lib.sparsec_profile_plan(self._context, plan, ms, len(layers))
        if count == 0:
            raise RuntimeFailure(f"{self.path} was compiled without profiling; compile it with "
                               "`sparsec compile --profile` (Python: profile=True)")
        return [dict(layer, ms=ms[i]) for i, layer in enumerate(layers[:count])]

    def run(self, feeds: dict) -> dict:
        """Run once: `feeds` maps every input name to an array of its shape and dtype. With
        buckets, the bucketed inputs may have any length up to the longest bucket: they run
        on the smallest that fits, padded, and outputs come back at the request's length."""
        arrays = self._check_inputs(feeds)
        plan, length = len(self._plans) - 1, None
        if self.buckets is not None:
            plan, length = self.buckets.choose(dict(zip(self._names, arrays)))
            arrays = [self.buckets.pad(name, array, self.buckets.lengths[plan])
                      for name, array in zip(self._names, arrays)]
        results = [np.empty(t.shape, dtype=t.dtype) for t in self._plans[plan][1]]
        ffi = _ffi()
        with self._lock:
            if self._context is None:
                raise RuntimeFailure(f"{self.path}: the module is closed")
            for i, array in enumerate(arrays):
                self._input_pointers[i] = ffi.from_buffer(array, require_writable=False)
            for i, array in enumerate(results):
                self._output_pointers[i] = ffi.from_buffer(array, require_writable=True)
            status = self._lib.sparsec_run_plan(self._context, plan, self._input_pointers,
                                                self._output_pointers)
            if status == SPARSEC_ERROR_INPUT:
                raise InputError(
                    ffi.string(self._lib.sparsec_last_error(self._context)).decode())
            if status != 0:
                raise RuntimeFailure(
                    f"{self.path}: run failed: "
                    f"{ffi.string(self._lib.sparsec_last_error(self._context)).decode()}")
        if length is None:
            return {t.name: r for t, r in zip(self.outputs, results)}
        return {t.name: self.buckets.trim(t.name, r, length) for t, r in zip(self.outputs, results)}

    @property
    def _names(self) -> list[str]:
        return [t.name for t in self.inputs]

    def _check_inputs(self, feeds: dict) -> list[np.ndarray]:
        if not isinstance(feeds, dict):
            raise InputError("run() takes a dict {input name: array}")
        expected = [t.name for t in self.inputs]
        missing = [n for n in expected if n not in feeds]
        extra = [n for n in feeds if n not in expected]
        if missing or extra:
            parts = []
            if missing:
                parts.append("missing " + ", ".join(map(repr, missing)))
            if extra:
                parts.append("unknown " + ", ".join(map(repr, extra)))
            takes = ", ".join(f"{t.name!r} {t.describe()}" for t in self.inputs)
            raise InputError(f"inputs do not match the model: {'; '.join(parts)}. The model "
                             f"takes: {takes}")
        axes = self.buckets.inputs if self.buckets else {}
        return [spec.check(feeds[spec.name], axes.get(spec.name)) for spec in self.inputs]


class _Renamed:
    """A library compiled with --name PREFIX: its sparsec_X is PREFIX_X."""

    def __init__(self, library, prefix: str):
        self._library, self._prefix = library, prefix

    def __getattr__(self, name: str):
        return getattr(self._library, self._prefix + name.removeprefix("sparsec"))


_DECLARED_PREFIXES: set[str] = set()


def _renamed(ffi: cffi.FFI, library, path: Path) -> _Renamed:
    """`library` through the names its info (read from the file) says it exports: sparsec.h's
    function declarations, renamed, are added to the shared FFI once per prefix."""
    from sparsec.library_info import read_info

    try:
        prefix = read_info(path).get("name")
    except Exception:  # not an ELF file with sparsec's info section
        prefix = None
    if not prefix or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", prefix):
        raise LoadError(f"{path} is not a sparsec library")
    with _FFI_LOCK:
        if prefix not in _DECLARED_PREFIXES:
            functions = re.findall(r"[^;{}]*\bsparsec_\w+\([^;]*\);", _cdef_body())
            ffi.cdef(re.sub(r"\bsparsec_(\w+)\(", rf"{prefix}_\1(", "".join(functions)))
            _DECLARED_PREFIXES.add(prefix)
    renamed = _Renamed(library, prefix)
    try:
        renamed.sparsec_abi_version  # noqa: B018 (its presence is the check)
    except AttributeError:
        raise LoadError(f"{path} is not a sparsec library") from None
    return renamed


def _dlopen_current(ffi: cffi.FFI, path: Path):
    """The library of `path` as the file is now: opened once per file, then shared."""
    with _FFI_LOCK:
        stat = path.stat()
        identity = (stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size)
        known = _LOADED.get(str(path))
        if known is not None and known[0] == identity:
            return known[1]
        library = ffi.dlopen(str(path)) if known is None else _dlopen_copy(ffi, path)
        _LOADED[str(path)] = (identity, library)
        return library


def _dlopen_copy(ffi: cffi.FFI, path: Path):
    """dlopen a private copy of `path`, so that a rebuilt file's new code is what runs."""
    try:  # beside the original: /tmp may be mounted noexec
        fd, private = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".so", dir=path.parent)
    except OSError:
        fd, private = tempfile.mkstemp(prefix=f"{path.stem}-", suffix=".so")
    try:
        with os.fdopen(fd, "wb") as copy:
            copy.write(path.read_bytes())
        return ffi.dlopen(private)
    finally:
        os.unlink(private)  # the mapping stays valid; nothing is left on disk


class _TensorSpec:
    def __init__(self, record: dict):
        self.name = record["name"]
        self.shape = tuple(record["shape"])
        self.dtype = np.dtype(record["dtype"])

    def describe(self) -> str:
        return f"{self.dtype.name}[{'x'.join(map(str, self.shape)) or 'scalar'}]"

    def check(self, value, free_axis: int | None = None) -> np.ndarray:
        """`value` as the model takes it; any length along `free_axis` (a bucketed one, which
        Buckets.choose checks)."""
        if not isinstance(value, np.ndarray):
            if isinstance(value, (list, tuple, int, float, bool, np.generic)):
                value = np.asarray(value, dtype=self.dtype)
            else:
                raise InputError(f"input {self.name!r} must be a numpy array, got "
                                 f"{type(value).__name__}")
        if value.dtype != self.dtype and value.dtype.newbyteorder("=") == self.dtype:
            value = value.astype(self.dtype)  # same values, other byte order: convert
        if value.dtype != self.dtype:
            raise InputError(f"input {self.name!r} has dtype {value.dtype.name}, the model "
                             f"expects {self.dtype.name}; convert with "
                             f".astype(numpy.{self.dtype.name})")
        if free_axis is not None:
            if len(value.shape) != len(self.shape) or any(
                    a != b for axis, (a, b) in enumerate(zip(value.shape, self.shape))
                    if axis != free_axis):
                wanted = list(self.shape)
                wanted[free_axis] = "L"
                raise InputError(f"input {self.name!r} has shape {value.shape}, the model "
                                 f"expects ({', '.join(map(str, wanted))}) with L up to "
                                 f"{self.shape[free_axis]} (its buckets)")
        elif value.shape != self.shape:
            raise InputError(f"input {self.name!r} has shape {value.shape}, the model expects "
                             f"{self.shape}. The shape is fixed at compile time: recompile "
                             "with --input-shape to change it")
        # A contiguous, aligned copy is harmless and lets the kernels read plain rows.
        if not value.flags.c_contiguous or not value.flags.aligned:
            value = np.ascontiguousarray(value)
        return value


def load(path: str | os.PathLike, threads: int | None = None) -> Module:
    """Load a compiled model library. `threads` (the caller counts as one) defaults to one per
    physical core among the CPUs this process may run on (its affinity mask when loaded), so a
    process pinned to fewer cores, e.g. by taskset or a container's cpuset, gets fewer threads;
    with several Modules running at once, pass threads so that their sum stays within the cores
    (README, Concurrency)."""
    return Module(path, threads)
