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

#endif /* SPARSEC_AVX512_H */
