/* cpu.c: which instruction sets this CPU and OS can run. Compiled without any -m flags, so it
 * runs on every CPU of its architecture, before any specialised code. */
#define _DEFAULT_SOURCE 1 /* syscall() */
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
  const int os_amx = (xcr0 & 0x60000) == 0x60000;  /* XTILECFG and XTILEDATA state */
  if (!os_avx || !__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx))
    return 0;
  if (os_amx) {
    if ((edx >> 24) & 1) features |= SPARSEC_FEATURE_AMX_TILE;
    if ((edx >> 25) & 1) features |= SPARSEC_FEATURE_AMX_INT8;
    if ((edx >> 22) & 1) features |= SPARSEC_FEATURE_AMX_BF16;
  }
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
    if ((ecx >> 6) & 1) features |= SPARSEC_FEATURE_AVX512VBMI2;
  }
  /* AVX-VNNI (VEX-encoded, 256-bit) and AVX512_BF16 sit in leaf 7 subleaf 1, EAX bits 4, 5. */
  if (max_subleaf >= 1 && __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx)) {
    if ((eax >> 4) & 1)
      features |= SPARSEC_FEATURE_AVXVNNI;
    if (((eax >> 5) & 1) && (features & SPARSEC_FEATURE_AVX512F))
      features |= SPARSEC_FEATURE_AVX512BF16;
  }
#ifdef SPARSEC_HIDE_FEATURES
  /* Test builds pretend the CPU lacks these bits, to exercise the refusal path. */
  features &= ~(uint32_t)(SPARSEC_HIDE_FEATURES);
#endif
  return features;
}

#if defined(__x86_64__) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>

/* Linux (5.16 and later) gives a process AMX tile data state only on request; an AMX
 * instruction before that raises SIGILL. Asking again is a no-op, so a library asks every
 * time it checks the CPU (loading, creating a context), once per process in effect. */
int sparsec__request_amx(void)
{
  enum { ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18 };
  return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
}
#else
int sparsec__request_amx(void)
{
  return 0; /* no AMX outside x86-64 Linux */
}
#endif
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

#if !defined(__x86_64__) && !defined(__i386__)
int sparsec__request_amx(void)
{
  return 0; /* AMX is x86-64 only */
}
#endif
