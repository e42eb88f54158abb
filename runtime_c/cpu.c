/* cpu.c: which instruction sets this CPU and OS can run. Compiled without any -m flags, so it
 * runs on every CPU of its architecture, before any specialised code. */
#include "sparsec_model.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

static uint64_t read_xcr0(void)
{
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return ((uint64_t)edx << 32) | eax;
}

uint32_t sparsec__host_features(void)
{
  unsigned eax, ebx, ecx, edx;
  uint32_t features = 0;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx))
    return 0;
  const int osxsave = (ecx >> 27) & 1;
  const int fma = (ecx >> 12) & 1;
  if (!osxsave)
    return 0;
  const uint64_t xcr0 = read_xcr0();
  const int os_avx = (xcr0 & 0x6) == 0x6;          /* XMM and YMM state */
  const int os_avx512 = (xcr0 & 0xe6) == 0xe6;     /* plus opmask and ZMM state */
  if (!os_avx || !__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx))
    return 0;
  if ((ebx >> 5) & 1)
    features |= SPARSEC_FEATURE_AVX2;
  if (fma)
    features |= SPARSEC_FEATURE_FMA;
  const unsigned max_subleaf = eax;
  if (os_avx512) {
    if ((ebx >> 16) & 1) features |= SPARSEC_FEATURE_AVX512F;
    if ((ebx >> 17) & 1) features |= SPARSEC_FEATURE_AVX512DQ;
    if ((ebx >> 30) & 1) features |= SPARSEC_FEATURE_AVX512BW;
    if ((ebx >> 31) & 1) features |= SPARSEC_FEATURE_AVX512VL;
    if ((ecx >> 11) & 1) features |= SPARSEC_FEATURE_AVX512VNNI;
  }
  /* AVX-VNNI (VEX-encoded, 256-bit) sits in leaf 7 subleaf 1, EAX bit 4. */
  if (max_subleaf >= 1 && __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) && ((eax >> 4) & 1))
    features |= SPARSEC_FEATURE_AVXVNNI;
#ifdef SPARSEC_HIDE_FEATURES
  /* Test builds pretend the CPU lacks these bits, to exercise the refusal path. */
  features &= ~(uint32_t)(SPARSEC_HIDE_FEATURES);
#endif
  return features;
}
#elif defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>

uint32_t sparsec__host_features(void)
{
  uint32_t features = 0;
  if (getauxval(AT_HWCAP) & (1ul << 20)) /* HWCAP_ASIMDDP */
    features |= SPARSEC_FEATURE_ASIMDDP;
#ifdef SPARSEC_HIDE_FEATURES
  features &= ~(uint32_t)(SPARSEC_HIDE_FEATURES);
#endif
  return features;
}
#else
uint32_t sparsec__host_features(void)
{
  return 0; /* this OS or architecture reports no features sparsec checks */
}
#endif
