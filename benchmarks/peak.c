/* Peak throughput of one core: 12 independent accumulator chains of vector FMAs (fp32), and,
 * when built with -mavx512vnni, of vpdpbusd (u8 x s8 -> s32, 4 multiply-adds per lane):
 * enough chains to cover latency on two pipes. Prints "fp32 GFLOP/s [int8 GOP/s]". Built by
 * benchmarks/spmm.py with the target's flags. The accumulators are named variables, not an
 * array: an array of vectors updated through inline assembly is kept in memory by gcc, and
 * the loop would measure stores instead. */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

#if defined(__AVX512F__)
typedef __m512 vec;
#define LANES 16
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define ADD _mm512_add_ps
#define STORE _mm512_storeu_ps
#else
typedef __m256 vec;
#define LANES 8
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define ADD _mm256_add_ps
#define STORE _mm256_storeu_ps
#endif

#define REPEAT12(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
static const long iterations = 200000000L / 12;

static double seconds_since(const struct timespec *t0)
{
  struct timespec t1;
  clock_gettime(CLOCK_MONOTONIC, &t1);
  return (t1.tv_sec - t0->tv_sec) + 1e-9 * (t1.tv_nsec - t0->tv_nsec);
}

static double fp32_gflops(void)
{
#define DECLARE(i) vec acc##i = SET1((float)i);
#define STEP(i) acc##i = FMA(acc##i, a, b);
#define SUM(i) sum = ADD(sum, acc##i);
  REPEAT12(DECLARE)
  const vec a = SET1(0.999999f), b = SET1(1e-7f);
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (long n = 0; n < iterations; n++) {
    REPEAT12(STEP)
  }
  const double seconds = seconds_since(&t0);
  vec sum = SET1(0.0f);
  REPEAT12(SUM)
  float out[LANES];
  STORE(out, sum);
  if (out[0] == 12345.0f)
    printf("!"); /* keep the result alive */
  return 2.0 * LANES * 12 * iterations / seconds / 1e9;
#undef DECLARE
#undef STEP
#undef SUM
}

#if defined(__AVX512VNNI__)
static double int8_gops(void)
{
#define DECLARE(i) __m512i acc##i = _mm512_set1_epi32(i);
#define STEP(i) __asm__("vpdpbusd %2, %1, %0" : "+v"(acc##i) : "v"(a), "v"(b));
#define SUM(i) sum = _mm512_add_epi32(sum, acc##i);
  REPEAT12(DECLARE)
  const __m512i a = _mm512_set1_epi32(0x01010101), b = _mm512_set1_epi32(0x01ff01ff);
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (long n = 0; n < iterations; n++) {
    REPEAT12(STEP)
  }
  const double seconds = seconds_since(&t0);
  __m512i sum = _mm512_setzero_si512();
  REPEAT12(SUM)
  if (_mm512_reduce_add_epi32(sum) == 12345)
    printf("!");
  return 2.0 * 64 * 12 * iterations / seconds / 1e9;
#undef DECLARE
#undef STEP
#undef SUM
}
#endif

int main(void)
{
  printf("%.1f", fp32_gflops());
#if defined(__AVX512VNNI__)
  printf(" %.1f", int8_gops());
#endif
  printf("\n");
  return 0;
}
