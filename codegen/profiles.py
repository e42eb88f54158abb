"""Host profiles: kernel costs measured on this machine by `sparsec calibrate`.

The kernel table's costs were measured on the project's development machines; another CPU
class (an AVX2-only Zen 2 against an AVX-512 Zen 5) ranks the same kernels differently. A
profile holds, per weight dtype and pattern, the measured ns per activation row and unit of
work (weight element for dense, nonzero block for block patterns) of the row the target uses.
`compile` applies it in place of the table's numbers when the target runs natively here and
the profile was measured on a CPU with the same signature (model name and feature flags);
anything else (another CPU, a damaged file, another target) keeps the table's costs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from pathlib import Path

from sparsec.codegen import targets
from sparsec.codegen.targets import Target

VERSION = 1
WEIGHT_DTYPES = ("float32", "int8", "bfloat16")

Measured = dict[tuple[str, str], float]
"""(weight dtype, pattern) -> ns per activation row and unit of work."""


class ProfileWarning(UserWarning):
    """A host profile exists but cannot be used (damaged, or from another sparsec)."""


def directory() -> Path:
    """$SPARSEC_PROFILE_DIR, else the user's cache: profiles are measurements, remade at will."""
    if os.environ.get("SPARSEC_PROFILE_DIR"):
        return Path(os.environ["SPARSEC_PROFILE_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "sparsec" / "profiles"


def cpu_signature() -> str:
    """The CPU model's name and its feature flags, hashed: a profile is only as good as the
    core it was measured on."""
    name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "CPU part")):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = name + "|" + " ".join(sorted(targets.host_features()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def path_for(target: Target) -> Path:
    return directory() / f"{target.name}-{cpu_signature()}.json"


def save(target: Target, measured: Measured) -> Path:
    path = path_for(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    costs: dict[str, dict[str, float]] = {}
    for (dtype, pattern), ns in sorted(measured.items()):
        costs.setdefault(dtype, {})[pattern] = ns
    document = {"version": VERSION, "target": target.name, "cpu": cpu_signature(),
                "costs": costs}
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(document, indent=1) + "\n")
    temporary.replace(path)
    return path


def load(target: Target) -> tuple[Measured, Path | None]:
    """The measured costs that apply to `target` on this host, and the profile they came from
    (({}, None) when none applies)."""
    if not targets.can_execute(target):
        return {}, None
    path = path_for(target)
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return {}, None
    except (OSError, ValueError) as error:
        warnings.warn(f"host profile {path} is unreadable ({error}); using the kernel table's "
                      "costs: run `sparsec calibrate` again", ProfileWarning, stacklevel=2)
        return {}, None
    measured = _parse(document, target)
    if measured is None:
        warnings.warn(f"host profile {path} is not one this sparsec can use; using the kernel "
                      "table's costs: run `sparsec calibrate` again", ProfileWarning,
                      stacklevel=2)
        return {}, None
    return measured, path


def _parse(document, target: Target) -> Measured | None:
    if not isinstance(document, dict) or document.get("version") != VERSION \
            or document.get("target") != target.name or document.get("cpu") != cpu_signature() \
            or not isinstance(document.get("costs"), dict):
        return None
    measured: Measured = {}
    for dtype, patterns in document["costs"].items():
        if dtype not in WEIGHT_DTYPES or not isinstance(patterns, dict):
            return None
        for pattern, ns in patterns.items():
            if not isinstance(ns, (int, float)) or isinstance(ns, bool) \
                    or not math.isfinite(ns) or ns <= 0:
                return None
            measured[(dtype, str(pattern))] = float(ns)
    return measured
