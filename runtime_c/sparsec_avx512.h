/* sparsec_avx512.h: small AVX-512 helpers shared by generated kernels (static inline; no
 * state). Included by model code built for AVX-512 targets only. */
#ifndef SPARSEC_AVX512_H
#define SPARSEC_AVX512_H

#include <immintrin.h>
#include <stddef.h>

/* dst[j][i] = src[i][j] for a 16 x 16 float block; strides in elements. Four shuffle stages
 * (32-bit, 64-bit, 128-bit and 256-bit lanes), 64 shuffles per 256 elements. */
static inline void sparsec_transpose16x16(const float *src, size_t src_stride, float *dst,
                                          size_t dst_stride)
{
  __m512 r[16], t[16];
  for (int i = 0; i < 16; i++)
    r[i] = _mm512_loadu_ps(src + i * src_stride);
  for (int i = 0; i < 8; i++) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; i++) {
    const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
    const __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
    r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int i = 0; i < 2; i++)
    for (int j = 0; j < 4; j++) {
      t[8 * i + j] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + j + 4], 0x88);
      t[8 * i + j + 4] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + j + 4], 0xdd);
    }
  for (int j = 0; j < 8; j++) {
    _mm512_storeu_ps(dst + j * dst_stride, _mm512_shuffle_f32x4(t[j], t[j + 8], 0x88));
    _mm512_storeu_ps(dst + (j + 8) * dst_stride, _mm512_shuffle_f32x4(t[j], t[j + 8], 0xdd));
  }
}

/* acc + the dot products of 4 u8 (a) x 4 s8 (b) per 32-bit lane: vpdpbusd. Inline assembly
 * because gcc 12 surrounds the intrinsic with a register copy per accumulator in loops
 * (measured: two moves per vpdpbusd, half the kernel's throughput). */
static inline __m512i sparsec_dpbusd512(__m512i acc, __m512i a, __m512i b)
{
  __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
  return acc;
}

/* 64 floats -> their 64 u8 codes in order, as DynamicQuantizeLinear computes them:
 * clamp(x / scale, low, high) rounded half to even (MXCSR's default mode), plus zero_point,
 * where low = -zero_point and high = 255 - zero_point. max_ps returns its second operand for
 * a NaN x, so NaN becomes the low bound instead of an undefined conversion. */
static inline __m512i sparsec_quantize_u8x64(const float *x, __m512 scale, __m512 low,
                                             __m512 high, __m512i zero_point)
{
  __m128i codes[4];
  for (int i = 0; i < 4; i++) {
    __m512 v = _mm512_div_ps(_mm512_loadu_ps(x + 16 * i), scale);
    v = _mm512_min_ps(_mm512_max_ps(v, low), high);
    codes[i] = _mm512_cvtepi32_epi8(_mm512_add_epi32(_mm512_cvtps_epi32(v), zero_point));
  }
  __m512i all = _mm512_castsi128_si512(codes[0]);
  all = _mm512_inserti32x4(all, codes[1], 1);
  all = _mm512_inserti32x4(all, codes[2], 2);
  return _mm512_inserti32x4(all, codes[3], 3);
}

/* bf16 (--dtype bf16): a 32-bit lane holds two bf16, the even K in its low half, as
 * VDPBF16PS pairs them. Kernels for AVX512_BF16 CPUs sit between these macros and call the
 * _hw helpers; the library runs them only where the CPU reports avx512bf16, and the others,
 * which compute the same products with shifts and FMAs, elsewhere. */
#define SPARSEC_AVX512BF16_BEGIN \
  _Pragma("GCC push_options") _Pragma("GCC target(\"avx512bf16\")")
#define SPARSEC_AVX512BF16_END _Pragma("GCC pop_options")

/* 32 floats -> 32 bf16 in order (16 lanes of pairs), rounded to nearest even; NaN stays a
 * (quiet) NaN. */
static inline __m512i sparsec_bf16_pairs512(const float *x)
{
  __m256i halves[2];
  for (int i = 0; i < 2; i++) {
    const __m512i bits = _mm512_castps_si512(_mm512_loadu_ps(x + 16 * i));
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    const __m512i rounded = _mm512_srli_epi32(
        _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))), 16);
    const __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(0x40));
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(
        _mm512_and_si512(bits, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
    halves[i] = _mm512_cvtepi32_epi16(_mm512_mask_mov_epi32(rounded, nan, quiet));
  }
  return _mm512_inserti64x4(_mm512_castsi256_si512(halves[0]), halves[1], 1);
}

/* acc + x[2i+1] w[2i+1] + x[2i] w[2i] per lane (bf16 pairs, fp32 sums), odd then even as
 * VDPBF16PS orders them, each as an FMA. */
static inline __m512 sparsec_dpbf16_512(__m512 acc, __m512i x, __m512i w)
{
  const __m512i high = _mm512_set1_epi32((int)0xffff0000u);
  acc = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(x, high)),
                        _mm512_castsi512_ps(_mm512_and_si512(w, high)), acc);
  return _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(x, 16)),
                         _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)), acc);
}

/* The same with AVX512_BF16 (VCVTNE2PS2BF16 rounds to nearest even as above). */
__attribute__((target("avx512bf16"))) static inline __m512i sparsec_bf16_pairs512_hw(const float *x)
{
  return (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + 16), _mm512_loadu_ps(x));
}

__attribute__((target("avx512bf16"))) static inline __m512 sparsec_dpbf16_512_hw(__m512 acc,
                                                                                 __m512i x,
                                                                                 __m512i w)
{
  return _mm512_dpbf16_ps(acc, (__m512bh)x, (__m512bh)w);
}

#endif /* SPARSEC_AVX512_H */
