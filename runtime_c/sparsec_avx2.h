/* sparsec_avx2.h: small AVX2 helpers shared by generated kernels (static inline; no state).
 * Included by model code built for AVX2 and AVX-512 targets. */
#ifndef SPARSEC_AVX2_H
#define SPARSEC_AVX2_H

#include <immintrin.h>
#include <stddef.h>

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

#endif /* SPARSEC_AVX2_H */
