/* sparsec_vmath_body.h: e^x, erf, GELU (erf and tanh forms), sigmoid and tanh, written once for
 * SPARSEC_VM_LANES float lanes (1: scalar C; 4: NEON; 8: AVX2; 16: AVX-512F), with
 * SPARSEC_VM_FMADD(a, b, c) = a * b + c. Included by sparsec_model.h (1 lane) and
 * sparsec_vmath.h (each vector width the build has); nothing else includes it. Each instance
 * performs the same IEEE operations in the same order, so with fused multiply-add in both a
 * vector lane returns exactly the scalar result (tests/runtime_c/test_vmath.py).
 *
 * The arithmetic uses GCC/Clang vector extensions (+ - * / on floats, shifts on int32 lanes);
 * comparisons, selects, min and max use each ISA's own instructions through the few
 * primitives below, each defined as the C expression it names (`a < b ? a : b` for min,
 * including which operand a NaN gives back). */

#ifndef SPARSEC_VM
#define SPARSEC_VM_PASTE(lanes, name) sparsec_v##lanes##_##name
#define SPARSEC_VM_EXPAND(lanes, name) SPARSEC_VM_PASTE(lanes, name)
#define SPARSEC_VM(name) SPARSEC_VM_EXPAND(SPARSEC_VM_LANES, name)
#endif

#define VF SPARSEC_VM(f)
#define VI SPARSEC_VM(i)
#define VMASK SPARSEC_VM(mask)

