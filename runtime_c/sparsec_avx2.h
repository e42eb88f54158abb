/* sparsec_avx2.h: small AVX2 helpers shared by generated kernels (static inline; no state).
 * Included by model code built for AVX2 and AVX-512 targets. */
#ifndef SPARSEC_AVX2_H
#define SPARSEC_AVX2_H

#include <immintrin.h>
#include <stddef.h>
#include <string.h>

/* Lane i all ones where bit i of `bits` is set: VMASKMOVPS's mask, from the 8-bit lane
 * masks the shifted-row conv kernels keep per tap (AVX-512 uses the bits as they are). */
static inline __m256i sparsec_mask8_from_bits(unsigned bits)
{
  const __m256i lane_bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)bits), lane_bits), lane_bits);
}

/* p[0], p[1] in every pair of lanes, from one 8-byte load (p needs only float alignment) */
static inline __m256 sparsec_avx2_pair(const float *p)
{
  double pair;
  memcpy(&pair, p, sizeof pair);
  return _mm256_castpd_ps(_mm256_set1_pd(pair));
}

/* dst[j][i] = src[i][j] for an 8 x 8 float block; strides in elements. Three shuffle stages
 * (32-bit, 64-bit and 128-bit lanes). */
static inline void sparsec_transpose8x8(const float *src, size_t src_stride, float *dst,
                                        size_t dst_stride)
{
  __m256 r[8], t[8];
  for (int i = 0; i < 8; i++)
    r[i] = _mm256_loadu_ps(src + i * src_stride);
  for (int i = 0; i < 4; i++) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 2; i++) {
    r[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    r[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xee);
    r[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    r[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xee);
  }
  for (int j = 0; j < 4; j++) {
    _mm256_storeu_ps(dst + j * dst_stride, _mm256_permute2f128_ps(r[j], r[j + 4], 0x20));
    _mm256_storeu_ps(dst + (j + 4) * dst_stride, _mm256_permute2f128_ps(r[j], r[j + 4], 0x31));
  }
}

/* 32 floats -> their 32 u8 codes in order, as sparsec_quantize_u8x64 (AVX-512) computes
 * them. The two saturating packs interleave 128-bit lanes; the final permute restores the
 * order of the four 8-float groups. */
static inline __m256i sparsec_quantize_u8x32(const float *x, __m256 scale, __m256 low,
                                             __m256 high, __m256i zero_point)
{
  __m256i codes[4];
  for (int i = 0; i < 4; i++) {
    __m256 v = _mm256_div_ps(_mm256_loadu_ps(x + 8 * i), scale);
    v = _mm256_min_ps(_mm256_max_ps(v, low), high);
    codes[i] = _mm256_add_epi32(_mm256_cvtps_epi32(v), zero_point);
  }
  const __m256i bytes = _mm256_packus_epi16(_mm256_packus_epi32(codes[0], codes[1]),
                                            _mm256_packus_epi32(codes[2], codes[3]));
  return _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* vpdpbusd on 256 bits. Test builds define SPARSEC_AVXVNNI_AS_AVX512VL to run AVX-VNNI kernels
 * on AVX-512 hosts without AVX-VNNI, through the same operation's EVEX encoding (AVX-512 VL +
 * VNNI); model.c then requires those features instead. */
#ifdef SPARSEC_AVXVNNI_AS_AVX512VL
#define sparsec_dpbusd256 _mm256_dpbusd_epi32
#else
#define sparsec_dpbusd256 _mm256_dpbusd_avx_epi32
#endif

#endif /* SPARSEC_AVX2_H */
