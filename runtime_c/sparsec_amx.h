/* sparsec_amx.h: Intel AMX tile intrinsics for generated kernels, two ways.
 *
 * Built normally (-mamx-tile -mamx-int8 -mamx-bf16), the names are the compiler's own and the
 * code runs on AMX hardware. Built with -DSPARSEC_AMX_EMULATE, the same names are implemented
 * here in scalar C, for testing AMX kernels on CPUs without AMX. The emulation is only worth
 * trusting if it refuses what the hardware refuses: every check below is a fault of the real
 * instruction (#GP for a bad LDTILECFG, #UD for tile use without a valid configuration or
 * with mismatched shapes), reported on stderr with the rule broken, then abort(). Arithmetic
 * is bit-exact: TDPBUSD wraps in int32; TDPBF16PS treats bf16 denormal inputs as zero,
 * rounds each addition to nearest even, and flushes denormal results to zero.
 *
 * Tile state (configuration and the 8 tiles) is per thread, as on the hardware. Rows and
 * columns past a tile's configured shape read as zero and are zeroed by every write.
 * Stricter than the hardware in one place: a nonzero start_row (which only resumes an
 * interrupted load) is refused, because sparsec never configures one.
 */
#ifndef SPARSEC_AMX_H
#define SPARSEC_AMX_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* The 64-byte operand of LDTILECFG, palette 1: 8 tiles of up to 16 rows of 64 bytes. */
typedef struct {
  uint8_t palette;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16]; /* bytes per row; entries 8..15 are reserved (zero) */
  uint8_t rows[16];   /* entries 8..15 are reserved (zero) */
} sparsec_tilecfg;
_Static_assert(sizeof(sparsec_tilecfg) == 64, "TILECFG is 64 bytes");

enum { SPARSEC_AMX_TILES = 8, SPARSEC_AMX_MAX_ROWS = 16, SPARSEC_AMX_MAX_COLSB = 64 };

#ifndef SPARSEC_AMX_EMULATE

#include <immintrin.h>
#define SPARSEC_AMX_EMULATED 0

#else /* SPARSEC_AMX_EMULATE */

#include <stdio.h>
#include <stdlib.h>

#define SPARSEC_AMX_EMULATED 1

struct sparsec_amx_state {
  int configured;
  sparsec_tilecfg config;
  uint8_t tile[SPARSEC_AMX_TILES][SPARSEC_AMX_MAX_ROWS][SPARSEC_AMX_MAX_COLSB];
};

static _Thread_local struct sparsec_amx_state sparsec_amx_state;

__attribute__((noreturn, cold)) static void sparsec_amx_fault(const char *instruction,
                                                             const char *fault,
                                                             const char *rule)
{
  fprintf(stderr, "sparsec AMX emulation: %s raises %s: %s\n", instruction, fault, rule);
  fflush(stderr);
  abort();
}

static inline void sparsec_amx_release(void)
{
  memset(&sparsec_amx_state, 0, sizeof sparsec_amx_state);
}

