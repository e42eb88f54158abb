/* runtime.c: the exported ABI of sparsec.h around the generated model code.
 * No globals: all mutable state lives in a run context. */
#define _GNU_SOURCE 1 /* sysconf(_SC_NPROCESSORS_ONLN), sched_getaffinity */
#define SPARSEC_BUILDING_LIBRARY 1
#include "sparsec.h"
#include "sparsec_model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef __linux__
#include <sched.h>
#endif

#define ARENA_ALIGNMENT 64

struct sparsec_context {
  unsigned char *arena;
  sparsec_pool *pool;
  uint64_t *layer_ns; /* per-layer time when the library is profiled, else NULL */
  char error[512];
};

int sparsec_abi_version(void)
{
  return SPARSEC_ABI_VERSION;
}

const char *sparsec_model_info(void)
{
  return sparsec__model_info_json;
}

int sparsec_cpu_check(char *message, size_t capacity)
{
  static const char *const names[] = SPARSEC_FEATURE_NAMES;
  const uint32_t missing = sparsec__required_features & ~sparsec__host_features();
  if (!missing && (sparsec__required_features & SPARSEC_FEATURE_AMX_TILE) &&
      !sparsec__request_amx()) {
    if (message && capacity)
      snprintf(message, capacity, "the CPU has AMX but the OS did not grant this process its "
               "tile state (arch_prctl ARCH_REQ_XCOMP_PERM failed: Linux 5.16 or later is "
               "needed); run on such a kernel, or rebuild with --target x86-avx512");
    return SPARSEC_ERROR_CPU;
  }
  if (!missing) {
    if (message && capacity)
      message[0] = '\0';
    return SPARSEC_OK;
  }
  if (message && capacity) {
    size_t used = (size_t)snprintf(message, capacity,
                                   "this library needs CPU features the host lacks:");
    for (size_t bit = 0; bit < sizeof names / sizeof names[0]; bit++) {
      if ((missing >> bit & 1u) && used < capacity)
        used += (size_t)snprintf(message + used, capacity - used, " %s", names[bit]);
    }
    if ((missing & (SPARSEC_FEATURE_AMX_TILE | SPARSEC_FEATURE_AMX_INT8)) && used < capacity)
      used += (size_t)snprintf(message + used, capacity - used,
                               " (AMX needs the CPU, Sapphire Rapids or later, and the OS's tile "
                               "state, Linux 5.16 or later)");
    if (used < capacity)
      snprintf(message + used, capacity - used,
               "; rebuild it with --target native (or a target `sparsec targets` marks as "
               "runnable here)");
  }
  return SPARSEC_ERROR_CPU;
}

int sparsec_create(sparsec_context **out)
{
  return sparsec_create_threads(out, 0);
}

#ifdef __linux__
static long read_topology(int cpu, const char *field)
{
  char path[96];
  long value = -1;
  snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/topology/%s", cpu, field);
  FILE *file = fopen(path, "r");
  if (file) {
    if (fscanf(file, "%ld", &value) != 1)
      value = -1;
    fclose(file);
  }
  return value;
}
#endif

/* One thread per physical core this process may run on: SMT siblings share a core's vector
 * units, and the kernels keep those busy. Linux sysfs topology within the affinity mask;
 * elsewhere, or when the topology is unreadable, the CPUs available. */
static int default_threads(void)
{
  const long online = sysconf(_SC_NPROCESSORS_ONLN);
  const int fallback = online > 0 ? (int)online : 1;
#ifdef __linux__
  cpu_set_t allowed;
  if (sched_getaffinity(0, sizeof allowed, &allowed) != 0)
    return fallback;
  static const int max_cores = 1024;
  long seen[1024];
  int cores = 0;
  for (int cpu = 0; cpu < CPU_SETSIZE && cores < max_cores; cpu++) {
    if (!CPU_ISSET(cpu, &allowed))
      continue;
    const long core = read_topology(cpu, "core_id");
    const long package = read_topology(cpu, "physical_package_id");
    if (core < 0 || package < 0)
      return CPU_COUNT(&allowed);
    const long key = package * 1048576 + core;
    int known = 0;
    for (int i = 0; i < cores && !known; i++)
      known = seen[i] == key;
    if (!known)
      seen[cores++] = key;
  }
  return cores > 0 ? cores : fallback;
#else
  return fallback;
#endif
}

