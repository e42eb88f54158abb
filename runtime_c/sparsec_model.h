/* sparsec_model.h: what the generated model code provides to the runtime (hidden symbols,
 * never exported from the library). */
#ifndef SPARSEC_MODEL_H
#define SPARSEC_MODEL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define SPARSEC_HIDDEN __attribute__((visibility("hidden")))

/* Bits of sparsec__required_features; names in the same order as SPARSEC_FEATURE_NAMES. */
enum {
  SPARSEC_FEATURE_AVX2 = 1u << 0,
  SPARSEC_FEATURE_FMA = 1u << 1,
  SPARSEC_FEATURE_AVX512F = 1u << 2,
  SPARSEC_FEATURE_AVX512BW = 1u << 3,
  SPARSEC_FEATURE_AVX512DQ = 1u << 4,
  SPARSEC_FEATURE_AVX512VL = 1u << 5,
  SPARSEC_FEATURE_AVX512VNNI = 1u << 6,
  SPARSEC_FEATURE_AVXVNNI = 1u << 7,
  SPARSEC_FEATURE_ASIMDDP = 1u << 8, /* AArch64 dot product (SDOT/UDOT) */
  SPARSEC_FEATURE_AMX_TILE = 1u << 9, /* with the OS's XTILECFG/XTILEDATA state (XCR0) */
  SPARSEC_FEATURE_AMX_INT8 = 1u << 10,
  SPARSEC_FEATURE_AMX_BF16 = 1u << 11,
  SPARSEC_FEATURE_AVX512BF16 = 1u << 12, /* VCVTNE2PS2BF16, VDPBF16PS */
  SPARSEC_FEATURE_AVX512VBMI2 = 1u << 13 /* VPEXPANDB/W: x86-amx's BITMASK weights */
};
#define SPARSEC_FEATURE_NAMES \
  { "avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512vnni", "avxvnni", "asimddp", "amx_tile", "amx_int8", "amx_bf16", "avx512bf16", "avx512vbmi2" }

/* A double as int64: NaN gives 0, values beyond the range the nearest bound (C leaves the
 * plain conversion of those undefined). */
static inline int64_t sparsec__saturate_i64(double value)
{
  if (value != value)
    return 0;
  if (value >= 9223372036854775807.0)
    return INT64_MAX;
  if (value <= -9223372036854775808.0)
    return INT64_MIN;
  return (int64_t)value;
}

/* IEEE binary16 <-> binary32 for float16 graph inputs and outputs (stored as uint16_t; the
 * model computes in float32 inside). Integer code only, deliberately not F16C: the results are
 * the same bits on every target and whatever the caller's MXCSR (DAZ) holds, and the
 * conversions run once per boundary element, a negligible share of a run. */
