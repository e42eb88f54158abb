"""Build a shared library from rendered C with the system C compiler.

The compiler is called with argv lists (never a shell), flags come from the target record, and
results are cached by a hash of the source, the weights, the runtime sources, the flags and the
compiler's identity. The runtime's objects, the same for every model, are cached too, by their
commands, the runtime sources and the compiler's identity, and linked into each library. A
large model's translation units (model.c, unit-0.c, ...: codegen/units.py) compile in parallel
on the CPUs this process may use, and each unit's object is cached by its command and text, so
a rebuild after a change to one layer compiles model.c and that layer's unit only. Files land
and cache entries are checked by codegen/cache_files.py.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from sparsec.codegen import exports, jobs, targets
from sparsec.codegen.cache_files import (
    atomic_copy,
    keep_verified,
    place,
    place_verified,
    restore_entry,
    store_entry,
)
from sparsec.codegen.emit import Rendered
from sparsec.codegen.targets import BASE_CFLAGS, Target
from sparsec.errors import BuildError
from sparsec.progress import Progress

RUNTIME_SOURCES = ("runtime.c", "cpu.c", "threads.c")


def runtime_dir() -> Path:
    return Path(str(resources.files("sparsec.runtime_c")))


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sparsec"


def find_compiler(target: Target | None = None) -> str:
    """The C compiler: for a target of another architecture its cross compiler; otherwise $CC
    if set (as build tools conventionally honour), else cc, gcc, clang."""
    if target is not None and target.arch not in ("any", targets.host_arch()):
        compiler = targets.cross_compiler(target)
        if compiler is None:
            raise BuildError(f"target {target.name} needs the cross compiler "
                             f"{target.cross_triplet}-gcc, which is not installed; on Debian "
                             f"or Ubuntu: apt-get install gcc-{target.cross_triplet}")
        return compiler
    for name in filter(None, (os.environ.get("CC"), "cc", "gcc", "clang")):
        path = shutil.which(name)
        if path:
            return path
    raise BuildError("no C compiler found (tried $CC, cc, gcc, clang); install one, e.g. "
                     "`apt-get install gcc`")


@functools.lru_cache(maxsize=8)
def compiler_identity(compiler: str) -> str:
    try:
        result = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                                timeout=60, check=False)
    except OSError as exc:
        raise BuildError(f"cannot run the C compiler {compiler}: {exc}") from None
    return f"{compiler}\n{result.stdout.strip()}"


def _run(argv: list[str], cwd: Path) -> None:
    try:
        result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False,
                                timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BuildError(f"C compiler failed to run: {' '.join(argv)}: {exc}") from None
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-30:])
        raise BuildError(f"C compiler failed (exit {result.returncode}):\n  {' '.join(argv)}\n"
                         f"{tail}")


def runtime_command(compiler: str, source: str, obj: Path,
                    extra_flags: tuple[str, ...] = ()) -> list[str]:
    """One runtime source at baseline flags: it must run on any CPU to report a missing
    feature, so the target's flags never reach it."""
    return [compiler, *BASE_CFLAGS, *extra_flags, "-I", str(runtime_dir()),
            "-c", str(runtime_dir() / source), "-o", str(obj)]


def model_flags(compiler: str, target: Target, extra_flags: tuple[str, ...] = ()) -> list[str]:
    # Extra flags last, so that they can override the target's (tests build AVX-VNNI kernels
    # with -mno-avxvnni to run them through their EVEX twins).
    return [compiler, *BASE_CFLAGS, "-I", str(runtime_dir()), *target.cflags, *extra_flags]


def model_sources(units: int) -> list[str]:
    """The model's translation units: model.c, then `units` unit files (Rendered.units)."""
    return ["model.c", *(f"unit-{number}.c" for number in range(units))]


def object_name(source: str) -> str:
    return source.removesuffix(".c") + ".o"


def model_command(compiler: str, target: Target, extra_flags: tuple[str, ...] = (),
                  prelude: tuple[str, ...] = (), source: str = "model.c") -> list[str]:
    return [*model_flags(compiler, target, extra_flags), *prelude,
            "-c", source, "-o", object_name(source)]


