"""One `Target` record per name: compiler flags, kernel ISAs, CPU features, how tests execute it.

Targets are listed from oldest to shiniest; `native` resolves to the shiniest the host can run.
"""

from __future__ import annotations

import functools
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

from sparsec.errors import UnsupportedTargetError

BASE_CFLAGS = ("-O3", "-std=c11", "-pthread", "-fPIC", "-fvisibility=hidden",
               "-fno-math-errno", "-Wall", "-Wextra", "-Wno-unused-parameter",
               "-Wno-unused-function")
"""-fno-math-errno lets sqrtf/expf inline; results are unchanged (errno is never read)."""


@dataclass(frozen=True)
class Dispatch:
    """Kernels of ISA `isa` that a library carries beside its own and calls only where the CPU
    reports `feature` (a name of FEATURE_BITS): compiled between the `begin` and `end` macros
    of the target's headers, which switch the compiler to that ISA for them alone."""
    isa: str
    feature: str
    begin: str
    end: str


@dataclass(frozen=True)
class Emulation:
    """How a target's code runs, for tests, on a CPU without its newest instructions: built
    with `flags` (which swap those instructions for a project header's scalar C), the library
    needs only `features`, and runs natively wherever they are present."""
    flags: tuple[str, ...]
    features: tuple[str, ...]
    what: str  # for messages and the model info: what is emulated, and how


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    arch: str  # "any" (portable C) or the machine it needs: "x86_64"
    isas: tuple[str, ...]  # kernel-table ISA tokens this target may use, oldest first
    cflags: tuple[str, ...]  # extra flags for the model's code (the runtime stays baseline)
    features: tuple[str, ...]  # CPU features the library checks before it runs
    vector_bytes: int
    includes: tuple[str, ...] = ()  # system headers the target's kernels need
    # GNU triplet of a cross compiler for hosts of another architecture (`TRIPLET-gcc`), and
    # the qemu-user program that runs the target's code there.
    cross_triplet: str = ""
    emulator: str = ""
    # Shinier kernels chosen at run time, by CPU feature, over the ones `isas` offers.
    dispatch: tuple[Dispatch, ...] = ()
    emulation: Emulation | None = None


AVX512_CFLAGS = ("-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512dq",
                 "-mavx512vl", "-mavx512vnni")
AVX512_FEATURES = ("avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512vnni")
# AMX, and VBMI2's byte and word expand-loads for BITMASK weights (every AMX CPU has both;
# POPCNT, which the expansion counts with, every AVX-512 CPU has).
AMX_CFLAGS = ("-mamx-tile", "-mamx-int8", "-mamx-bf16", "-mavx512vbmi2", "-mpopcnt")
AMX_FEATURES = ("avx512vbmi2", "amx_tile", "amx_int8", "amx_bf16")
# bf16 layers (--dtype bf16) on AVX-512 libraries: VDPBF16PS where the CPU has AVX512_BF16
# (Cooper Lake, Sapphire Rapids, Zen 4 and later), the same products by FMA elsewhere.
AVX512_BF16 = Dispatch("avx512bf16", "avx512bf16", "SPARSEC_AVX512BF16_BEGIN",
                       "SPARSEC_AVX512BF16_END")

TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("generic", "portable C for any CPU the C compiler supports", "any",
               ("scalar",), (), (), 16),
        Target("x86-avx2", "x86-64 with AVX2 and FMA (Haswell, Zen 1 and later)", "x86_64",
               ("scalar", "avx2"), ("-mavx2", "-mfma", "-mf16c"), ("avx2", "fma"), 32,
               ("immintrin.h", "sparsec_avx2.h")),
        Target("x86-avxvnni", "x86-64 with AVX2, FMA and AVX-VNNI (Alder Lake, Zen 5 and later)",
               "x86_64", ("scalar", "avx2", "avxvnni"),
               ("-mavx2", "-mfma", "-mf16c", "-mavxvnni"), ("avx2", "fma", "avxvnni"), 32,
               ("immintrin.h", "sparsec_avx2.h")),
        Target("x86-avx512", "x86-64 with AVX-512 F/BW/DQ/VL and VNNI (Ice Lake, Zen 4 and later)",
               "x86_64", ("scalar", "avx2", "avx512f", "avx512vnni"),
               AVX512_CFLAGS,
               AVX512_FEATURES, 64, ("immintrin.h", "sparsec_avx2.h", "sparsec_avx512.h"),
               dispatch=(AVX512_BF16,)),
        Target("x86-amx", "x86-64 with AMX tiles (int8, bf16) and AVX-512 (Sapphire Rapids "
               "and later)", "x86_64", ("scalar", "avx2", "avx512f", "avx512vnni", "amx"),
               AVX512_CFLAGS + AMX_CFLAGS, AVX512_FEATURES + AMX_FEATURES, 64,
               ("immintrin.h", "sparsec_avx2.h", "sparsec_avx512.h", "sparsec_amx.h"),
               emulation=Emulation(("-DSPARSEC_AMX_EMULATE",),
                                   AVX512_FEATURES + ("avx512vbmi2",),
                                   "AMX tile instructions emulated in scalar C "
                                   "(runtime_c/sparsec_amx.h): for tests, not for speed"),
               dispatch=(AVX512_BF16,)),
        Target("arm-neon", "AArch64 with NEON (ARMv8-A: Graviton, Apple silicon, phones); "
               "int8 layers on SDOT where the core has the dot product",
               "aarch64", ("scalar", "neon"), ("-march=armv8-a",), (), 16,
               ("arm_neon.h", "sparsec_neon.h"), cross_triplet="aarch64-linux-gnu",
               emulator="qemu-aarch64",
               dispatch=(Dispatch("neondot", "asimddp", "SPARSEC_NEON_DOTPROD_BEGIN",
                                  "SPARSEC_NEON_DOTPROD_END"),)),
        Target("arm-neon-dotprod", "AArch64 with NEON and the dot-product extension (ARMv8.2-A: "
               "Cortex-A55/A76 and later, Graviton 2+, Apple M1+)", "aarch64",
               ("scalar", "neon", "neondot"), ("-march=armv8.2-a+dotprod",), ("asimddp",), 16,
               ("arm_neon.h", "sparsec_neon.h"), cross_triplet="aarch64-linux-gnu",
               emulator="qemu-aarch64"),
    )
}

# Feature bits shared with runtime_c/cpu.c: the library reports missing ones by these names.
FEATURE_BITS = {"avx2": 0, "fma": 1, "avx512f": 2, "avx512bw": 3, "avx512dq": 4, "avx512vl": 5,
                "avx512vnni": 6, "avxvnni": 7, "asimddp": 8, "amx_tile": 9, "amx_int8": 10,
                "amx_bf16": 11, "avx512bf16": 12, "avx512vbmi2": 13}


def host_arch() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


@functools.lru_cache(maxsize=1)
def host_features() -> frozenset[str]:
    """CPU features the OS reports for this host (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags = set(line.split(":", 1)[1].split())
            if "avx512_vnni" in flags:
                flags.add("avx512vnni")
            if "avx_vnni" in flags:
                flags.add("avxvnni")
            if "avx512_bf16" in flags:
                flags.add("avx512bf16")
            if "avx512_vbmi2" in flags:
                flags.add("avx512vbmi2")
            return frozenset(flags)
    return frozenset()


def can_execute(target: Target, features: frozenset[str] | None = None) -> bool:
    if target.arch not in ("any", host_arch()):
        return False
    have = host_features() if features is None else features
    return all(f in have for f in target.features)


def execution_mode(target: Target) -> str:
    """How code for this target runs here: "native"; "emulated" (another architecture, whose
    cross compiler and qemu-user are installed, or a target whose `emulation` build this CPU
    runs); "compile-only"; or "unavailable" (another architecture without a cross compiler:
    nothing can be built for it)."""
    if can_execute(target):
        return "native"
    if target.emulation and runs_emulated(target):
        return "emulated"
    if target.arch not in ("any", host_arch()):
        if not cross_compiler(target):
            return "unavailable"
        if emulator(target):
            return "emulated"
    return "compile-only"


def runs_emulated(target: Target, features: frozenset[str] | None = None) -> bool:
    """Whether the target's emulation build (an emulation header, not qemu) is how it runs on
    this host (or one with `features`): such a build is loaded and run like a native one."""
    have = host_features() if features is None else features
    return (target.emulation is not None and not can_execute(target, have)
            and target.arch == host_arch()
            and all(f in have for f in target.emulation.features))


def cross_compiler(target: Target) -> str | None:
    """The C compiler for a target of another architecture, if installed."""
    return shutil.which(f"{target.cross_triplet}-gcc") if target.cross_triplet else None


def emulator(target: Target) -> str | None:
    return shutil.which(target.emulator) if target.emulator else None


def sysroot(target: Target) -> Path:
    """Where Debian's cross toolchain keeps the target's libc (qemu-user's -L)."""
    return Path("/usr") / target.cross_triplet


def resolve(name: str) -> Target:
    """The Target for a name; `native` is the shiniest target this host can execute."""
    if name == "native":
        runnable = [t for t in TARGETS.values() if can_execute(t)]
        return runnable[-1]
    if name not in TARGETS:
        raise UnsupportedTargetError(f"unknown target {name!r}; choose one of: native, "
                                     + ", ".join(TARGETS) + " (see `sparsec targets`)")
    return TARGETS[name]
