/* Peak fp32 FMA throughput of one core: 12 independent accumulator chains of vector FMAs,
 * enough to cover FMA latency on two pipes. Prints GFLOP/s. Built by benchmarks/spmm.py with
 * the target's flags (-mavx512f or -mavx2 -mfma). */
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

int main(void)
{
  vec acc[12];
  for (int i = 0; i < 12; i++)
    acc[i] = SET1((float)i);
  const vec a = SET1(0.999999f), b = SET1(1e-7f);
  const long iterations = 200000000L / 12;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (long n = 0; n < iterations; n++) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; i++)
      acc[i] = FMA(acc[i], a, b);
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  vec sum = acc[0];
  for (int i = 1; i < 12; i++)
    sum = ADD(sum, acc[i]);
  float out[LANES];
  STORE(out, sum);
  const double seconds = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
  printf("%.1f %g\n", 2.0 * LANES * 12 * iterations / seconds / 1e9, (double)out[0]);
  return 0;
}