static inline float sparsec__f16_to_f32(uint16_t h)
{
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu, bits;
  if (exponent == 0x1fu) { /* inf, or NaN with its payload (exact, as numpy's) */
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else { /* subnormal: mantissa * 2^-24, normalised */
    uint32_t biased = 113;
    while (!(mantissa & 0x400u)) {
      mantissa <<= 1;
      biased--;
    }
    bits = sign | (biased << 23) | ((mantissa & 0x3ffu) << 13);
  }
  float value;
  memcpy(&value, &bits, sizeof value);
  return value;
}

/* Rounded to nearest, ties to even; 65520 and beyond become inf, results below 2^-14 are
 * subnormal (or zero), NaN stays NaN (quiet, with the top of its payload). */
static inline uint16_t sparsec__f32_to_f16(float value)
{
  uint32_t x;
  memcpy(&x, &value, sizeof x);
  const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
  x &= 0x7fffffffu;
  if (x > 0x7f800000u)
    return (uint16_t)(sign | 0x7e00u | ((x >> 13) & 0x3ffu));
  if (x >= 0x477ff000u) /* 65520: halfway between 65504 (odd) and 2^16, rounds to inf */
    return (uint16_t)(sign | 0x7c00u);
  uint32_t half, rest, tie;
  if (x < 0x38800000u) { /* below 2^-14: the subnormal count of 2^-24 units */
    if (x <= 0x33000000u) /* at most 2^-25, half a unit: ties to the even zero */
      return sign;
    const uint32_t shift = 126u - (x >> 23); /* 14 .. 24 */
    const uint32_t mantissa = (x & 0x7fffffu) | 0x800000u;
    half = mantissa >> shift;
    rest = mantissa & ((1u << shift) - 1u);
    tie = 1u << (shift - 1u);
  } else {
    half = (x >> 13) - (112u << 10); /* exponent rebiased, mantissa truncated */
    rest = x & 0x1fffu;
    tie = 0x1000u;
  }
  if (rest > tie || (rest == tie && (half & 1u)))
    half++; /* a carry out of the mantissa rightly bumps the exponent */
  return (uint16_t)(sign | half);
}

/* a * b + c, in one rounding where the target has fused multiply-add (x86 FMA, every AArch64):
 * the models build as ISO C, in which GCC never contracts a * b + c by itself, and a
 * polynomial's chain of separate multiplies and adds takes twice the instructions. Loops over
 * it still vectorise (GCC maps __builtin_fmaf onto vfmadd*ps). Elsewhere two roundings. */
#if defined(__FMA__) || defined(__aarch64__)
#define SPARSEC_FMADD(a, b, c) __builtin_fmaf((a), (b), (c))
#else
#define SPARSEC_FMADD(a, b, c) ((a) * (b) + (c))
#endif

/* e^x, erf, GELU (both forms), sigmoid and tanh inline and branch-free, for scalar code: the
 * lanes=1 instance of the definitions that sparsec_vmath.h also instantiates on SIMD vectors,
 * so that scalar tails, portable builds and vector code return the same bits. */
#define SPARSEC_VM_LANES 1
#define SPARSEC_VM_FMADD(a, b, c) SPARSEC_FMADD(a, b, c)
#include "sparsec_vmath_body.h"
#undef SPARSEC_VM_LANES
#undef SPARSEC_VM_FMADD
#define sparsec__expf sparsec_v1_exp
#define sparsec__erff sparsec_v1_erf
#define sparsec__gelu sparsec_v1_gelu
#define sparsec__gelu_tanh sparsec_v1_gelu_tanh
#define sparsec__sigmoid sparsec_v1_sigmoid
#define sparsec__tanh sparsec_v1_tanh

/* The same functions on whole SIMD vectors, where the build's ISA has them. */
#include "sparsec_vmath.h"

SPARSEC_HIDDEN extern const uint32_t sparsec__required_features;
SPARSEC_HIDDEN extern const size_t sparsec__arena_bytes;
SPARSEC_HIDDEN extern const size_t sparsec__num_inputs;
SPARSEC_HIDDEN extern const size_t sparsec__num_outputs;
SPARSEC_HIDDEN extern const char sparsec__model_info_json[];
/* Layers timed by the plans' run functions when built with -DSPARSEC_PROFILE (all plans'
 * together), else 0. */
SPARSEC_HIDDEN extern const size_t sparsec__profiled_layers;

#ifdef SPARSEC_PROFILE
#include <time.h>
static inline uint64_t sparsec__now_ns(void)
{
  struct timespec now; /* model.c asks for POSIX when profiling */
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
}
#define SPARSEC_LAYER_BEGIN { const uint64_t sparsec__start_ns = sparsec__now_ns();
#define SPARSEC_LAYER_END(i) layer_ns[i] += sparsec__now_ns() - sparsec__start_ns; }
#else
#define SPARSEC_LAYER_BEGIN {
#define SPARSEC_LAYER_END(i) }
#endif
/* The run context's threads (threads.c). A parallel region runs task(args, i) for every
 * i < count on the pool's workers and the caller, and returns when all are done; a NULL pool
 * runs them in order on the caller. */
typedef struct sparsec_pool sparsec_pool;
typedef void (*sparsec_task)(void *args, size_t index);
SPARSEC_HIDDEN sparsec_pool *sparsec__pool_create(size_t threads);
SPARSEC_HIDDEN void sparsec__pool_destroy(sparsec_pool *pool);
SPARSEC_HIDDEN size_t sparsec__pool_threads(const sparsec_pool *pool);
SPARSEC_HIDDEN void sparsec__parallel(sparsec_pool *pool, size_t count, sparsec_task task,
                                      void *args);

/* One plan: the model compiled at one set of input shapes (one per sequence-length bucket,
 * shortest first; a model without buckets has one). `run` returns 0, or non-zero after
 * writing a message into `error` (an input value the compiled shapes cannot accept, such as a
 * run-time Reshape target that disagrees with them). layer_ns: the plan's `layers` counters,
 * which each layer's time is added to when profiled; they start at `first_layer` of the
 * context's sparsec__profiled_layers. Every plan fits the arena of sparsec__arena_bytes. */
typedef struct sparsec_plan {
  int (*run)(unsigned char *arena, const void *const *inputs, void *const *outputs, char *error,
             size_t capacity, sparsec_pool *pool, uint64_t *layer_ns);
  size_t layers;
  size_t first_layer;
} sparsec_plan;
SPARSEC_HIDDEN extern const size_t sparsec__num_plans;
SPARSEC_HIDDEN extern const sparsec_plan sparsec__plans[];

/* Features this CPU and OS offer, as SPARSEC_FEATURE_* bits (cpu.c). */
SPARSEC_HIDDEN uint32_t sparsec__host_features(void);
/* Asks the OS for AMX tile state for this process; non-zero when granted. */
SPARSEC_HIDDEN int sparsec__request_amx(void);

#endif /* SPARSEC_MODEL_H */