EXPORTS_MAP = "exports.map"


def link_command(compiler: str, runtime_objects: list[Path], output: Path,
                 extra_flags: tuple[str, ...] = (), units: int = 0,
                 named: bool = False) -> list[str]:
    """named: the library exports only its --name API (EXPORTS_MAP in the build folder)."""
    exports = [f"-Wl,--version-script={EXPORTS_MAP}"] if named else []
    return [compiler, "-shared", *extra_flags, *exports, *map(str, runtime_objects),
            *map(object_name, model_sources(units)), "-o", str(output), "-lm", "-pthread"]


def compile_commands(compiler: str, target: Target, workdir: Path, output: Path,
                     extra_flags: tuple[str, ...] = ()) -> list[list[str]]:
    """Every command of an uncached build in `workdir` (model.c and the unit files there):
    the runtime, the model's units, the link."""
    units = len(list(workdir.glob("unit-*.c")))
    objects = [workdir / (Path(source).stem + ".o") for source in RUNTIME_SOURCES]
    return [*(runtime_command(compiler, source, obj, extra_flags)
              for source, obj in zip(RUNTIME_SOURCES, objects)),
            *(model_command(compiler, target, extra_flags, source=source)
              for source in model_sources(units)),
            link_command(compiler, objects, output, extra_flags, units,
                         named=(workdir / EXPORTS_MAP).exists())]


def unit_entry(compiler: str, argv: list[str], source: str, cache_dir: Path) -> Path:
    """The object cache entry of one unit: its command (file names included, which the object
    records) and text, the compiler's identity and the runtime headers it includes."""
    h = hashlib.sha256(runtime_inputs_digest())
    for part in (compiler_identity(compiler), *argv, source):
        h.update(part.encode())
        h.update(b"\0")
    return cache_dir / "units" / f"{h.hexdigest()}.o.entry"


def compile_model(compiler: str, target: Target, extra_flags: tuple[str, ...],
                  prelude: tuple[str, ...], rendered: Rendered, workdir: Path,
                  cache_dir: Path, use_cache: bool,
                  finished: Callable[[int, int], None] | None = None) -> None:
    """The model's objects in `workdir`: unit objects from the cache where it has them, the
    rest compiled in parallel. model.c is always compiled: it holds the weights (.incbin),
    which the cache would store a second copy of, and changes whenever any layer does."""
    texts = dict(zip(model_sources(len(rendered.units)), [rendered.model_c, *rendered.units]))
    # model.c first (it assembles the weights too), then the largest units: the longest
    # compiles started first leave the short ones to even out the cores' finishing times
    order = ["model.c", *sorted(list(texts)[1:], key=lambda source: -len(texts[source]))]
    commands, stores = [], []
    for source in order:
        text = texts[source]
        argv = model_command(compiler, target, extra_flags, prelude, source)
        if source == "model.c" or not use_cache:
            commands.append(argv)
            continue
        entry = unit_entry(compiler, argv, text, cache_dir)
        if not (entry.exists() and restore_entry(entry, workdir / object_name(source))):
            commands.append(argv)
            stores.append((entry, workdir / object_name(source)))
    jobs.run_parallel(commands, workdir, _run, finished)
    for entry, obj in stores:
        store_entry(entry, obj)


def runtime_inputs_digest() -> bytes:
    """The bytes of every runtime source and header, so that an edited one (sparsec_amx.h,
    sparsec_vmath_body.h) is a new key."""
    h = hashlib.sha256()
    headers = sorted(path.name for path in runtime_dir().glob("*.h"))
    for name in (*RUNTIME_SOURCES, *headers):
        data = (runtime_dir() / name).read_bytes()
        h.update(f"{name} {len(data)}\0".encode())
        h.update(data)
    return h.digest()