static inline void sparsec_amx_loadconfig(const void *memory)
{
  sparsec_tilecfg config;
  memcpy(&config, memory, sizeof config);
  if (config.palette > 1)
    sparsec_amx_fault("LDTILECFG", "#GP", "palette must be 0 or 1");
  if (config.palette == 0) { /* the init state: no configuration, tiles zeroed */
    sparsec_amx_release();
    return;
  }
  for (size_t i = 0; i < sizeof config.reserved; i++)
    if (config.reserved[i])
      sparsec_amx_fault("LDTILECFG", "#GP", "bytes 2-15 are reserved and must be zero");
  if (config.start_row >= SPARSEC_AMX_MAX_ROWS)
    sparsec_amx_fault("LDTILECFG", "#GP", "start_row must be below the palette's 16 rows");
  if (config.start_row)
    sparsec_amx_fault("LDTILECFG", "#GP (emulation)",
                      "start_row only resumes an interrupted load; sparsec sets it to 0");
  for (int t = 0; t < 16; t++) {
    if (t >= SPARSEC_AMX_TILES) {
      if (config.colsb[t] || config.rows[t])
        sparsec_amx_fault("LDTILECFG", "#GP", "palette 1 has 8 tiles; entries 8-15 must be zero");
      continue;
    }
    if (config.colsb[t] > SPARSEC_AMX_MAX_COLSB)
      sparsec_amx_fault("LDTILECFG", "#GP", "a tile row holds at most 64 bytes");
    if (config.rows[t] > SPARSEC_AMX_MAX_ROWS)
      sparsec_amx_fault("LDTILECFG", "#GP", "a tile holds at most 16 rows");
    if ((config.colsb[t] == 0) != (config.rows[t] == 0))
      sparsec_amx_fault("LDTILECFG", "#GP", "a tile's rows and colsb are both zero or both not");
  }
  memset(&sparsec_amx_state, 0, sizeof sparsec_amx_state);
  sparsec_amx_state.config = config;
  sparsec_amx_state.configured = 1;
}

static inline void sparsec_amx_storeconfig(void *memory)
{
  memcpy(memory, &sparsec_amx_state.config, sizeof sparsec_amx_state.config);
}

/* The tile, after the checks every tile instruction makes: tiles configured, a valid tile. */
static inline uint8_t (*sparsec_amx_tile(const char *instruction, int t))[SPARSEC_AMX_MAX_COLSB]
{
  if (!sparsec_amx_state.configured)
    sparsec_amx_fault(instruction, "#UD", "no tile configuration is loaded (LDTILECFG first)");
  if (t < 0 || t >= SPARSEC_AMX_TILES || sparsec_amx_state.config.rows[t] == 0)
    sparsec_amx_fault(instruction, "#UD", "the tile is not configured");
  return sparsec_amx_state.tile[t];
}

/* Rows and columns past the configuration are zero after any write to a tile. */
static inline void sparsec_amx_zero_upper(int t)
{
  const size_t rows = sparsec_amx_state.config.rows[t];
  const size_t colsb = sparsec_amx_state.config.colsb[t];
  for (size_t r = 0; r < SPARSEC_AMX_MAX_ROWS; r++)
    memset(&sparsec_amx_state.tile[t][r][r < rows ? colsb : 0], 0,
           SPARSEC_AMX_MAX_COLSB - (r < rows ? colsb : 0));
}

static inline void sparsec_amx_loadd(int t, const void *base, long stride)
{
  uint8_t(*tile)[SPARSEC_AMX_MAX_COLSB] = sparsec_amx_tile("TILELOADD", t);
  const size_t rows = sparsec_amx_state.config.rows[t];
  const size_t colsb = sparsec_amx_state.config.colsb[t];
  for (size_t r = 0; r < rows; r++)
    memcpy(tile[r], (const uint8_t *)base + (ptrdiff_t)r * stride, colsb);
  sparsec_amx_zero_upper(t);
}

static inline void sparsec_amx_stored(int t, void *base, long stride)
{
  uint8_t(*tile)[SPARSEC_AMX_MAX_COLSB] = sparsec_amx_tile("TILESTORED", t);
  const size_t rows = sparsec_amx_state.config.rows[t];
  const size_t colsb = sparsec_amx_state.config.colsb[t];
  for (size_t r = 0; r < rows; r++)
    memcpy((uint8_t *)base + (ptrdiff_t)r * stride, tile[r], colsb);
}

static inline void sparsec_amx_zero(int t)
{
  sparsec_amx_tile("TILEZERO", t);
  memset(sparsec_amx_state.tile[t], 0, sizeof sparsec_amx_state.tile[t]);
}

/* The shape rules of the tile dot products: C (M x N dwords) += A (M x K dwords) . B (K x N
 * dwords), three distinct tiles; returns K. */
