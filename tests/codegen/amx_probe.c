/* amx_probe.c: drives runtime_c/sparsec_amx.h for tests/codegen/test_amx_emulation.py.
 * As a shared library: one tile dot product of given shapes (amx_probe_dot). As a program
 * (-DAMX_PROBE_MAIN): `amx_probe SCENARIO` runs one named misuse that the hardware faults on
 * (the emulation must abort with its message) or `valid`, which must exit 0. */
#include "sparsec_amx.h"

#include <stdint.h>
#include <string.h>

/* C (rows x colsb_c bytes) op= A (rows x colsb_a) . B (colsb_a / 4 x colsb_c), each operand
 * given as 16 rows of 64 bytes; c holds C before and after. op: 0 TDPBUSD, 1 TDPBSUD,
 * 2 TDPBSSD, 3 TDPBUUD, 4 TDPBF16PS. */
void amx_probe_dot(int op, int rows, int colsb_c, int colsb_a, const uint8_t *a,
                   const uint8_t *b, uint8_t *c)
{
  const uint8_t shape_rows[3] = { (uint8_t)rows, (uint8_t)rows, (uint8_t)(colsb_a / 4) };
  const uint16_t shape_colsb[3] = { (uint16_t)colsb_c, (uint16_t)colsb_a, (uint16_t)colsb_c };
  sparsec_tilecfg config;
  sparsec_amx_configure(&config, 3, shape_rows, shape_colsb);
  _tile_loadconfig(&config);
  _tile_loadd(0, c, 64);
  _tile_loadd(1, a, 64);
  _tile_loadd(2, b, 64);
  switch (op) {
  case 0: _tile_dpbusd(0, 1, 2); break;
  case 1: _tile_dpbsud(0, 1, 2); break;
  case 2: _tile_dpbssd(0, 1, 2); break;
  case 3: _tile_dpbuud(0, 1, 2); break;
  default: _tile_dpbf16ps(0, 1, 2); break;
  }
  memset(c, 0xa5, 16 * 64); /* what the store leaves alone shows as 0xa5 */
  _tile_stored(0, c, 64);
  _tile_release();
}

#ifdef AMX_PROBE_MAIN
#include <stdio.h>

static uint8_t data[16 * 64];

static void configure(uint8_t c_rows, uint16_t c_colsb, uint8_t a_rows, uint16_t a_colsb,
                      uint8_t b_rows, uint16_t b_colsb)
{
  const uint8_t rows[3] = { c_rows, a_rows, b_rows };
  const uint16_t colsb[3] = { c_colsb, a_colsb, b_colsb };
  sparsec_tilecfg config;
  sparsec_amx_configure(&config, 3, rows, colsb);
  _tile_loadconfig(&config);
}

int main(int argc, char **argv)
{
  if (argc != 2)
    return 2;
  const char *scenario = argv[1];
  sparsec_tilecfg config;
  memset(&config, 0, sizeof config);
  config.palette = 1;
  config.rows[0] = 16;
  config.colsb[0] = 64;
  if (!strcmp(scenario, "valid")) {
    configure(16, 64, 16, 64, 16, 64);
    _tile_zero(0);
    _tile_loadd(1, data, 64);
    _tile_loadd(2, data, 64);
    _tile_dpbusd(0, 1, 2);
    _tile_dpbf16ps(0, 1, 2);
    _tile_stored(0, data, 64);
    _tile_release();
    configure(4, 8, 4, 12, 3, 8); /* M=4, N=2 dwords, K=3 dwords */
    _tile_dpbusd(0, 1, 2);
    return 0;
  } else if (!strcmp(scenario, "palette-2")) {
    config.palette = 2;
    _tile_loadconfig(&config);
  } else if (!strcmp(scenario, "reserved-byte")) {
    config.reserved[3] = 1;
    _tile_loadconfig(&config);
  } else if (!strcmp(scenario, "rows-17")) {
    config.rows[0] = 17;
    _tile_loadconfig(&config);
  } else if (!strcmp(scenario, "colsb-65")) {
    config.colsb[0] = 65;
    _tile_loadconfig(&config);
  } else if (!strcmp(scenario, "rows-without-colsb")) {
    config.rows[1] = 4;
    _tile_loadconfig(&config);
  } else if (!strcmp(scenario, "tile-8-configured")) {
    config.rows[8] = 1;
    config.colsb[8] = 4;
    _tile_loadconfig(&config);
  } else if (!strcmp(scenario, "load-before-config")) {
    _tile_loadd(0, data, 64);
  } else if (!strcmp(scenario, "unconfigured-tile")) {
    _tile_loadconfig(&config);
    _tile_zero(3);
  } else if (!strcmp(scenario, "after-release")) {
    _tile_loadconfig(&config);
    _tile_release();
    _tile_zero(0);
  } else if (!strcmp(scenario, "same-tile-twice")) {
    configure(16, 64, 16, 64, 16, 64);
    _tile_dpbusd(0, 1, 1);
  } else if (!strcmp(scenario, "m-mismatch")) {
    configure(16, 64, 8, 64, 16, 64);
    _tile_dpbusd(0, 1, 2);
  } else if (!strcmp(scenario, "n-mismatch")) {
    configure(16, 64, 16, 64, 16, 32);
    _tile_dpbusd(0, 1, 2);
  } else if (!strcmp(scenario, "k-mismatch")) {
    configure(16, 64, 16, 64, 8, 64);
    _tile_dpbf16ps(0, 1, 2);
  } else if (!strcmp(scenario, "partial-dword")) {
    configure(16, 62, 16, 64, 16, 62);
    _tile_dpbusd(0, 1, 2);
  } else {
    return 2;
  }
  puts("no fault");
  return 0;
}
#endif
