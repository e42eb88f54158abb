"""The x86-amx target: its kernels' instructions per tile, and their speed where AMX exists.

    python benchmarks/amx.py

1. Instructions per tile product, read from the real build's assembly (objdump), for each AMX
   row of the kernel table: the loop over one panel's tiles of a 768 x 768 layer, in which
   every trip loads an A tile of weight codes and two B tiles of activation codes and issues
   two TDPBSUD (16 channels x 32 tokens x 64 products). For a 4x16 weight, a trip whose
   groups are not consecutive first copies 16 activation rows into staging; for a BITMASK
   weight, every trip first expands its A tile from the nonzeros (16 VPEXPANDB or VPEXPANDW).
   With them, the weight bytes each pass over the layer reads (once per 32 tokens), which
   BITMASK trades the expansion for. Written to benchmarks/results/amx-instructions.md.
2. Timing: on a CPU with AMX (`sparsec targets` says x86-amx runs here), the int8 benchmark of
   benchmarks/spmm.py on target x86-amx, against onnxruntime's MatMulInteger and dynamic
   quantization in the same run. Elsewhere it says why it cannot: the emulated build
   (`--emulate`) times scalar C, not AMX.
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
from sparsec.codegen import targets
from sparsec.codegen.kernels import KERNELS
from sparsec.compiler.patterns import BITMASK

PRODUCTS = ("tdpbsud", "tdpbf16ps")  # the int8 and bf16 rows' tile products
LINE = re.compile(r"^\s*([0-9a-f]+):\s+(?:[0-9a-f]{2} )+\s*(\S+)\s*(.*)$")
K = N = 768
M = 128


def tile_loop(code: list[tuple[int, str, str]]) -> list[tuple[int, str, str]]:
    """The loop whose body holds the TDPBSUD: from the backward branch's target to the branch
    (the staging copy, where there is one, is a loop nested inside it)."""
    dot = next(address for address, mnemonic, _ in code if mnemonic in PRODUCTS)
    loops = []
    for address, mnemonic, operands in code:
        target = re.search(r"\b([0-9a-f]+) <", operands)
        if mnemonic.startswith("j") and target and int(target.group(1), 16) <= address:
            loops.append((int(target.group(1), 16), address))
    start, end = min(((s, e) for s, e in loops if s <= dot <= e), key=lambda r: r[1] - r[0])
    return [i for i in code if start <= i[0] <= end]


def copy_path(code: list[tuple[int, str, str]], loop: list) -> list[tuple[int, str, str]]:
    """The B-tile copy for non-consecutive blocks: GCC places it after the tile loop, entered
    when the loop's last test falls through, and jumping back into the loop when done."""
    start, end = loop[0][0], loop[-1][0]
    path = []
    for address, mnemonic, operands in code:
        if address <= end:
            continue
        path.append((address, mnemonic, operands))
        target = re.search(r"\b([0-9a-f]+) <", operands)
        if mnemonic == "jmp" and target and start <= int(target.group(1), 16) <= end:
            return path
    return []


def weight_bytes(result, pattern: str, value_bytes: int) -> float:
    """What one pass over the layer's weights reads: values (and BITMASK's bit a weight)."""
    counts = result.info["layers"][0]["blocks"]
    if pattern == "dense":
        return K * N * value_bytes
    if pattern == BITMASK:  # its count is of nonzero weights
        return counts[BITMASK]["nonzero_blocks"] * value_bytes + K * N / 8
    rows, cols = (int(d) for d in pattern.split("x"))
    return counts[pattern]["nonzero_blocks"] * rows * cols * value_bytes


def instruction_rows(workdir: Path) -> list[list]:
    rows = []
    for row in (k for k in KERNELS if k.isa == "amx"):
        bf16 = row.weight_dtype == "bfloat16"
        result = sparsec.compile_model(one_layer("4x16", K, N, M, density=0.2), "x86-amx",
                                       workdir / f"{row.symbol}.so",
                                       quantize="bf16" if bf16 else "dynamic",
                                       force_pattern=row.pattern, use_cache=False)
        disassembly = subprocess.run(["objdump", "-d", "-w", str(result.library)],
                                     capture_output=True, text=True, check=True).stdout
        (code,) = [c for name, c in functions(disassembly, LINE).items()
                   if f"{row.symbol}__node" in name and name.endswith("_columns")]
        loop = tile_loop(code)
        copy = copy_path(code, loop) if row.pattern != "dense" else []
        zmm_moves = sum(m.startswith("vmov") and "zmm" in o for _, m, o in copy)
        unit = "2x16" if bf16 else "4x16"
        blocks = result.info["layers"][0]["blocks"][unit]["nonzero_blocks"]
        if row.pattern == "dense":
            blocks = K // (2 if bf16 else 4) * N // 16
        if row.pattern == BITMASK:
            blocks = K // (2 if bf16 else 4) * N // 16
        kib = weight_bytes(result, row.pattern, 2 if bf16 else 1) / 1024
        rows.append([row.symbol, row.pattern, str(len(loop)),
                     str(sum(m == "tileloadd" for _, m, _ in loop)),
                     str(sum(m in PRODUCTS for _, m, _ in loop)),
                     str(sum(m.startswith("vpexpand") for _, m, _ in loop)),
                     f"{len(copy)} ({zmm_moves} zmm loads/stores)" if copy else "-",
                     f"{blocks} {unit}", f"{kib:.0f}"])
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    amx = targets.TARGETS["x86-amx"]
    if targets.host_arch() != "x86_64":
        raise SystemExit("AMX is x86-64 only; this host is " + targets.host_arch())
    if not shutil.which("objdump"):
        raise SystemExit("objdump is missing: apt-get install binutils")
    with tempfile.TemporaryDirectory() as tmp:
        rows = instruction_rows(Path(tmp))
    path = write_table(
        "amx-instructions", "x86-amx kernels: instructions per A tile",
        ["kernel", "weights", "instructions a trip", "TILELOADD", "TDPBSUD / TDPBF16PS",
         "VPEXPAND", "B-tile copy (when blocks are not consecutive)", "blocks walked",
         "KiB of weights a pass"], rows,
        f"From objdump of the real x86-amx build (not the emulation) of a {M}x{K}x{N} layer "
        "pruned 80 % in 4x16 blocks, in int8 and in bf16. One loop trip is one A tile's "
        "products: 16 output channels x 32 tokens (two C tiles) x 64 int8 products (16 4x16 "
        "blocks) or 32 bf16 ones (16 2x16 blocks). The dense rows walk every block; the 4x16 "
        "and 2x16 rows skip all-zero blocks and copy a tile's 16 activation rows (128 bytes "
        "each) into staging when its blocks are not consecutive; the bitmask rows walk every "
        "block too, each trip expanding its A tile from the nonzeros first (16 expand-loads, "
        "unrolled). A "
        "pass over the weights is made once per 32 tokens: its bytes are what the cost model "
        "streams (codegen/kernels.py SAPPHIRE_RAPIDS_STREAM).")
    print(f"wrote {path}")
    if not targets.can_execute(amx):
        missing = [f for f in amx.features if f not in targets.host_features()]
        print(f"no timing: this CPU lacks {', '.join(missing)}. The emulated build "
              "(sparsec compile --target x86-amx --emulate) runs the tile instructions as "
              "scalar C, so its time says nothing about AMX; run this on Sapphire Rapids or "
              "later.")
        return
    spmm = Path(__file__).resolve().parent / "spmm.py"
    subprocess.run([sys.executable, str(spmm), "--dtype", "int8", "--target", "x86-amx"],
                   check=True)


if __name__ == "__main__":
    main()
