/* sparsec_vmath.h: the math of sparsec_model.h (e^x, erf, GELU in both forms, tanh, sigmoid)
 * on whole SIMD vectors, for the kernels' activation epilogues, elementwise loops and
 * softmax. The definitions are written once, in sparsec_vmath_body.h, and instantiated here
 * once per vector width the build's ISA offers:
 * sparsec_v4_* on AArch64 NEON, sparsec_v8_* on AVX2 with FMA, sparsec_v16_* on AVX-512F.
 * SPARSEC_VLANES names the widest, and sparsec_vf/sparsec_vload/sparsec_vstore/
 * sparsec_vexp/... alias its functions for loops that take whatever the build has; without a
 * vector ISA (the portable target) SPARSEC_VLANES is undefined and callers keep their scalar
 * loops. */
#ifndef SPARSEC_VMATH_H
#define SPARSEC_VMATH_H

/* Included by sparsec_model.h, after the scalar (1-lane) instance. */

#if defined(__aarch64__)
#include <arm_neon.h>
#define SPARSEC_VM_LANES 4
#define SPARSEC_VM_FMADD(a, b, c) vfmaq_f32((c), (a), (b))
#include "sparsec_vmath_body.h"
#undef SPARSEC_VM_LANES
#undef SPARSEC_VM_FMADD
#define SPARSEC_VLANES 4
#endif

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define SPARSEC_VM_LANES 8
#define SPARSEC_VM_FMADD(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#include "sparsec_vmath_body.h"
#undef SPARSEC_VM_LANES
#undef SPARSEC_VM_FMADD
#define SPARSEC_VLANES 8
#endif

#if defined(__AVX512F__)
#define SPARSEC_VM_LANES 16
#define SPARSEC_VM_FMADD(a, b, c) _mm512_fmadd_ps((a), (b), (c))
#include "sparsec_vmath_body.h"
#undef SPARSEC_VM_LANES
#undef SPARSEC_VM_FMADD
#undef SPARSEC_VLANES
#define SPARSEC_VLANES 16
#endif

#ifdef SPARSEC_VLANES
#define sparsec_vf SPARSEC_VM_EXPAND(SPARSEC_VLANES, f)
#define sparsec_vload SPARSEC_VM_EXPAND(SPARSEC_VLANES, load)
#define sparsec_vstore SPARSEC_VM_EXPAND(SPARSEC_VLANES, store)
#define sparsec_vsplat SPARSEC_VM_EXPAND(SPARSEC_VLANES, splat)
#define sparsec_vmax SPARSEC_VM_EXPAND(SPARSEC_VLANES, max)
#define sparsec_vexp SPARSEC_VM_EXPAND(SPARSEC_VLANES, exp)
#define sparsec_vexp_shifted SPARSEC_VM_EXPAND(SPARSEC_VLANES, exp_shifted)
#define sparsec_verf SPARSEC_VM_EXPAND(SPARSEC_VLANES, erf)
#define sparsec_vgelu SPARSEC_VM_EXPAND(SPARSEC_VLANES, gelu)
#define sparsec_vgelu_tanh SPARSEC_VM_EXPAND(SPARSEC_VLANES, gelu_tanh)
#define sparsec_vsigmoid SPARSEC_VM_EXPAND(SPARSEC_VLANES, sigmoid)
#define sparsec_vtanh SPARSEC_VM_EXPAND(SPARSEC_VLANES, tanh)
#endif

#endif /* SPARSEC_VMATH_H */
