/* sparsec_model.h: what the generated model code provides to the runtime (hidden symbols,
 * never exported from the library). */
#ifndef SPARSEC_MODEL_H
#define SPARSEC_MODEL_H

#include <stddef.h>
#include <stdint.h>

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

/* a * b + c, in one rounding where the target has fused multiply-add (x86 FMA, every AArch64):
 * the models build as ISO C, in which GCC never contracts a * b + c by itself, and a
 * polynomial's chain of separate multiplies and adds takes twice the instructions. Loops over
 * it still vectorise (GCC maps __builtin_fmaf onto vfmadd*ps). Elsewhere two roundings. */
#if defined(__FMA__) || defined(__aarch64__)
#define SPARSEC_FMADD(a, b, c) __builtin_fmaf((a), (b), (c))
#else
#define SPARSEC_FMADD(a, b, c) ((a) * (b) + (c))
#endif

/* e^x without a libm call, branch-free so that loops over it vectorise (glibc's expf is a
 * call per element, and its underflow path for the -FLT_MAX of attention masks is slow):
 * x = n ln2 + r with ln2 in two parts (Cephes), e^r by Cephes' degree-6 polynomial, 2^n put
 * into the exponent bits. Within 2 ulp of e^x for x in [-87.3, 88.7] (checked against float64
 * by tests/test_softmax.py); below that 0, above it inf; NaN stays NaN. */