static inline size_t sparsec_amx_dot_shape(const char *instruction, int c, int a, int b)
{
  sparsec_amx_tile(instruction, c);
  sparsec_amx_tile(instruction, a);
  sparsec_amx_tile(instruction, b);
  if (c == a || c == b || a == b)
    sparsec_amx_fault(instruction, "#UD", "the three tile operands must be distinct");
  const sparsec_tilecfg *config = &sparsec_amx_state.config;
  if (config->colsb[c] % 4 || config->colsb[a] % 4 || config->colsb[b] % 4)
    sparsec_amx_fault(instruction, "#UD", "tile rows must be whole dwords (colsb % 4 == 0)");
  if (config->rows[a] != config->rows[c])
    sparsec_amx_fault(instruction, "#UD", "A must have as many rows as C (M)");
  if (config->colsb[b] != config->colsb[c])
    sparsec_amx_fault(instruction, "#UD", "B must have as many bytes per row as C (N dwords)");
  if (config->colsb[a] / 4 != config->rows[b])
    sparsec_amx_fault(instruction, "#UD", "B must have one row per dword of A's rows (K)");
  return config->rows[b];
}

/* C[m][n] += sum over k < K, j < 4 of A[m][4k + j] * B[k][4n + j], bytes signed or unsigned
 * as the instruction says (TDPBUSD: u8 A, s8 B; TDPBSUD: s8 A, u8 B; ...), wrapping in int32. */
static inline void sparsec_amx_dot_int8(const char *instruction, int c, int a, int b,
                                        int a_signed, int b_signed)
{
  const size_t k_dwords = sparsec_amx_dot_shape(instruction, c, a, b);
  const size_t rows = sparsec_amx_state.config.rows[c];
  const size_t n_dwords = sparsec_amx_state.config.colsb[c] / 4u;
  uint8_t(*tc)[SPARSEC_AMX_MAX_COLSB] = sparsec_amx_state.tile[c];
  uint8_t(*ta)[SPARSEC_AMX_MAX_COLSB] = sparsec_amx_state.tile[a];
  uint8_t(*tb)[SPARSEC_AMX_MAX_COLSB] = sparsec_amx_state.tile[b];
  for (size_t m = 0; m < rows; m++)
    for (size_t n = 0; n < n_dwords; n++) {
      uint32_t acc;
      memcpy(&acc, &tc[m][4 * n], 4);
      for (size_t k = 0; k < k_dwords; k++)
        for (size_t j = 0; j < 4; j++) {
          const uint8_t x = ta[m][4 * k + j], y = tb[k][4 * n + j];
          const int32_t xv = a_signed ? (int32_t)(int8_t)x : (int32_t)x;
          const int32_t yv = b_signed ? (int32_t)(int8_t)y : (int32_t)y;
          acc += (uint32_t)(xv * yv);
        }
      memcpy(&tc[m][4 * n], &acc, 4);
    }
  sparsec_amx_zero_upper(c);
}

/* bf16 bits -> float, denormals as zero (DAZ). */
static inline float sparsec_amx_bf16_daz(uint16_t bits)
{
  union { uint32_t u; float f; } v = { (uint32_t)bits << 16 };
  if ((v.u & 0x7f800000u) == 0)
    v.u &= 0x80000000u;
  return v.f;
}

static inline float sparsec_amx_ftz(float x)
{
  union { float f; uint32_t u; } v = { x };
  if ((v.u & 0x7f800000u) == 0)
    v.u &= 0x80000000u;
  return v.f;
}

/* C[m][n] += A[m][2k+1] B[k][2n+1], then += A[m][2k] B[k][2n], for k < K, in that order, as
 * the instruction's definition: each product and each sum is a float operation that rounds to
 * nearest even and flushes a denormal result to zero (a product of two bf16 is exact unless
 * it leaves float's range). */
