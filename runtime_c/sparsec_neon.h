/* sparsec_neon.h: small AArch64 NEON helpers shared by generated kernels (static inline; no
 * state), under the names the token-tile templates use for every ISA. */
#ifndef SPARSEC_NEON_H
#define SPARSEC_NEON_H

#include <arm_neon.h>
#include <stddef.h>

/* a * b + c in one rounding, in the argument order of the x86 intrinsics */
static inline float32x4_t sparsec_neon_fmadd(float32x4_t a, float32x4_t b, float32x4_t c)
{
  return vfmaq_f32(c, a, b);
}

static inline float32x4_t sparsec_neon_zero(void)
{
  return vdupq_n_f32(0.0f);
}

/* dst[j][i] = src[i][j] for a 4 x 4 float block; strides in elements. */
static inline void sparsec_transpose4x4(const float *src, size_t src_stride, float *dst,
                                        size_t dst_stride)
{
  const float32x4_t r0 = vld1q_f32(src), r1 = vld1q_f32(src + src_stride),
                    r2 = vld1q_f32(src + 2 * src_stride), r3 = vld1q_f32(src + 3 * src_stride);
  const float32x4_t t0 = vtrn1q_f32(r0, r1), t1 = vtrn2q_f32(r0, r1);
  const float32x4_t t2 = vtrn1q_f32(r2, r3), t3 = vtrn2q_f32(r2, r3);
  vst1q_f32(dst, vreinterpretq_f32_f64(vtrn1q_f64(vreinterpretq_f64_f32(t0),
                                                  vreinterpretq_f64_f32(t2))));
  vst1q_f32(dst + dst_stride, vreinterpretq_f32_f64(vtrn1q_f64(vreinterpretq_f64_f32(t1),
                                                               vreinterpretq_f64_f32(t3))));
  vst1q_f32(dst + 2 * dst_stride, vreinterpretq_f32_f64(vtrn2q_f64(vreinterpretq_f64_f32(t0),
                                                                   vreinterpretq_f64_f32(t2))));
  vst1q_f32(dst + 3 * dst_stride, vreinterpretq_f32_f64(vtrn2q_f64(vreinterpretq_f64_f32(t1),
                                                                   vreinterpretq_f64_f32(t3))));
}

#endif /* SPARSEC_NEON_H */
