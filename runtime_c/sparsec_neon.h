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

/* int8 token kernels (i8-dense/x86-vnni-tokens.c.j2 under NEON names) */
static inline int32x4_t sparsec_neon_izero(void)
{
  return vdupq_n_s32(0);
}

static inline int32x4_t sparsec_neon_iload(const void *p)
{
  return vld1q_s32((const int32_t *)p);
}

static inline void sparsec_neon_istore(void *p, int32x4_t v)
{
  vst1q_s32((int32_t *)p, v);
}

/* The instruction set of kernels on the dot-product extension: arm-neon-dotprod builds
 * everything for it; arm-neon compiles only the dispatched SDOT kernels for it (between
 * `#pragma GCC target` lines) and calls them when the CPU reports asimddp. Every core with
 * the extension implements ARMv8.2-A, the first version that allows it. */
#define SPARSEC_NEON_DOTPROD_ARCH "arch=armv8.2-a+dotprod"
/* _Pragma takes a literal only, so the string is spelled again here. */
#define SPARSEC_NEON_DOTPROD_BEGIN \
  _Pragma("GCC push_options") _Pragma("GCC target(\"arch=armv8.2-a+dotprod\")")
#define SPARSEC_NEON_DOTPROD_END _Pragma("GCC pop_options")

/* acc + the 4-byte dot products of a and b in each 32-bit lane, s8 x s8 (SDOT). Callable only
 * from code built for SPARSEC_NEON_DOTPROD_ARCH: elsewhere it fails to inline, at compile
 * time, instead of faulting on a core without SDOT. */
static inline __attribute__((target(SPARSEC_NEON_DOTPROD_ARCH))) int32x4_t
sparsec_neon_dot(int32x4_t acc, int32x4_t a, int32x4_t b)
{
  return vdotq_s32(acc, vreinterpretq_s8_s32(a), vreinterpretq_s8_s32(b));
}

/* The same sum on ARMv8.0 NEON, for cores without SDOT, in four instructions: 16 products
 * (SMULL, SMULL2), adjacent pairs added in 16 bits (ADDP) and pairs of those added into the
 * 32-bit lanes (SADALP). Exact while no product pair exceeds int16: a holds activation codes
 * in [-128, 127] and b weight codes in [-127, 127] (|pair| <= 2 * 128 * 127 = 32512). */
static inline int32x4_t sparsec_neon_dot_widening(int32x4_t acc, int32x4_t a, int32x4_t b)
{
  const int8x16_t a8 = vreinterpretq_s8_s32(a), b8 = vreinterpretq_s8_s32(b);
  const int16x8_t low = vmull_s8(vget_low_s8(a8), vget_low_s8(b8));
  const int16x8_t high = vmull_high_s8(a8, b8);
  return vpadalq_s16(acc, vpaddq_s16(low, high));
}

/* As sparsec_neon_dot_widening for weights that hold -128 (imported int8 models), where a
 * pair of products can reach 32768: pairs are added in 32 bits (SADDLP) instead. */
static inline int32x4_t sparsec_neon_dot_widening_full_range(int32x4_t acc, int32x4_t a,
                                                             int32x4_t b)
{
  const int8x16_t a8 = vreinterpretq_s8_s32(a), b8 = vreinterpretq_s8_s32(b);
  const int32x4_t low = vpaddlq_s16(vmull_s8(vget_low_s8(a8), vget_low_s8(b8)));
  const int32x4_t high = vpaddlq_s16(vmull_high_s8(a8, b8));
  return vaddq_s32(acc, vpaddq_s32(low, high));
}

/* 16 floats -> their DynamicQuantizeLinear codes minus 128, as s8 in order (lane i holds
 * floats 4i..4i+3): the same clamp, round-half-even and zero point as the scalar code; the
 * maxNum/minNum forms skip NaN as fmaxf/fminf do. */
static inline int32x4_t sparsec_quantize_s8x16(const float *x, float32x4_t scale,
                                               float32x4_t low, float32x4_t high,
                                               int32x4_t zero_point)
{
  int32x4_t codes[4];
  for (int i = 0; i < 4; i++) {
    float32x4_t v = vdivq_f32(vld1q_f32(x + 4 * i), scale);
    v = vminnmq_f32(vmaxnmq_f32(v, low), high);
    codes[i] = vsubq_s32(vaddq_s32(vcvtnq_s32_f32(v), zero_point), vdupq_n_s32(128));
  }
  const int16x8_t low_half = vcombine_s16(vmovn_s32(codes[0]), vmovn_s32(codes[1]));
  const int16x8_t high_half = vcombine_s16(vmovn_s32(codes[2]), vmovn_s32(codes[3]));
  return vreinterpretq_s32_s8(vcombine_s8(vmovn_s16(low_half), vmovn_s16(high_half)));
}

#endif /* SPARSEC_NEON_H */