def runtime_objects(compiler: str, workdir: Path, cache_dir: Path, use_cache: bool,
                    extra_flags: tuple[str, ...] = ()) -> list[Path]:
    """The runtime's objects in `workdir`, compiled once per compiler, flags and runtime
    sources, then copied from the cache: the runtime is the same for every model, and compiling it
    took about half of a small model's build. The key hashes the whole command (the object's name
    aside) with the compiler's identity, so any flag that reaches the compiler is in it."""
    sources_digest = runtime_inputs_digest()
    objects = []
    for source in RUNTIME_SOURCES:
        obj = workdir / (Path(source).stem + ".o")
        argv = runtime_command(compiler, source, obj, extra_flags)
        h = hashlib.sha256(sources_digest)
        for part in (compiler_identity(compiler), *argv[:-1]):
            h.update(part.encode())
            h.update(b"\0")
        entry = cache_dir / "runtime" / f"{obj.stem}-{h.hexdigest()}.o.entry"
        if not (use_cache and entry.exists() and restore_entry(entry, obj)):
            _run(argv, workdir)
            if use_cache:
                store_entry(entry, obj)
        objects.append(obj)
    return objects


PRELUDE = "sparsec_prelude.h"


def source_prelude(model_c: str) -> str:
    """The preprocessor lines (and one-line comments) that open model.c, up to its first line
    of C: the headers that every model of a target includes."""
    lines = []
    for line in model_c.splitlines(keepends=True):
        text = line.strip()
        if text and not text.startswith("#") and not (text.startswith("/*")
                                                       and text.endswith("*/")):
            break
        lines.append(line)
    return "".join(lines)


def precompiled_prelude(compiler: str, target: Target, extra_flags: tuple[str, ...],
                        model_c: str, workdir: Path, cache_dir: Path,
                        use_cache: bool = True) -> tuple[str, ...]:
    """Flags that have the compiler read model.c's opening includes from a precompiled header
    in `workdir`, built once per prelude, flags and compiler (with use_cache=False, once per
    build): parsing <immintrin.h> (64,000 lines) took 0.2-0.3 s of every x86 model's compile,
    three quarters of a small one's, and of every translation unit's of a large one (they all
    open with model.c's includes). The sources then include the same headers again, after
    them, in the same order; their include guards make that a no-op, so the code is what a
    compile without the prelude gives (a test compares the libraries byte for byte). Where the
    compiler cannot use the precompiled header it reads the prelude as text: slower, still the
    same code."""
    prelude = source_prelude(model_c)
    (workdir / PRELUDE).write_text(prelude)
    argv = [*model_flags(compiler, target, extra_flags), "-x", "c-header", PRELUDE,
            "-o", PRELUDE + ".gch"]
    h = hashlib.sha256(runtime_inputs_digest())
    for part in (compiler_identity(compiler), *argv, prelude):
        h.update(part.encode())
        h.update(b"\0")
    entry = cache_dir / "prelude" / f"{h.hexdigest()}.gch.entry"
    gch = workdir / (PRELUDE + ".gch")
    if not (use_cache and place_verified(entry, gch)):
        if not (use_cache and entry.exists() and restore_entry(entry, gch)):
            _run(argv, workdir)
            if use_cache:
                store_entry(entry, gch)
        if use_cache:
            keep_verified(entry, gch)
    # -Winvalid-pch: a build with -Werror (the kernel tests) fails where the header goes unused
    return ("-include", PRELUDE, "-Winvalid-pch")


def cache_key(rendered: Rendered, target: Target, compiler: str,
              extra_flags: tuple[str, ...], static: bool = False) -> str:
    """The library's entry: its source, flags and compiler; static: the archive's."""
    h = hashlib.sha256()
    for part in (rendered.digest(), target.name, " ".join(BASE_CFLAGS), " ".join(target.cflags),
                 " ".join(extra_flags), compiler_identity(compiler), "static" * static):
        h.update(part.encode())
        h.update(b"\0")
    h.update(runtime_inputs_digest())
    return h.hexdigest()


def write_units(rendered: Rendered, directory: Path) -> None:
    for source, text in zip(model_sources(len(rendered.units))[1:], rendered.units):
        (directory / source).write_text(text)


