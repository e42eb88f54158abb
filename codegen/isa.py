"""The vector ISAs' names that the token-tile and column templates print, one record each.

An `Isa` is what a template receives as `isa` (through `template_names`): its vector width
in floats, the float intrinsics, and, for the int8 and bf16 kernels, the integer-vector and
product names. Each kernel family keys its records by the kernel table's ISA token: fp32
(`TOKEN_TILE_ISAS`), int8 (`VNNI_ISAS`) and bf16 (`BF16_ISAS`), each built from the same
per-width records, so no intrinsic is spelled twice.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class FloatVectors:
    """fp32 vectors: `broadcast` formats a pointer expression into a vector of its value;
    `mask_type` and `full_mask` are the epilogue's column-tail mask; `vmath` prefixes the
    ISA's functions in runtime_c/sparsec_vmath.h; `epilogue` is the vector epilogue
    template."""
    lanes: int
    vmath: str
    vec: str
    zero: str
    broadcast: str
    load: str
    store: str
    fmadd: str
    add: str
    transpose: str  # its square transpose: lanes x lanes floats
    epilogue: str
    mask_type: str
    full_mask: str
    set1: str
    mul: str
    max: str
    min: str
    loadu: str
    storeu: str
    registers: int  # vector registers the ISA has
    # Masked loads that read no byte of a masked-off lane (so fault on none): `mask_bits`
    # formats {bits} (one per lane, in an integer) into a mask_type; `maskz_loadu` formats
    # {mask} and {ptr}, zero in masked-off lanes. NEON has none.
    mask_bits: str = ""
    maskz_loadu: str = ""
    # Four (two) consecutive floats broadcast from one load: `quad_load` (`pair_load`)
    # formats {} (a pointer) into a vector holding them in every 128-bit lane (every pair of
    # lanes), `quad_splat` formats {vec} and {i} into a vector of element i (an in-lane
    # permute). A 4x1 block's weights then take one load instead of four, and a pair of single
    # weights one instead of two: on a Zen 3 (two 256-bit loads a cycle; a 4x1 block's 16 A
    # loads and 4 broadcasts for 16 FMAs) 4x1 layers ran 7 % faster and unstructured ones 6 %.
    # Empty: not measured on the ISA.
    quad_load: str = ""
    quad_splat: str = ""
    pair_load: str = ""
    # The inline-assembly constraint of a vector register (keeping a value in one).
    register: str = "x"


@dataclass(frozen=True)
class IntVectors:
    """int32 vectors, and their conversion to fp32 (`cvt`)."""
    ivec: str
    izero: str
    iload: str
    iset1: str
    isub: str
    istore: str
    iadd: str
    cvt: str


@dataclass(frozen=True)
class Int8Products:
    """u8 x s8 products summed 4 to an int32 lane (`dpbusd`; absent where `madd` computes
    them), the tile's quantization, and the range pass's min/max where they must skip NaN."""
    quantize: str
    dpbusd: str | None = None
    dpbusd_full_range: str | None = None  # where a code of -128 would overflow `dpbusd`
    range_min: str | None = None
    range_max: str | None = None
    code_offset: int | None = None  # added to the u8 codes: SDOT multiplies s8 by s8
    madd: str | None = None  # AVX2: the instruction that multiplies 16-bit codes in pairs
    madd_add: str | None = None
    iand: str | None = None
    ishr16: str | None = None


@dataclass(frozen=True)
class Bf16Products:
    """bf16 pairs: `pack` rounds two rows of floats into one vector of pairs (a `{fn}`
    placeholder names a helper the template defines); `dot` multiplies pairs into fp32."""
    pack: str
    dot: str | None = None  # AVX2 has none: its tile holds the pairs widened to floats


@dataclass(frozen=True)
class Isa:
    name: str  # for the generated code's comments
    floats: FloatVectors
    ints: IntVectors | None = None
    int8: Int8Products | None = None
    bf16: Bf16Products | None = None
    parts: int | None = None  # lanes a 4x1 group or a pair takes in the tile (AVX2: 2)
    accumulators: int | None = None  # vector registers free for accumulators (AVX2: 8)

    @property
    def lanes(self) -> int:
        return self.floats.lanes

    @property
    def tile_parts(self) -> int:
        return self.parts or 1

    def with_int8(self, **names) -> Isa:
        """This ISA with some int8 product names replaced."""
        return dataclasses.replace(self, int8=dataclasses.replace(self.int8, **names))

    def template_names(self) -> dict:
        """The flat mapping templates read (`isa.vec`, `isa.get("parts", 1)`): names this
        ISA lacks are absent, not empty."""
        names = {"name": self.name, "parts": self.parts, "accumulators": self.accumulators}
        for part in (self.floats, self.ints, self.int8, self.bf16):
            if part is not None:
                names.update(dataclasses.asdict(part))
        return {key: value for key, value in names.items() if value is not None}


# AArch64: vector helpers in runtime_c/sparsec_neon.h, under the x86 intrinsics' argument
# order; the epilogue takes whole vectors only (see neon-epilogue.j2).
NEON_FLOATS = FloatVectors(
    lanes=4, vmath="sparsec_v4_", vec="float32x4_t", zero="sparsec_neon_zero",
    broadcast="vld1q_dup_f32({})", load="vld1q_f32", store="vst1q_f32",
    fmadd="sparsec_neon_fmadd", add="vaddq_f32", transpose="sparsec_transpose4x4",
    epilogue="neon-epilogue.j2", mask_type="int", full_mask="1", set1="vdupq_n_f32",
    mul="vmulq_f32", max="vmaxq_f32", min="vminq_f32", loadu="vld1q_f32", storeu="vst1q_f32",
    registers=32, register="w")
AVX2_FLOATS = FloatVectors(
    lanes=8, vmath="sparsec_v8_", vec="__m256", zero="_mm256_setzero_ps",
    broadcast="_mm256_broadcast_ss({})", load="_mm256_load_ps", store="_mm256_store_ps",
    fmadd="_mm256_fmadd_ps", add="_mm256_add_ps", transpose="sparsec_transpose8x8",
    epilogue="avx2-epilogue.j2", mask_type="__m256i", full_mask="_mm256_set1_epi32(-1)",
    set1="_mm256_set1_ps", mul="_mm256_mul_ps", max="_mm256_max_ps", min="_mm256_min_ps",
    loadu="_mm256_loadu_ps", storeu="_mm256_storeu_ps", registers=16,
    mask_bits="sparsec_mask8_from_bits({bits})", maskz_loadu="_mm256_maskload_ps({ptr}, {mask})",
    quad_load="_mm256_broadcast_ps((const __m128 *)({}))",
    quad_splat="_mm256_permute_ps({vec}, {i} * 0x55)",
    pair_load="sparsec_avx2_pair({})")
AVX512_FLOATS = FloatVectors(
    lanes=16, vmath="sparsec_v16_", vec="__m512", zero="_mm512_setzero_ps",
    broadcast="_mm512_set1_ps(*({}))", load="_mm512_load_ps", store="_mm512_store_ps",
    fmadd="_mm512_fmadd_ps", add="_mm512_add_ps", transpose="sparsec_transpose16x16",
    epilogue="avx512-epilogue.j2", mask_type="__mmask16", full_mask="(__mmask16)0xffff",
    set1="_mm512_set1_ps", mul="_mm512_mul_ps", max="_mm512_max_ps", min="_mm512_min_ps",
    loadu="_mm512_loadu_ps", storeu="_mm512_storeu_ps", registers=32,
    mask_bits="(__mmask16)({bits})", maskz_loadu="_mm512_maskz_loadu_ps({mask}, {ptr})")

NEON_INTS = IntVectors(ivec="int32x4_t", izero="sparsec_neon_izero",
                       iload="sparsec_neon_iload", iset1="vdupq_n_s32", isub="vsubq_s32",
                       istore="sparsec_neon_istore", iadd="vaddq_s32", cvt="vcvtq_f32_s32")
AVX2_INTS = IntVectors(ivec="__m256i", izero="_mm256_setzero_si256",
                       iload="_mm256_load_si256", iset1="_mm256_set1_epi32",
                       isub="_mm256_sub_epi32", istore="_mm256_store_si256",
                       iadd="_mm256_add_epi32", cvt="_mm256_cvtepi32_ps")
AVX512_INTS = IntVectors(ivec="__m512i", izero="_mm512_setzero_si512",
                         iload="_mm512_load_si512", iset1="_mm512_set1_epi32",
                         isub="_mm512_sub_epi32", istore="_mm512_store_si512",
                         iadd="_mm512_add_epi32", cvt="_mm512_cvtepi32_ps")

# fp32 token-tile kernels (f32-spmm/x86-tokens.c.j2).
TOKEN_TILE_ISAS = {
    "neon": Isa("NEON", NEON_FLOATS),
    "avx512f": Isa("AVX-512F", AVX512_FLOATS),
    "avx2": Isa("AVX2", AVX2_FLOATS),
}

# AArch64 SDOT multiplies s8 by s8: codes are stored minus 128 (code_offset), and the range
# pass uses maxNum/minNum, which skip NaN as fmaxf does (FMAX would propagate it).
_NEON_DOT = Int8Products(quantize="sparsec_quantize_s8x16", dpbusd="sparsec_neon_dot",
                         range_min="vminnmq_f32", range_max="vmaxnmq_f32", code_offset=128)
_AVX2_VNNI = Int8Products(quantize="sparsec_quantize_u8x32", dpbusd="sparsec_dpbusd256")

# int8 token-tile kernels (i8-dense/x86-vnni-tokens.c.j2).
VNNI_ISAS = {
    "neondot": Isa("NEON dot-product", NEON_FLOATS, NEON_INTS, _NEON_DOT),
    # ARMv8.0 NEON without SDOT (the arm-neon target's int8 kernels, and its fallback where
    # the dispatched SDOT kernel cannot run): the same sums from widening multiplies.
    "neon": Isa("NEON widening multiplies", NEON_FLOATS, NEON_INTS, dataclasses.replace(
        _NEON_DOT, dpbusd="sparsec_neon_dot_widening",
        dpbusd_full_range="sparsec_neon_dot_widening_full_range")),
    "avx512vnni": Isa("AVX-512 VNNI", AVX512_FLOATS, AVX512_INTS,
                      Int8Products(quantize="sparsec_quantize_u8x64",
                                   dpbusd="sparsec_dpbusd512")),
    "avxvnni": Isa("AVX-VNNI", AVX2_FLOATS, AVX2_INTS, _AVX2_VNNI),
    # AVX2 without VNNI: VPMADDUBSW's int16 pair sums saturate (2 * 255 * 128 > 32767), so the
    # products run on VPMADDWD, exact in int32, over codes widened to 16 bits. A 4x1 group is
    # two steps ("parts"): codes 0 and 2 of a token in one 32-bit lane, codes 1 and 3 in
    # another (the even and odd bytes of VNNI's lane, split by an and and a shift when the
    # tile is quantized, once per tile), against weight lanes packed the same way at compile
    # time. 16 ymm registers: accumulators for the dense loop's columns x tokens.
    "avx2": Isa("AVX2 (vpmaddwd on 16-bit codes)", AVX2_FLOATS, AVX2_INTS,
                dataclasses.replace(_AVX2_VNNI, dpbusd=None, madd="vpmaddwd",
                                    madd_add="vpaddd", iand="_mm256_and_si256",
                                    ishr16="_mm256_srli_epi16"),
                parts=2, accumulators=8),
}

_AVX512_BF16_BY_FMA = Isa("AVX-512F (bf16 products by FMA)", AVX512_FLOATS, AVX512_INTS,
                          bf16=Bf16Products(pack="sparsec_bf16_pairs512",
                                            dot="sparsec_dpbf16_512"))

# bf16 token-tile and column kernels (bf16-dense/x86-tokens.c.j2, x86-columns.c.j2).
BF16_ISAS = {
    "avx512f": _AVX512_BF16_BY_FMA,
    "avx512bf16": dataclasses.replace(
        _AVX512_BF16_BY_FMA, name="AVX512_BF16",
        bf16=Bf16Products(pack="sparsec_bf16_pairs512_hw", dot="sparsec_dpbf16_512_hw")),
    # AVX2: the tile's pairs widened to floats as they are packed (two parts per pair), so the
    # inner loop is the fp32 kernels' FMAs; helpers `{fn}_...` in the template; 16 ymm
    # registers.
    "avx2": Isa("AVX2 (bf16 products by FMA)", AVX2_FLOATS, AVX2_INTS,
                bf16=Bf16Products(pack="{fn}_bf16_pairs"), parts=2, accumulators=8),
}
