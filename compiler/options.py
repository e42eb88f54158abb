"""CompileOptions: every choice a user makes about one compile, in one typed, frozen record.

`sparsec.compile`, the CLI and the passes read the same object, so an option is added in one
place (here), parsed in one place (`from_keywords`) and never threaded by hand. What the target's
kernels cost and can do is not an option: that travels in the pass context.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sparsec.compiler import limits
from sparsec.compiler.patterns import Pattern
from sparsec.errors import SparsecError

QUANTIZE_MODES = ("dynamic", "bf16")
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")  # --name: a C identifier
# The precisions the CLI's --dtype and compile()'s dtype= name, as the quantize modes they are.
DTYPES = {"float32": None, "int8": "dynamic", "bf16": "bf16"}


@dataclass(frozen=True)
class CompileOptions:
    # Model shape: dynamic dimensions pinned, one of them possibly a list of bucket lengths.
    input_shapes: Mapping[str, tuple] | None = None
    # Weights: "dense" or a pattern for every weight instead of the cost model's choice.
    force_pattern: Pattern | None = None
    # "dynamic": int8 weights, activations quantized at run time; "bf16": bf16 products
    # summed in fp32; None: the model's own precision.
    quantize: str | None = None
    # With quantize: a layer whose lowered kernel the cost model predicts slower than its
    # float32 one keeps float32 (True), or every layer is lowered (False).
    mixed_precision: bool = True
    reorder: bool = True  # reorder_blocks may permute channels between Dense layers
    # The library's API and header under this C prefix instead of sparsec_ (--name), so that
    # several models link into one program.
    name: str | None = None
    # "shared": a shared library (.so); "static": a static archive (.a) for linking into a
    # program, every symbol but the API local.
    emit: str = "shared"
    layouts: bool = True  # choose_layouts may hand activations over feature-major
    # Bytes the compiled model (weights and arena) and any folded constant may take.
    max_memory: int = limits.DEFAULT_MAX_MEMORY
    # Code generation and build.
    parallel_min_ns: float | None = None  # None: the kernel table's default
    profile: bool = False  # time every layer (Module.profile()), about 50 ns a layer
    emulate: bool = False  # build the target's newest instructions as scalar C
    host_profile: bool = True  # choose kernels by `sparsec calibrate`'s costs where present
    extra_cflags: tuple[str, ...] = ()
    cache_dir: Path | None = None
    use_cache: bool = True
    # Diagnostics.
    verify_each: bool = False  # check the IR's invariants after every pass
    dump_ir: Path | None = None  # write the IR after every pass into this folder
    keep_source: Path | None = None  # also write model.c, any unit-N.c, weights.bin here

    def __post_init__(self) -> None:
        if self.quantize is not None and self.quantize not in QUANTIZE_MODES:
            raise SparsecError(f"unknown quantization {self.quantize!r}; choose one of: "
                               + ", ".join(QUANTIZE_MODES))
        if self.name is not None and (not NAME.fullmatch(self.name)
                                      or self.name.lower() == "sparsec"):
            raise SparsecError(f"name {self.name!r}: a model's name prefixes its C symbols, so "
                               "it must be a C identifier (letters, digits and _, not starting "
                               "with a digit, at most 64 characters) other than sparsec")
        if self.force_pattern is not None:
            try:  # a str from the CLI or compile(): which pattern it names is checked here
                object.__setattr__(self, "force_pattern", Pattern(self.force_pattern))
            except ValueError as error:
                raise SparsecError(str(error)) from None
        if self.emit not in ("shared", "static"):
            raise SparsecError(f"emit={self.emit!r}; choose shared or static")
        if not isinstance(self.max_memory, int) or self.max_memory <= 0:
            raise SparsecError(f"max_memory={self.max_memory!r}: expected a positive number of "
                               "bytes")

    @classmethod
    def from_keywords(cls, **keywords) -> CompileOptions:
        """The options from `compile()`'s keyword arguments, in the forms users write them:
        max_memory as "8G", paths as strings, dtype="int8" or "bf16" (the CLI's --dtype) for
        quantize; an unknown keyword is an error naming the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        if "dtype" in keywords:
            dtype = keywords.pop("dtype")
            if dtype not in DTYPES:
                raise SparsecError(f"dtype={dtype!r}; choose one of: {', '.join(DTYPES)}")
            if keywords.get("quantize") not in (None, DTYPES[dtype]):
                raise SparsecError(f"dtype={dtype!r} and quantize={keywords['quantize']!r} "
                                   "disagree; give one of them")
            keywords["quantize"] = DTYPES[dtype]
        unknown = sorted(set(keywords) - known)
        if unknown:
            raise SparsecError(f"unknown compile option(s) {', '.join(unknown)}; known: "
                               f"{', '.join(sorted(known))}")
        max_memory = keywords.get("max_memory")
        if max_memory is None:
            keywords["max_memory"] = limits.DEFAULT_MAX_MEMORY
        elif not (isinstance(max_memory, int) and max_memory > 0):
            keywords["max_memory"] = limits.parse_size(max_memory)
        for name in ("cache_dir", "dump_ir", "keep_source"):
            if keywords.get(name):
                keywords[name] = Path(os.fspath(keywords[name]))
            else:
                keywords.pop(name, None)
        keywords["extra_cflags"] = tuple(keywords.get("extra_cflags", ()))
        return cls(**keywords)
