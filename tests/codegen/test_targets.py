import pytest

from sparsec.codegen import kernels, targets
from sparsec.compiler.ops import DENSE, RUNTIME_OPS
from sparsec.errors import UnsupportedTargetError


def test_native_is_runnable_here():
    assert targets.can_execute(targets.resolve("native"))


def test_unknown_target_lists_choices():
    with pytest.raises(UnsupportedTargetError, match="generic, x86-avx2, x86-avxvnni, x86-avx512"):
        targets.resolve("riscv")


def test_feature_check_uses_given_features():
    avx512 = targets.TARGETS["x86-avx512"]
    if targets.host_arch() == "x86_64":
        assert not targets.can_execute(avx512, frozenset({"avx2", "fma"}))
    assert targets.can_execute(targets.TARGETS["generic"], frozenset())


def test_feature_bits_match_the_runtime():
    from sparsec.codegen.build import runtime_dir

    header = (runtime_dir() / "sparsec_model.h").read_text()
    names = header.split("#define SPARSEC_FEATURE_NAMES")[1].split("}")[0]
    listed = [n.strip().strip('"') for n in names.split("{")[1].split(",")]
    assert listed == sorted(targets.FEATURE_BITS, key=targets.FEATURE_BITS.get)


def test_every_runtime_op_has_a_portable_kernel():
    ops = {k.op for k in kernels.KERNELS if k.isa == "scalar"}
    assert (RUNTIME_OPS - {"Gemm"}) | {DENSE} <= ops, "Gemm always becomes Dense in fuse"


def test_kernel_symbols_follow_the_naming_grammar():
    for k in kernels.KERNELS:
        assert k.symbol.startswith(f"sparsec_{k.family}_ukernel_{k.mr}x{k.nr}")
        assert k.symbol.endswith(f"__{k.isa}")


def test_kernel_symbols_are_unique():
    symbols = [k.symbol for k in kernels.KERNELS]
    assert len(symbols) == len(set(symbols))


@pytest.mark.skipif(targets.host_arch() != "x86_64", reason="x86 feature sets")
def test_amx_runs_emulated_on_avx512_and_natively_with_amx():
    amx = targets.TARGETS["x86-amx"]
    avx512 = frozenset(targets.AVX512_FEATURES) | {"avx512vbmi2"}  # Ice Lake, Zen 4
    assert targets.runs_emulated(amx, avx512)
    # the BITMASK kernels' expand-loads run for real in the emulated build too
    assert not targets.runs_emulated(amx, avx512 - {"avx512vbmi2"})
    with_amx = avx512 | {"amx_tile", "amx_int8", "amx_bf16"}
    assert targets.can_execute(amx, with_amx) and not targets.runs_emulated(amx, with_amx)
    assert not targets.runs_emulated(amx, frozenset({"avx2", "fma"}))  # compile-only there
    assert not targets.runs_emulated(targets.TARGETS["x86-avx512"], avx512)  # no emulation