int sparsec_create_threads(sparsec_context **out, int threads)
{
  if (!out)
    return SPARSEC_ERROR_ARGUMENT;
  if (threads <= 0)
    threads = default_threads();
  *out = NULL;
  if (sparsec_cpu_check(NULL, 0) != SPARSEC_OK)
    return SPARSEC_ERROR_CPU;
  sparsec_context *context = calloc(1, sizeof *context);
  if (!context)
    return SPARSEC_ERROR_NO_MEMORY;
  if (sparsec__arena_bytes) {
    /* aligned_alloc wants a size that is a multiple of the alignment. */
    size_t bytes = (sparsec__arena_bytes + ARENA_ALIGNMENT - 1) / ARENA_ALIGNMENT * ARENA_ALIGNMENT;
    context->arena = aligned_alloc(ARENA_ALIGNMENT, bytes);
    if (!context->arena) {
      free(context);
      return SPARSEC_ERROR_NO_MEMORY;
    }
  }
  if (sparsec__profiled_layers)
    context->layer_ns = calloc(sparsec__profiled_layers, sizeof *context->layer_ns);
  context->pool = sparsec__pool_create((size_t)threads);
  if (!context->pool || (sparsec__profiled_layers && !context->layer_ns)) {
    sparsec__pool_destroy(context->pool);
    free(context->layer_ns);
    free(context->arena);
    free(context);
    return SPARSEC_ERROR_NO_MEMORY;
  }
  *out = context;
  return SPARSEC_OK;
}

void sparsec_destroy(sparsec_context *context)
{
  if (!context)
    return;
  sparsec__pool_destroy(context->pool);
  free(context->layer_ns);
  free(context->arena);
  free(context);
}

/* sparsec_run's plan: buckets are shortest first, so a caller that ignores them gets the
 * longest, whose shapes are the ones the model info and header describe at the top level. */
static size_t default_plan(void)
{
  return sparsec__num_plans - 1;
}

size_t sparsec_num_plans(void)
{
  return sparsec__num_plans;
}

size_t sparsec_profile_plan(const sparsec_context *context, size_t plan, double *ms,
                            size_t capacity)
{
  if (!context || !context->layer_ns || plan >= sparsec__num_plans)
    return 0;
  const sparsec_plan *chosen = &sparsec__plans[plan];
  for (size_t i = 0; i < chosen->layers && i < capacity; i++)
    ms[i] = (double)context->layer_ns[chosen->first_layer + i] * 1e-6;
  return chosen->layers;
}

size_t sparsec_profile(const sparsec_context *context, double *ms, size_t capacity)
{
  return sparsec_profile_plan(context, default_plan(), ms, capacity);
}

int sparsec_run_plan(sparsec_context *context, size_t plan, const void *const *inputs,
                     void *const *outputs)
{
  if (!context)
    return SPARSEC_ERROR_ARGUMENT;
  if (plan >= sparsec__num_plans) {
    snprintf(context->error, sizeof context->error, "sparsec_run_plan: plan %zu does not "
             "exist; the library has %zu (sparsec_num_plans)", plan, sparsec__num_plans);
    return SPARSEC_ERROR_ARGUMENT;
  }
  if (!inputs || !outputs) {
    snprintf(context->error, sizeof context->error, "sparsec_run: inputs and outputs must "
             "not be NULL");
    return SPARSEC_ERROR_ARGUMENT;
  }
  for (size_t i = 0; i < sparsec__num_inputs; i++) {
    if (!inputs[i]) {
      snprintf(context->error, sizeof context->error, "sparsec_run: input %zu is NULL", i);
      return SPARSEC_ERROR_ARGUMENT;
    }
  }
  for (size_t i = 0; i < sparsec__num_outputs; i++) {
    if (!outputs[i]) {
      snprintf(context->error, sizeof context->error, "sparsec_run: output %zu is NULL", i);
      return SPARSEC_ERROR_ARGUMENT;
    }
  }
  context->error[0] = '\0';
  const sparsec_plan *chosen = &sparsec__plans[plan];
  if (chosen->run(context->arena, inputs, outputs, context->error, sizeof context->error,
                  context->pool, context->layer_ns ? context->layer_ns + chosen->first_layer
                                                   : NULL))
    return SPARSEC_ERROR_INPUT;
  return SPARSEC_OK;
}

int sparsec_run(sparsec_context *context, const void *const *inputs, void *const *outputs)
{
  return sparsec_run_plan(context, default_plan(), inputs, outputs);
}

int sparsec_threads(const sparsec_context *context)
{
  return context ? (int)sparsec__pool_threads(context->pool) : 0;
}

const char *sparsec_last_error(const sparsec_context *context)
{
  return context ? context->error : "no context";
}

const char *sparsec_status_message(int status)
{
  switch (status) {
  case SPARSEC_OK: return "ok";
  case SPARSEC_ERROR_CPU: return "this CPU or OS lacks an instruction set the library needs";
  case SPARSEC_ERROR_NO_MEMORY: return "out of memory allocating the arena";
  case SPARSEC_ERROR_ARGUMENT: return "a NULL context, input or output pointer";
  case SPARSEC_ERROR_INPUT: return "an input value the compiled model cannot accept";
  default: return "unknown status";
  }
}