static inline float sparsec__exp_in_range(float x) /* x in [-87.33654, 88.72283] */
{
  const float shifter = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
  const float n = SPARSEC_FMADD(x, 1.44269504088896341f, shifter) - shifter;
  float r = SPARSEC_FMADD(n, -0.693359375f, x);
  r = SPARSEC_FMADD(n, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = SPARSEC_FMADD(p, r, 1.3981999507e-3f);
  p = SPARSEC_FMADD(p, r, 8.3334519073e-3f);
  p = SPARSEC_FMADD(p, r, 4.1665795894e-2f);
  p = SPARSEC_FMADD(p, r, 1.6666665459e-1f);
  p = SPARSEC_FMADD(p, r, 5.0000001201e-1f);
  const float poly = SPARSEC_FMADD(p, r * r, r + 1.0f);
  /* 2^n as n + 127 in the exponent field; n <= 128 here, so split it to stay in range */
  const int32_t half = (int32_t)n >> 1;
  union { uint32_t bits; float value; } a = { (uint32_t)(half + 127) << 23 },
                                         b = { (uint32_t)((int32_t)n - half + 127) << 23 };
  return poly * a.value * b.value;
}

static inline float sparsec__expf(float x)
{
  const float low = -87.33654f, high = 88.72283f;
  /* NaN computes with 0 (converting NaN to int is undefined) and is returned as it came */
  const float clamped = x != x ? 0.0f : (x < low ? low : (x > high ? high : x));
  const float result = sparsec__exp_in_range(clamped);
  return x != x ? x : (x < low ? 0.0f : (x > high ? __builtin_inff() : result));
}

/* erfc(a) for a >= 0 (or NaN): Numerical Recipes' erfc, t e^(P(t) - a^2) with t = 1 / (1 + a/2)
 * (relative error under 1.2e-7). The exponent is at most ~3e-8, so e^x needs only a lower
 * clamp, which also sends NaN to a number: NaN still comes out through t. */
static inline float sparsec__erfc_nonnegative(float a)
{
  const float t = 1.0f / SPARSEC_FMADD(0.5f, a, 1.0f);
  float p = 0.17087277f;
  p = SPARSEC_FMADD(p, t, -0.82215223f);
  p = SPARSEC_FMADD(p, t, 1.48851587f);
  p = SPARSEC_FMADD(p, t, -1.13520398f);
  p = SPARSEC_FMADD(p, t, 0.27886807f);
  p = SPARSEC_FMADD(p, t, -0.18628806f);
  p = SPARSEC_FMADD(p, t, 0.09678418f);
  p = SPARSEC_FMADD(p, t, 0.37409196f);
  p = SPARSEC_FMADD(p, t, 1.00002368f);
  p = SPARSEC_FMADD(p, t, -1.26551223f);
  const float exponent = SPARSEC_FMADD(-a, a, p);
  return t * sparsec__exp_in_range(exponent > -87.33654f ? exponent : -87.33654f);
}

/* erf(x), branch-free like sparsec__expf (glibc's erff is a call per element: GELU spent a
 * fifth of a small encoder's run in it). |x| < 0.5: the Taylor series to x^15 (the next term
 * is below 1e-9 of the sum); otherwise 1 - erfc(|x|) (sparsec__erfc_nonnegative). Within 4 ulp of erf (tests/test_softmax.py checks
 * it against float64); both branches are computed and one selected. */
static inline float sparsec__erff(float x)
{
  const float a = x < 0.0f ? -x : x;
  const float a2 = a * a;
  /* 2/sqrt(pi) sum_n (-1)^n a^(2n) / (n! (2n + 1)), n = 0..7 */
  float series = -1.49256504e-5f;
  series = SPARSEC_FMADD(series, a2, 1.20553330e-4f);
  series = SPARSEC_FMADD(series, a2, -8.54832702e-4f);
  series = SPARSEC_FMADD(series, a2, 5.22397763e-3f);
  series = SPARSEC_FMADD(series, a2, -2.68661706e-2f);
  series = SPARSEC_FMADD(series, a2, 1.12837917e-1f);
  series = SPARSEC_FMADD(series, a2, -3.76126389e-1f);
  series = SPARSEC_FMADD(series, a2, 1.12837917e+0f);
  const float small = series * a;
  const float large = 1.0f - sparsec__erfc_nonnegative(a);
  const float magnitude = a < 0.5f ? small : large;
  return x < 0.0f ? -magnitude : magnitude; /* NaN: neither branch changes it */
}

/* GELU(x) = x/2 (1 + erf(x / sqrt 2)) through erfc alone: 1 + erf(z) is erfc(-z) for z < 0
 * and 2 - erfc(z) otherwise, so both tails keep their relative precision and the series for
 * small |z| that sparsec__erff needs drops out (a third fewer operations: GELU was a sixth of
 * a MiniLM run). Within 8 ulp of GELU (tests/test_softmax.py). */
static inline float sparsec__gelu(float x)
{
  const float z = x * 0.707106781186547524f;
  const float a = z < 0.0f ? -z : z;
  const float erfc = sparsec__erfc_nonnegative(a);
  return 0.5f * x * (z < 0.0f ? erfc : 2.0f - erfc);
}

SPARSEC_HIDDEN extern const uint32_t sparsec__required_features;
SPARSEC_HIDDEN extern const size_t sparsec__arena_bytes;
SPARSEC_HIDDEN extern const size_t sparsec__num_inputs;
SPARSEC_HIDDEN extern const size_t sparsec__num_outputs;
SPARSEC_HIDDEN extern const char sparsec__model_info_json[];
/* Layers timed by sparsec__model_run when built with -DSPARSEC_PROFILE, else 0. */
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

/* Returns 0, or non-zero after writing a message into `error` (an input value the compiled
 * shapes cannot accept, such as a run-time Reshape target that disagrees with them).
 * layer_ns: sparsec__profiled_layers counters that each layer's time is added to. */
SPARSEC_HIDDEN int sparsec__model_run(unsigned char *arena, const void *const *inputs,
                                      void *const *outputs, char *error, size_t capacity,
                                      sparsec_pool *pool, uint64_t *layer_ns);

/* Features this CPU and OS offer, as SPARSEC_FEATURE_* bits (cpu.c). */
SPARSEC_HIDDEN uint32_t sparsec__host_features(void);
/* Asks the OS for AMX tile state for this process; non-zero when granted. */
SPARSEC_HIDDEN int sparsec__request_amx(void);

#endif /* SPARSEC_MODEL_H */
