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

#endif /* SPARSEC_AVX512_H */
