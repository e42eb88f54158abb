"""A mutation check: plant one known bug at a time in the compiler, its templates or its
runtime, run the tests that own that code, and report whether they caught it.

It shows that a change to the test suite (faster fixtures, batched builds, tests moved) lost no
coverage: run it before and after, and every mutant must still be killed.

    python tests/mutation_check.py            # every mutant
    python tests/mutation_check.py pool tile  # those whose names contain these words

Each mutant is applied to the working tree and always restored; the script refuses to start on a
tree with uncommitted changes to the files it mutates. Not collected by pytest (no test_ prefix):
it runs pytest itself, once per mutant.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # relative to the repository root
    old: str  # must occur exactly once
    new: str
    tests: tuple[str, ...]  # pytest arguments: the tests that own the code
    bug: str


MUTANTS = (
    Mutant("pool-start-at-minus-infinity", "codegen/pool_params.py",
           "    return c_literal(info.min, dtype)",
           '    return "(-INFINITY)" if dtype.startswith("float") else c_literal(info.min, dtype)',
           ("tests/codegen/test_pool_ops.py",),
           "max pools start from -inf, not onnxruntime's -FLT_MAX"),
    Mutant("token-tiles-drop-partial-sums", "templates/f32-spmm/x86-tokens.c.j2",
           "        even[v] = c ? {{ isa.load }}(yt + n * {{ T }} + v * {{ L }})"
           " : {{ isa.zero }}();",
           "        even[v] = {{ isa.zero }}();",
           ("tests/codegen/test_spmm_kernels.py",),
           "each K chunk of a token-tile kernel forgets the chunks before it"),
    Mutant("direct-store-first-tile", "templates/f32-spmm/x86-tokens.c.j2",
           "        const size_t m0 = args->m0{% if grouped %} + g * {{ T }}{% endif %};\n",
           "        const size_t m0 = 0;\n",
           ("tests/codegen/test_layouts.py", "tests/codegen/test_conv.py"),
           "a one-chunk token-tile kernel stores every tile's columns over the first tile's"),
    Mutant("tile-major-panel-index", "templates/parallel.j2",
           '{% set panel_arg = ", task % " ~ panels %}',
           '{% set panel_arg = ", task / " ~ panels %}',
           ("tests/codegen/test_conv.py", "tests/codegen/test_spmm_kernels.py"),
           "a tile-major panel GEMM task computes the wrong panel"),
    Mutant("attention-ignores-mask", "templates/f32-attention/vector.c.j2",
           "          t += {{ fn }}_load(mask + row[r0 + r] * {{ mask_sm }} + j0 + c * {{ VL }});",
           "          (void)mask;",
           ("tests/codegen/test_attention.py",),
           "fused attention skips the additive mask"),
    Mutant("gelu-wrong-piece", "runtime_c/sparsec_vmath_body.h",
           "  const VI piece = SPARSEC_VM(to_int)(a * 2.0f);",
           "  const VI piece = SPARSEC_VM(to_int)(a * 1.75f);",
           ("tests/runtime_c/test_vmath.py", "tests/runtime_c/test_softmax.py"),
           "GELU's erfc table is indexed off by a fraction of a piece"),
    Mutant("cache-skips-digest", "codegen/cache_files.py",
           "                if h.hexdigest().encode() != head[len(CACHE_MAGIC):-1]:",
           "                if False:",
           ("tests/codegen/test_build.py",),
           "a corrupt build cache entry is used instead of rebuilt"),
    Mutant("channels-first-gemm-tail-overrun", "templates/f32-gemm/x86-tokens.c.j2",
           "      if ((j + 1) * {{ L }} <= mt) {",
           "      if ((j + 1) * {{ L }} <= mt + 1) {",
           ("tests/codegen/test_conv.py",),
           "the dense channels-first GEMM stores a whole vector one token past the last tile"),
    Mutant("channels-first-gemm-split-drops-block", "templates/f32-gemm/x86-tokens.c.j2",
           "    b1 = (group + 1) * {{ NB }} / args->groups;",
           "    b1 = (group + 1) * {{ NB }} / args->groups - (group == 0);",
           ("tests/codegen/test_conv.py",),
           "a task of a tile split between threads skips its first channel block"),
    Mutant("channels-first-gemm-tail-drops-k-remainder", "templates/f32-gemm/x86-tokens.c.j2",
           "      acc[t][0] = {{ isa.fmadd }}(wk, {{ isa.broadcast.format(\"xt + k * \" ~ T ~ "
           "\" + t\") }}, acc[t][0]);",
           "      acc[t][0] = acc[t][0];",
           ("tests/codegen/test_conv.py",),
           "the channel-lane tail of a last tile's 1-2 tokens skips the K % 4 steps past its "
           "4-way sums"),
    Mutant("channels-first-gemm-tail-skips-residual", "templates/f32-gemm/x86-tokens.c.j2",
           "      float v = lanes[r];\n{{ scalar_epilogue.finish(\"y[n * \" ~ M ~ \" + m]\", "
           "\"residual[n * \" ~ M ~ \" + m]\" if residual else \"\") }}\n    }\n  }\n}",
           "      float v = lanes[r];\n{{ scalar_epilogue.finish(\"y[n * \" ~ M ~ \" + m]\", "
           "\"\") }}\n    }\n  }\n}",
           ("tests/codegen/test_conv.py",),
           "the channel-lane tail stores without adding the residual"),
    Mutant("channel-walk-drops-earlier-chunks", "templates/f32-gemm/x86-tokens.c.j2",
           "  if (!first)\n#pragma GCC unroll {{ NR }}",
           "  if (0)\n#pragma GCC unroll {{ NR }}",
           ("tests/codegen/test_conv.py::test_dense_convs_on_small_maps_walk_channel_blocks",),
           "a channel block walked in K chunks starts each chunk's sums at 0, dropping the "
           "chunks before"),
    Mutant("tile-chunks-keep-sums-in-packed-tile", "templates/f32-gemm/x86-tokens.c.j2",
           "{% set SUMS_AT = TILES * K * T if walk_channels else SLOTS * KC * T %}",
           "{% set SUMS_AT = TILES * K * T if walk_channels else 0 %}",
           ("tests/codegen/test_conv.py::test_dense_convs_walk_each_tile_in_k_chunks",),
           "walked tile by tile in K chunks, the partial tile's sums overwrite the first "
           "task's packed chunk"),
    Mutant("tile-chunks-restart-sums", "templates/f32-gemm/x86-tokens.c.j2",
           "      const int first_chunk = k0 == 0, last_chunk = k0 + kc == {{ K }};",
           "      const int first_chunk = 1, last_chunk = k0 + kc == {{ K }};",
           ("tests/codegen/test_conv.py::test_dense_convs_walk_each_tile_in_k_chunks",),
           "walked tile by tile in K chunks, each chunk starts its sums at 0"),
    Mutant("fused-pack-drops-tap-masks", "templates/f32-gemm/x86-tokens.c.j2",
           "        lanes[j] = {{ isa.mask_bits.format(bits=\"tile_masks[tap * \" ~ V ~ "
           "\" + j]\") }};",
           "        lanes[j] = {{ isa.mask_bits.format(bits=\"0xffff\") }};",
           ("tests/codegen/test_conv.py",),
           "a whole tile's first channel block, packing a conv's patches as it multiplies, "
           "reads the padding's lanes from the neighbouring rows"),
    Mutant("fused-pack-leaves-rows-unpacked", "templates/f32-gemm/x86-tokens.c.j2",
           "        x[j] = {{ isa.loadu }}(row + j * {{ L }});\n"
           "        {{ isa.store }}(fill + k * {{ T }} + j * {{ L }}, x[j]);",
           "        x[j] = {{ isa.loadu }}(row + j * {{ L }});",
           ("tests/codegen/test_conv.py",),
           "a 1x1 conv's first channel block multiplies a whole tile's rows without packing "
           "them for the blocks after"),
    Mutant("tail-tile-drops-last-vector", "templates/f32-spmm/x86-tokens.c.j2",
           "{% set TAIL_V = ((M % T) + L - 1) // L %}",
           "{% set TAIL_V = (M % T) // L if M % T >= L else 1 %}",
           ("tests/codegen/test_conv.py::test_random_convs_match_onnxruntime",),
           "a last tile short of a tile computes only its whole vectors, dropping the tokens "
           "of a partial one"),
    Mutant("copied-patches-lose-their-masks", "templates/f32-spmm/x86-tokens.c.j2",
           '        {{ isa.store }}(copy + k * {{ T }} + v * {{ L }}, '
           '{{ isa.maskz_loadu.format(mask="lanes[v]", '
           'ptr="rows + k * " ~ a_sk ~ " + v * " ~ L) }});',
           '        {{ isa.store }}(copy + k * {{ T }} + v * {{ L }}, '
           '{{ isa.loadu }}(rows + k * {{ a_sk }} + v * {{ L }}));',
           ("tests/codegen/test_conv.py::test_stride_1_convs_read_their_patches_in_place",),
           "a chunk's patch rows are copied without their masks, so the padding reads X's "
           "neighbouring pixels"),
    Mutant("tile-group-stores-first-tile", "templates/f32-spmm/x86-tokens.c.j2",
           "        const size_t m0 = args->m0{% if grouped %} + g * {{ T }}{% endif %};",
           "        const size_t m0 = args->m0;",
           ("tests/codegen/test_conv.py::test_pointwise_convs_walk_groups_of_tiles",),
           "every tile of a group stores to the group's first tile"),
    Mutant("tile-group-task-drops-partial-tile", "templates/f32-spmm/x86-tokens.c.j2",
           "  if (t1 > full) {",
           "  if (0) {",
           ("tests/codegen/test_conv.py::test_pointwise_convs_walk_groups_of_tiles",),
           "the parallel groups never compute the partial last tile"),
    Mutant("phases-ignore-phase", "codegen/spmm_params.py",
           "    phase = reach_y % sh * sw + reach_x % sw",
           "    phase = reach_y % sh * 0",
           ("tests/codegen/test_conv.py::test_stride_1_convs_read_their_patches_in_place",),
           "a strided conv's taps all read the first phase of X"),
    Mutant("layouts-ignore-trans-a", "compiler/passes/choose_layouts.py",
           '                and not user.attrs.get("trans_a", 0)\n',
           "",
           ("tests/compiler/passes/test_choose_layouts.py", "tests/codegen/test_layouts.py"),
           "a Dense with trans_a is handed a feature-major A"),
)


def run(mutant: Mutant) -> tuple[bool, float]:
    """(killed, seconds): the owning tests fail with the mutant in place."""
    path = ROOT / mutant.path
    original = path.read_text()
    if original.count(mutant.old) != 1:
        raise SystemExit(f"{mutant.name}: its text is not found once in {mutant.path}; "
                         "update the mutant")
    start = time.monotonic()
    try:
        path.write_text(original.replace(mutant.old, mutant.new))
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-n", "2",
                                 "-p", "no:cacheprovider", *mutant.tests], cwd=ROOT,
                                capture_output=True, text=True)
    finally:
        path.write_text(original)
    return result.returncode != 0, time.monotonic() - start


def main(words: list[str]) -> int:
    chosen = [m for m in MUTANTS if not words or any(w in m.name for w in words)]
    dirty = subprocess.run(["git", "status", "--porcelain", "--", *{m.path for m in chosen}],
                           cwd=ROOT, capture_output=True, text=True).stdout
    if dirty.strip():
        raise SystemExit(f"uncommitted changes in files this would mutate:\n{dirty}")
    survivors = 0
    print("| mutant | bug | tests | caught | seconds |\n|---|---|---|---|---|")
    for mutant in chosen:
        killed, seconds = run(mutant)
        survivors += not killed
        print(f"| {mutant.name} | {mutant.bug} | {' '.join(mutant.tests)} | "
              f"{'yes' if killed else 'NO'} | {seconds:.0f} |", flush=True)
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