static inline void sparsec_amx_dpbf16ps(int c, int a, int b)
{
  const size_t k_dwords = sparsec_amx_dot_shape("TDPBF16PS", c, a, b);
  const size_t rows = sparsec_amx_state.config.rows[c];
  const size_t n_dwords = sparsec_amx_state.config.colsb[c] / 4u;
  uint8_t(*tc)[SPARSEC_AMX_MAX_COLSB] = sparsec_amx_state.tile[c];
  uint8_t(*ta)[SPARSEC_AMX_MAX_COLSB] = sparsec_amx_state.tile[a];
  uint8_t(*tb)[SPARSEC_AMX_MAX_COLSB] = sparsec_amx_state.tile[b];
  for (size_t m = 0; m < rows; m++)
    for (size_t n = 0; n < n_dwords; n++) {
      float acc;
      memcpy(&acc, &tc[m][4 * n], 4);
      for (size_t k = 0; k < k_dwords; k++)
        for (int j = 1; j >= 0; j--) {
          uint16_t x, y;
          memcpy(&x, &ta[m][4 * k + 2 * (size_t)j], 2);
          memcpy(&y, &tb[k][4 * n + 2 * (size_t)j], 2);
          /* exact unless it leaves float's range; FTZ as any operation of the instruction */
          const volatile float product = sparsec_amx_bf16_daz(x) * sparsec_amx_bf16_daz(y);
          acc = sparsec_amx_ftz(acc + sparsec_amx_ftz(product));
        }
      memcpy(&tc[m][4 * n], &acc, 4);
    }
  sparsec_amx_zero_upper(c);
}

/* The intrinsics' names and argument order (immintrin.h, whose own definitions, if it was
 * included, these replace), tile numbers as plain ints. */
#undef _tile_loadconfig
#undef _tile_storeconfig
#undef _tile_release
#undef _tile_loadd
#undef _tile_stream_loadd
#undef _tile_stored
#undef _tile_zero
#undef _tile_dpbf16ps
#define _tile_loadconfig(config) sparsec_amx_loadconfig(config)
#define _tile_storeconfig(config) sparsec_amx_storeconfig(config)
#define _tile_release() sparsec_amx_release()
#define _tile_loadd(dst, base, stride) sparsec_amx_loadd((dst), (base), (long)(stride))
#define _tile_stream_loadd(dst, base, stride) sparsec_amx_loadd((dst), (base), (long)(stride))
#define _tile_stored(src, base, stride) sparsec_amx_stored((src), (base), (long)(stride))
#define _tile_zero(dst) sparsec_amx_zero(dst)
#undef _tile_dpbusd
#undef _tile_dpbsud
#undef _tile_dpbssd
#undef _tile_dpbuud
#define _tile_dpbusd(c, a, b) sparsec_amx_dot_int8("TDPBUSD", (c), (a), (b), 0, 1)
#define _tile_dpbsud(c, a, b) sparsec_amx_dot_int8("TDPBSUD", (c), (a), (b), 1, 0)
#define _tile_dpbssd(c, a, b) sparsec_amx_dot_int8("TDPBSSD", (c), (a), (b), 1, 1)
#define _tile_dpbuud(c, a, b) sparsec_amx_dot_int8("TDPBUUD", (c), (a), (b), 0, 0)
#define _tile_dpbf16ps(c, a, b) sparsec_amx_dpbf16ps((c), (a), (b))

#endif /* SPARSEC_AMX_EMULATE */

/* A palette-1 configuration of tiles 0..count-1, each rows x colsb. */
static inline void sparsec_amx_configure(sparsec_tilecfg *config, int count, const uint8_t *rows,
                                         const uint16_t *colsb)
{
  memset(config, 0, sizeof *config);
  config->palette = 1;
  for (int t = 0; t < count; t++) {
    config->rows[t] = rows[t];
    config->colsb[t] = colsb[t];
  }
}

#endif /* SPARSEC_AMX_H */
