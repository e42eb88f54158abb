"""Instructions per nonzero weight in the ARM kernels' inner loops, from their assembly.

    python benchmarks/arm_instructions.py

qemu timings mean nothing, so this reads the code instead: for each NEON row of the kernel
table it compiles a one-layer model for arm-neon, disassembles the library with
aarch64-linux-gnu-objdump, finds the kernel's innermost loop that holds FMAs (the walk over
one column's blocks), and counts its instructions per nonzero weight (a block of R weights
is one trip). XNNPACK's NEON SpMM inner loop is the reference: per nonzero one broadcast of
the weight, one load and one FMA per vector of tokens. Writes
benchmarks/results/arm-instructions.md.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import functions, one_layer, write_table

import sparsec
from sparsec.codegen.kernels import KERNELS
from sparsec.compiler.ops import DENSE
from sparsec.compiler.patterns import Pattern

OBJDUMP = "aarch64-linux-gnu-objdump"
LINE = re.compile(r"^\s*([0-9a-f]+):\s+[0-9a-f]{8}\s+(\S+)\s*(.*)$")


# The multiplies a kernel's inner loop is built around: FMLA (fp32), SDOT (int8 with the dot
# product) and SMULL/SMULL2 (int8 without it).
MULTIPLIES = ("fmla", "sdot", "smull")


def innermost_fma_loop(code: list[tuple[int, str, str]]) -> list[tuple[int, str, str]]:
    """Of the innermost loops (no backward branch inside) holding FMAs (fp32) or dot products
    (int8), the one with the most: the full register tile's version, not a tail's."""
    loops = []
    for address, mnemonic, operands in code:
        target = re.search(r"\b([0-9a-f]+) <", operands)
        if mnemonic.startswith("b") and mnemonic != "bl" and target \
                and int(target.group(1), 16) <= address:
            loops.append((int(target.group(1), 16), address))
    innermost = [(start, end) for start, end in loops
                 if not any(start <= s and e <= end and (s, e) != (start, end)
                            for s, e in loops)]
    best, most = [], 0
    for start, end in innermost:
        body = [i for i in code if start <= i[0] <= end]
        fmas = sum(m.startswith(MULTIPLIES) for _, m, _ in body)
        if fmas > most:
            best, most = body, fmas
    return best


def main() -> None:
    if not shutil.which(OBJDUMP):
        raise SystemExit(f"{OBJDUMP} is missing: apt-get install binutils-aarch64-linux-gnu")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for row in (k for k in KERNELS if k.op == DENSE and k.isa in ("neon", "neondot")
                    and k.pattern != "dense"):
            int8 = row.weight_dtype == "int8"
            result = sparsec.compile_model(one_layer(row.pattern),
                                           "arm-neon-dotprod" if row.isa == "neondot"
                                           else "arm-neon",
                                           Path(tmp) / f"{row.pattern}-{row.isa}.so",
                                           force_pattern=row.pattern, use_cache=False,
                                           quantize="dynamic" if int8 else None)
            disassembly = subprocess.run([OBJDUMP, "-d", "-w", str(result.library)],
                                         capture_output=True, text=True, check=True).stdout
            # The kernel's own functions (a dispatched SDOT twin shares the symbol's prefix);
            # the loop is in the one whose inner loop multiplies most, not the range pass.
            loop = max((innermost_fma_loop(code) for name, code in
                        functions(disassembly, LINE).items()
                        if f"{row.symbol}__node" in name and name.endswith(("_columns", "_task"))),
                       key=lambda body: sum(m.startswith(MULTIPLIES) for _, m, _ in body))
            # Normalised to a nonzero weight and 16 tokens (XNNPACK's ideal: 1 broadcast +
            # 4 x (load + FMA) = 9). A trip may cover several blocks (the int8 kernel takes
            # two groups a trip): the FMA/SDOT count says how many. Without SDOT, one SDOT's
            # work takes two widening multiplies (SMULL, SMULL2).
            rows_, cols_ = Pattern(row.pattern).block
            fmas = sum(0.5 if m.startswith("smull") else 1 if m.startswith(MULTIPLIES)
                       else 0 for _, m, _ in loop)
            per_block = (row.mr // 4 if int8 else
                         rows_ * row.mr // 4 if row.nr == 1 else row.mr * cols_ // 4)
            weights = fmas / per_block * rows_ * cols_ * row.mr / 16
            count = {"fmla": 0, "ld": 0, "other": 0}
            for _, mnemonic, _ in loop:
                key = "fmla" if mnemonic.startswith(MULTIPLIES) else \
                    "ld" if mnemonic.startswith("ld") else "other"
                count[key] += 1
            rows.append([row.symbol, row.pattern, str(row.mr), str(len(loop)),
                         f"{len(loop) / weights:.2f}", f"{count['fmla'] / weights:.2f}",
                         f"{count['ld'] / weights:.2f}", f"{count['other'] / weights:.2f}",
                         "9"])
            print(rows[-1], flush=True)
    path = write_table(
        "arm-instructions", "NEON kernels: instructions per nonzero weight in the inner loop",
        ["kernel", "pattern", "tokens a trip", "loop instructions", "per nonzero and 16 tokens",
         "FMA / SDOT / SMULL", "loads", "other", "XNNPACK-style ideal (fp32)"], rows,
        "From aarch64-linux-gnu-objdump of libraries built here. A loop trip is one block for "
        "the trip's tokens; counts are per nonzero weight and 16 tokens, where XNNPACK's loop "
        "spends one broadcast plus a load and an FMA per 4-token vector: 9. The int8 rows "
        "(qs8, SDOT) do 4 weights of a 4x1 group per instruction, so a quarter of that; "
        "without SDOT (neon int8) two SMULLs, an ADDP and a SADALP do one SDOT's work.")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