#if SPARSEC_VM_LANES == 1
typedef float VF;
typedef int32_t VI;
typedef int VMASK;
static inline VMASK SPARSEC_VM(lt)(VF a, VF b) { return a < b; }
static inline VMASK SPARSEC_VM(gt)(VF a, VF b) { return a > b; }
static inline VMASK SPARSEC_VM(isnan)(VF a) { return a != a; }
static inline VF SPARSEC_VM(select)(VMASK m, VF yes, VF no) { return m ? yes : no; }
static inline VF SPARSEC_VM(min)(VF a, VF b) { return a < b ? a : b; }
static inline VF SPARSEC_VM(max)(VF a, VF b) { return a > b ? a : b; }
static inline VI SPARSEC_VM(bits)(VF a) { VI i; memcpy(&i, &a, sizeof i); return i; }
static inline VF SPARSEC_VM(from_bits)(VI i) { VF a; memcpy(&a, &i, sizeof a); return a; }
static inline VI SPARSEC_VM(to_int)(VF a) { return (VI)a; } /* a: a whole number in range */
static inline VF SPARSEC_VM(to_float)(VI i) { return (VF)i; }
static inline VF SPARSEC_VM(lookup8)(const float *row, VI i) { return row[i]; }
#else
typedef int32_t VI __attribute__((vector_size(4 * SPARSEC_VM_LANES)));
#if SPARSEC_VM_LANES == 4
typedef float32x4_t VF;
typedef uint32x4_t VMASK;
static inline VMASK SPARSEC_VM(lt)(VF a, VF b) { return vcltq_f32(a, b); }
static inline VMASK SPARSEC_VM(gt)(VF a, VF b) { return vcgtq_f32(a, b); }
static inline VMASK SPARSEC_VM(isnan)(VF a) { return vmvnq_u32(vceqq_f32(a, a)); }
static inline VF SPARSEC_VM(select)(VMASK m, VF yes, VF no) { return vbslq_f32(m, yes, no); }
/* FMIN/FMAX would return the NaN: select as the C expression does */
static inline VF SPARSEC_VM(min)(VF a, VF b) { return vbslq_f32(vcltq_f32(a, b), a, b); }
static inline VF SPARSEC_VM(max)(VF a, VF b) { return vbslq_f32(vcgtq_f32(a, b), a, b); }
/* row[i] per lane, i in 0..7: bytes 4i..4i+3 of the two registers holding the row */
static inline VF SPARSEC_VM(lookup8)(const float *row, VI i)
{
  const uint8x16x2_t table = {{vreinterpretq_u8_f32(vld1q_f32(row)),
                               vreinterpretq_u8_f32(vld1q_f32(row + 4))}};
  const VI bytes = i * 0x04040404 + 0x03020100;
  return vreinterpretq_f32_u8(vqtbl2q_u8(table, vreinterpretq_u8_s32((int32x4_t)bytes)));
}
#elif SPARSEC_VM_LANES == 8
typedef __m256 VF;
typedef __m256 VMASK;
static inline VMASK SPARSEC_VM(lt)(VF a, VF b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
static inline VMASK SPARSEC_VM(gt)(VF a, VF b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
static inline VMASK SPARSEC_VM(isnan)(VF a) { return _mm256_cmp_ps(a, a, _CMP_UNORD_Q); }
static inline VF SPARSEC_VM(select)(VMASK m, VF yes, VF no) { return _mm256_blendv_ps(no, yes, m); }
static inline VF SPARSEC_VM(min)(VF a, VF b) { return _mm256_min_ps(a, b); } /* a < b ? a : b */
static inline VF SPARSEC_VM(max)(VF a, VF b) { return _mm256_max_ps(a, b); } /* a > b ? a : b */
static inline VF SPARSEC_VM(lookup8)(const float *row, VI i) /* row[i] per lane, i in 0..7 */
{
  return _mm256_permutevar8x32_ps(_mm256_loadu_ps(row), (__m256i)i);
}
#elif SPARSEC_VM_LANES == 16
typedef __m512 VF;
typedef __mmask16 VMASK;
static inline VMASK SPARSEC_VM(lt)(VF a, VF b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
static inline VMASK SPARSEC_VM(gt)(VF a, VF b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
static inline VMASK SPARSEC_VM(isnan)(VF a) { return _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q); }
static inline VF SPARSEC_VM(select)(VMASK m, VF yes, VF no) { return _mm512_mask_blend_ps(m, no, yes); }
static inline VF SPARSEC_VM(min)(VF a, VF b) { return _mm512_min_ps(a, b); } /* a < b ? a : b */
static inline VF SPARSEC_VM(max)(VF a, VF b) { return _mm512_max_ps(a, b); } /* a > b ? a : b */
static inline VF SPARSEC_VM(lookup8)(const float *row, VI i) /* row[i] per lane, i in 0..7 */
{
  return _mm512_permutexvar_ps((__m512i)i, _mm512_castps256_ps512(_mm256_loadu_ps(row)));
}
#else
#error "sparsec_vmath_body.h: no primitives for this lane count"
#endif
static inline VI SPARSEC_VM(bits)(VF a) { return (VI)a; }
static inline VF SPARSEC_VM(from_bits)(VI i) { return (VF)i; }
static inline VI SPARSEC_VM(to_int)(VF a) { return __builtin_convertvector(a, VI); }
static inline VF SPARSEC_VM(to_float)(VI i) { return __builtin_convertvector(i, VF); }
#endif

static inline VF SPARSEC_VM(load)(const float *p)
{
  VF v;
  memcpy(&v, p, sizeof v); /* unaligned */
  return v;
}

static inline void SPARSEC_VM(store)(float *p, VF v)
{
  memcpy(p, &v, sizeof v);
}

/* every lane c: c - 0 is c for every c, -0 included (c + 0 would turn -0 into +0) */
static inline VF SPARSEC_VM(splat)(float c)
{
  return c - (VF){0};
}

static inline VF SPARSEC_VM(fmadd)(VF a, VF b, VF c)
{
  return SPARSEC_VM_FMADD(a, b, c);
}

static inline VF SPARSEC_VM(abs)(VF x)
{
  return SPARSEC_VM(from_bits)(SPARSEC_VM(bits)(x) & 0x7fffffff);
}

/* magnitude (>= 0) with the sign bit of `sign`, a NaN's included */
static inline VF SPARSEC_VM(with_sign_of)(VF magnitude, VF sign)
{
  return SPARSEC_VM(from_bits)(SPARSEC_VM(bits)(magnitude) |
                               (SPARSEC_VM(bits)(sign) & SPARSEC_VM(bits)(SPARSEC_VM(splat)(-0.0f))));
}

/* e^x = 2^n e^r: x = n ln2 + r with ln2 in two parts (Cephes), e^r by Cephes' degree-6
 * polynomial, returned; n (a whole number) in *n. */
static inline VF SPARSEC_VM(exp_reduced)(VF x, VF *n)
{
  const VF shifter = SPARSEC_VM(splat)(12582912.0f); /* 1.5 * 2^23: adding it rounds */
  *n = SPARSEC_VM(fmadd)(x, SPARSEC_VM(splat)(1.44269504088896341f), shifter) - shifter;
  VF r = SPARSEC_VM(fmadd)(*n, SPARSEC_VM(splat)(-0.693359375f), x);
  r = SPARSEC_VM(fmadd)(*n, SPARSEC_VM(splat)(2.12194440e-4f), r);
  VF p = SPARSEC_VM(splat)(1.9875691500e-4f);
  p = SPARSEC_VM(fmadd)(p, r, SPARSEC_VM(splat)(1.3981999507e-3f));
  p = SPARSEC_VM(fmadd)(p, r, SPARSEC_VM(splat)(8.3334519073e-3f));
  p = SPARSEC_VM(fmadd)(p, r, SPARSEC_VM(splat)(4.1665795894e-2f));
  p = SPARSEC_VM(fmadd)(p, r, SPARSEC_VM(splat)(1.6666665459e-1f));
  p = SPARSEC_VM(fmadd)(p, r, SPARSEC_VM(splat)(5.0000001201e-1f));
  return SPARSEC_VM(fmadd)(p, r * r, r + 1.0f);
}

/* e^x for x in [-87.33654, 88.8], within 2 ulp: 2^n put into the exponent bits as two
 * factors, because n reaches 128 (past 88.72283 the product overflows to inf, as e^x does). */
static inline VF SPARSEC_VM(exp_in_range)(VF x)
{
  VF n;
  const VF poly = SPARSEC_VM(exp_reduced)(x, &n);
  const VI whole = SPARSEC_VM(to_int)(n);
  const VI half = whole >> 1;
  return poly * SPARSEC_VM(from_bits)((half + 127) << 23) *
         SPARSEC_VM(from_bits)((whole - half + 127) << 23);
}

/* e^x for x in [-87.0, 0]: one factor 2^n is enough (n >= -126). The product is exactly
 * exp_in_range's: poly times a power of two rounds once either way. */
static inline VF SPARSEC_VM(exp_nonpositive)(VF x)
{
  VF n;
  const VF poly = SPARSEC_VM(exp_reduced)(x, &n);
  return poly * SPARSEC_VM(from_bits)((SPARSEC_VM(to_int)(n) + 127) << 23);
}

/* e^x for every x: NaN stays NaN; above 88.72283 inf. Below -87 (e^-87 is 1.4 FLT_MIN) 0:
 * results there would be subnormal, and every instruction that makes a subnormal costs a
 * microcode assist of ~150 cycles on Intel cores; softmax over masked scores (-FLT_MAX)
 * would take one for every vector. */
static inline VF SPARSEC_VM(exp)(VF x)
{
  const VF low = SPARSEC_VM(splat)(-87.0f);
  const VF clamped = SPARSEC_VM(min)(SPARSEC_VM(max)(x, low), SPARSEC_VM(splat)(88.8f));
  const VF result = SPARSEC_VM(select)(SPARSEC_VM(lt)(x, low), (VF){0},
                                       SPARSEC_VM(exp_in_range)(clamped));
  return SPARSEC_VM(select)(SPARSEC_VM(isnan)(x), x, result);
}

/* e^d for d <= 0, -inf or NaN: softmax's x - max(x). Exactly exp's result there (the one
 * factor 2^n of exp_nonpositive rounds as exp_in_range's two do), without the upper clamp and
 * the two-factor scaling that positive arguments need. */
static inline VF SPARSEC_VM(exp_shifted)(VF d)
{
  const VF low = SPARSEC_VM(splat)(-87.0f);
  const VF result = SPARSEC_VM(select)(SPARSEC_VM(lt)(d, low), (VF){0},
                                       SPARSEC_VM(exp_nonpositive)(SPARSEC_VM(max)(d, low)));
  return SPARSEC_VM(select)(SPARSEC_VM(isnan)(d), d, result);
}

/* erfc(a) for a >= 0 (or NaN): Numerical Recipes' erfc, t e^(P(t) - a^2) with t = 1 / (1 + a/2)
 * (relative error under 1.2e-7). The exponent is at most ~3e-8 (taken as 0 by the clamp);
 * below -87 the result is flushed to 0, as in exp; NaN still comes out through t. */
static inline VF SPARSEC_VM(erfc_nonnegative)(VF a)
{
  const VF t = 1.0f / SPARSEC_VM(fmadd)(SPARSEC_VM(splat)(0.5f), a, SPARSEC_VM(splat)(1.0f));
  VF p = SPARSEC_VM(splat)(0.17087277f);
  p = SPARSEC_VM(fmadd)(p, t, SPARSEC_VM(splat)(-0.82215223f));
  p = SPARSEC_VM(fmadd)(p, t, SPARSEC_VM(splat)(1.48851587f));
  p = SPARSEC_VM(fmadd)(p, t, SPARSEC_VM(splat)(-1.13520398f));
  p = SPARSEC_VM(fmadd)(p, t, SPARSEC_VM(splat)(0.27886807f));
  p = SPARSEC_VM(fmadd)(p, t, SPARSEC_VM(splat)(-0.18628806f));
  p = SPARSEC_VM(fmadd)(p, t, SPARSEC_VM(splat)(0.09678418f));
  p = SPARSEC_VM(fmadd)(p, t, SPARSEC_VM(splat)(0.37409196f));
  p = SPARSEC_VM(fmadd)(p, t, SPARSEC_VM(splat)(1.00002368f));
  p = SPARSEC_VM(fmadd)(p, t, SPARSEC_VM(splat)(-1.26551223f));
  const VF exponent = SPARSEC_VM(fmadd)(-a, a, p);
  const VF low = SPARSEC_VM(splat)(-87.0f);
  const VF e = SPARSEC_VM(exp_nonpositive)(
      SPARSEC_VM(min)(SPARSEC_VM(max)(exponent, low), (VF){0}));
  return t * SPARSEC_VM(select)(SPARSEC_VM(lt)(exponent, low), (VF){0}, e);
}

/* erf(x): |x| < 0.5: the Taylor series to x^15 (the next term is below 1e-9 of the sum);
 * otherwise 1 - erfc(|x|). Within 4 ulp of erf; both are computed and one selected. */
static inline VF SPARSEC_VM(erf)(VF x)
{
  const VF a = SPARSEC_VM(abs)(x);
  const VF a2 = a * a;
  /* 2/sqrt(pi) sum_n (-1)^n a^(2n) / (n! (2n + 1)), n = 0..7 */
  VF series = SPARSEC_VM(splat)(-1.49256504e-5f);
  series = SPARSEC_VM(fmadd)(series, a2, SPARSEC_VM(splat)(1.20553330e-4f));
  series = SPARSEC_VM(fmadd)(series, a2, SPARSEC_VM(splat)(-8.54832702e-4f));
  series = SPARSEC_VM(fmadd)(series, a2, SPARSEC_VM(splat)(5.22397763e-3f));
  series = SPARSEC_VM(fmadd)(series, a2, SPARSEC_VM(splat)(-2.68661706e-2f));
  series = SPARSEC_VM(fmadd)(series, a2, SPARSEC_VM(splat)(1.12837917e-1f));
  series = SPARSEC_VM(fmadd)(series, a2, SPARSEC_VM(splat)(-3.76126389e-1f));
  series = SPARSEC_VM(fmadd)(series, a2, SPARSEC_VM(splat)(1.12837917e+0f));
  const VF magnitude = SPARSEC_VM(select)(SPARSEC_VM(lt)(a, SPARSEC_VM(splat)(0.5f)), series * a,
                                          1.0f - SPARSEC_VM(erfc_nonnegative)(a));
  return SPARSEC_VM(with_sign_of)(magnitude, x);
}

/* erfc(a) on [0, 4) in 8 pieces of width 1/2: piece i is a degree-6 polynomial in
 * u = a - (i/2 + 1/4), row k holding every piece's u^k coefficient: erfc's Chebyshev
 * interpolants, within 2^-24 of it once rounded to float (tests/runtime_c/test_vmath.py recomputes
 * them). Each piece's coefficients scale with its values, so a small erfc keeps its small
 * absolute error: a single rational or polynomial over [0, 4] cancels terms near 10 down to
 * 1e-4 there. A lookup per coefficient (one permute) costs less than the division and e^x
 * of t e^(P(t) - a^2), the form this replaced (2.2x faster on AVX2). */
#ifndef SPARSEC_ERFC_PIECES
#define SPARSEC_ERFC_PIECES
static const float sparsec__erfc_pieces[7][8] = {
  {7.236736e-01f, 2.8884438e-01f, 7.7099875e-02f, 1.3328329e-02f,
   1.4627166e-03f, 1.00621925e-04f, 4.3027794e-06f, 1.1372725e-07f},
  {-1.0600137e+00f, -6.429315e-01f, -2.3652123e-01f, -5.2774835e-02f,
   -7.1423003e-03f, -5.862943e-04f, -2.919364e-05f, -8.8188483e-07f},
  {2.6500326e-01f, 4.8219824e-01f, 2.9565156e-01f, 9.235623e-02f,
   1.607019e-02f, 1.6122647e-03f, 9.486652e-05f, 3.3056756e-06f},
  {3.0911642e-01f, -2.6727146e-02f, -1.675231e-01f, -9.0177685e-02f,
   -2.1726971e-02f, -2.7582056e-03f, -1.9521976e-04f, -7.911846e-06f},
  {-1.2694836e-01f, -1.5067904e-01f, 6.1402037e-03f, 4.8104554e-02f,
   1.9086795e-02f, 3.2578285e-03f, 2.8628952e-04f, 1.3802298e-05f},
  {-7.830715e-02f, 5.125992e-02f, 4.6777133e-02f, -5.9693223e-03f,
   -1.058123e-02f, -2.8258513e-03f, -3.3260978e-04f, -2.0203739e-05f},
  {3.948784e-02f, 2.6619224e-02f, -2.0684838e-02f, -9.0391515e-03f,
   2.7951486e-03f, 1.6665937e-03f, 2.7247748e-04f, 2.0512167e-05f},
};
#endif

/* GELU(x) = x/2 (1 + erf(x / sqrt 2)) = x/2 erfc(-z), z = x / sqrt 2: erfc(|z|) for z < 0 and
 * 2 - erfc(z) otherwise, so the negative tail keeps its absolute precision (1 + erf(z) would
 * round it away). Past |z| = 3.875 erfc is taken as 0: it is below 4.3e-8 there, which the
 * graph's own 1 + erf(z) cannot resolve either, and GELU(-200) comes out 0 as it should.
 * Within 8 ulp of GELU, or |x| 2^-24 in the negative tail (tests/runtime_c/test_softmax.py). */
static inline VF SPARSEC_VM(gelu)(VF x)
{
  const VF z = x * 0.707106781186547524f;
  /* NaN: min gives back 3.875 (its second operand); x carries the NaN out */
  const VF a = SPARSEC_VM(min)(SPARSEC_VM(abs)(z), SPARSEC_VM(splat)(3.875f));
  const VI piece = SPARSEC_VM(to_int)(a * 2.0f);
  const VF u = a - SPARSEC_VM(fmadd)(SPARSEC_VM(to_float)(piece), SPARSEC_VM(splat)(0.5f),
                                     SPARSEC_VM(splat)(0.25f));
  VF p = SPARSEC_VM(lookup8)(sparsec__erfc_pieces[6], piece);
#pragma GCC unroll 6
  for (int k = 5; k >= 0; k--)
    p = SPARSEC_VM(fmadd)(p, u, SPARSEC_VM(lookup8)(sparsec__erfc_pieces[k], piece));
  const VF erfc = SPARSEC_VM(select)(SPARSEC_VM(lt)(a, SPARSEC_VM(splat)(3.875f)), p, (VF){0});
  return 0.5f * x * SPARSEC_VM(select)(SPARSEC_VM(lt)(z, (VF){0}), erfc, 2.0f - erfc);
}

/* GELU's tanh form, x/2 (1 + tanh(u)) with u = sqrt(2/pi) (x + 0.044715 x^3), as
 * x / (1 + e^(-2u)): the same function, with both tails keeping their relative precision
 * (1 + tanh(u) cancels for negative u). */
static inline VF SPARSEC_VM(gelu_tanh)(VF x)
{
  const VF u = 0.797884560802865355f * x *
               SPARSEC_VM(fmadd)(0.044715f * x, x, SPARSEC_VM(splat)(1.0f));
  return x / (1.0f + SPARSEC_VM(exp)(-2.0f * u));
}

static inline VF SPARSEC_VM(sigmoid)(VF x)
{
  return 1.0f / (1.0f + SPARSEC_VM(exp)(-x));
}

/* tanh(x): Cephes' tanhf. |x| <= 0.625: x + x^3 P(x^2); otherwise sign(x) (1 - 2 / (e^(2|x|)
 * + 1)), with 2|x| clamped to 88 (where the quotient is long below half an ulp of 1, and the
 * exponential is still finite). Within 4 ulp of tanh (tests/runtime_c/test_vmath.py). */
static inline VF SPARSEC_VM(tanh)(VF x)
{
  const VF a = SPARSEC_VM(abs)(x);
  const VF z = a * a;
  VF p = SPARSEC_VM(splat)(-5.70498872745e-3f);
  p = SPARSEC_VM(fmadd)(p, z, SPARSEC_VM(splat)(2.06390887954e-2f));
  p = SPARSEC_VM(fmadd)(p, z, SPARSEC_VM(splat)(-5.37397155531e-2f));
  p = SPARSEC_VM(fmadd)(p, z, SPARSEC_VM(splat)(1.33314422036e-1f));
  p = SPARSEC_VM(fmadd)(p, z, SPARSEC_VM(splat)(-3.33332819422e-1f));
  const VF small = SPARSEC_VM(fmadd)(p * z, a, a);
  const VF twice = SPARSEC_VM(min)(a + a, SPARSEC_VM(splat)(88.0f));
  const VF large = 1.0f - 2.0f / (SPARSEC_VM(exp_in_range)(twice) + 1.0f);
  /* tanh is odd: |tanh x| from |x|, then x's sign (-0 stays -0). NaN is not > 0.625, so it
   * takes `small`, which carries it (`large` lost it to the clamp). */
  return SPARSEC_VM(with_sign_of)(
      SPARSEC_VM(select)(SPARSEC_VM(gt)(a, SPARSEC_VM(splat)(0.625f)), large, small), x);
}

/* The activations as calls, for epilogues that run right after a register-hungry loop: with
 * 16 ymm registers (AVX2) an inlined activation's constants, which the compiler hoists, made
 * the 6x16 GEMM tile spill its accumulators in the K loop and run at half speed. */
#if SPARSEC_VM_LANES > 1
#define SPARSEC_VM_CALL(name) \
  __attribute__((noinline, unused)) static VF SPARSEC_VM(name##_call)(VF x) \
  { \
    return SPARSEC_VM(name)(x); \
  }
SPARSEC_VM_CALL(gelu)
SPARSEC_VM_CALL(gelu_tanh)
SPARSEC_VM_CALL(sigmoid)
SPARSEC_VM_CALL(tanh)
#undef SPARSEC_VM_CALL
#endif

#undef VF
#undef VI
#undef VMASK