def binutil(target: Target, tool: str) -> str:
    """objcopy or ar for `target`: the cross toolchain's for another architecture."""
    cross = target.arch not in ("any", targets.host_arch()) and target.cross_triplet
    name = f"{target.cross_triplet}-{tool}" if cross else tool
    path = shutil.which(name)
    if path is None:
        raise BuildError(f"a static archive needs {name} (binutils), which is not installed")
    return path


def archive_objects(compiler: str, target: Target, objects: list[Path], workdir: Path,
                    archive: Path, prefix: str | None) -> None:
    """A static archive of the library: every object linked into one relocatable object
    (ld -r), whose hidden symbols, everything but the API, are then made local, so that two
    models' kernels, weights and runtime cannot clash in one program; with --name the
    sparsec_* functions too, leaving only the prefixed API. Then ar."""
    combined = workdir / "library.o"
    _run([compiler, "-r", "-nostdlib", *map(str, objects), "-o", str(combined)], workdir)
    local = [f"--localize-symbol=sparsec_{f.name}" for f in exports.api_functions()] \
        if prefix else []
    _run([binutil(target, "objcopy"), "--localize-hidden", *local, str(combined)], workdir)
    _run([binutil(target, "ar"), "rcs", str(archive), str(combined)], workdir)


def build(rendered: Rendered, target: Target, output: Path, *, cache_dir: Path | None = None,
          use_cache: bool = True, extra_flags: tuple[str, ...] = (),
          keep_source: Path | None = None, progress: Progress | None = None,
          static: bool = False) -> Path:
    """Compile `rendered` into the shared library `output` (static: the static archive);
    returns `output`. `progress` hears of the build's units as they finish, or that the
    library came from the cache."""
    progress = progress or Progress()
    compiler = find_compiler(target)
    cache_dir = cache_dir or default_cache_dir()
    key = cache_key(rendered, target, compiler, extra_flags, static)
    entry = cache_dir / f"{key}.entry"
    if keep_source is not None:
        keep_source.mkdir(parents=True, exist_ok=True)
        (keep_source / "model.c").write_text(rendered.model_c)
        write_units(rendered, keep_source)
        if rendered.export_prefix:
            (keep_source / EXPORTS_MAP).write_text(exports.version_script(rendered.export_prefix))
        atomic_copy(rendered.weights.path, keep_source / "weights.bin")
    if use_cache and entry.exists() and restore_entry(entry, output, 0o755):
        progress.cached("library")
        return output
    with tempfile.TemporaryDirectory(prefix="sparsec-build-") as tmp:
        workdir = Path(tmp)
        (workdir / "model.c").write_text(rendered.model_c)
        write_units(rendered, workdir)
        place(rendered.weights.path, workdir / "weights.bin")
        library = workdir / "model.so"
        objects = runtime_objects(compiler, workdir, cache_dir, use_cache, extra_flags)
        # An uncached build of one translation unit would only pay for a precompiled header;
        # with units, every file saves more than it costs (x86-amx flags: 0.45 s of CPU to
        # build it, 0.33 s to parse the includes without it).
        prelude = (precompiled_prelude(compiler, target, extra_flags, rendered.model_c,
                                       workdir, cache_dir, use_cache)
                   if use_cache or rendered.units else ())
        compile_model(compiler, target, extra_flags, prelude, rendered, workdir, cache_dir,
                      use_cache, progress.units)
        if static:
            library = workdir / "model.a"
            model_objects = [workdir / object_name(source)
                             for source in model_sources(len(rendered.units))]
            archive_objects(compiler, target, [*objects, *model_objects], workdir, library,
                            rendered.export_prefix)
        else:
            if rendered.export_prefix:
                (workdir / EXPORTS_MAP).write_text(
                    exports.version_script(rendered.export_prefix))
            _run(link_command(compiler, objects, library, extra_flags, len(rendered.units),
                              named=bool(rendered.export_prefix)), workdir)
        if use_cache:
            store_entry(entry, library)
        atomic_copy(library, output, 0o755)
    return output
