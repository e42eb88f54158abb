/* sparsec.h: the C ABI every library built by sparsec exports.
 *
 * A caller loads the library, checks the CPU, creates a run context (it owns the activation
 * arena, sized at compile time), runs it any number of times and destroys it. Contexts are
 * independent: use one per thread for concurrent runs. Tensors are dense, row-major, in the
 * dtypes and shapes that sparsec_model_info() and the generated model header describe;
 * input and output arrays are indexed in the model's input and output order.
 *
 * Plans. A library compiled with sequence-length buckets (`--input-shape
 * 'input_ids=1x{32,64,128}'`) holds one plan per length, shortest first: the same model at
 * that length, with the same inputs and outputs in the same order. sparsec_run runs the last
 * (longest) plan, whose shapes are the ones the model info's top-level "inputs" and "outputs"
 * and the model header describe; sparsec_run_plan runs any. The model info then also has
 * "plans" (per plan: "inputs", "outputs", "arena_bytes", "layers") and "buckets": "lengths"
 * (per plan), and "inputs" and "outputs" mapping each tensor whose shape follows the length to
 * its axes that equal it (a tensor not named there has the same shape in every plan, such as
 * an output pooled over the sequence). The header lists the lengths too. To run a shorter
 * request, pad its bucketed inputs with zeros up to the smallest length that fits (a zero
 * attention mask hides the padding from the model) and read the outputs' first positions
 * along their bucketed axes. A library without buckets has one plan, and no "plans" or
 * "buckets" in its info.
 */
#ifndef SPARSEC_H
#define SPARSEC_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SPARSEC_ABI_VERSION 3

#if defined(SPARSEC_BUILDING_LIBRARY)
#define SPARSEC_API __attribute__((visibility("default")))
#else
#define SPARSEC_API
#endif

/* cdef-begin: the declarations below are read verbatim by the Python loader (cffi). */
typedef struct sparsec_context sparsec_context;

enum sparsec_status {
  SPARSEC_OK = 0,
  SPARSEC_ERROR_CPU = 1,       /* the CPU or OS lacks an instruction set the library needs */
  SPARSEC_ERROR_NO_MEMORY = 2, /* the arena could not be allocated */
  SPARSEC_ERROR_ARGUMENT = 3,  /* a NULL context, input or output pointer */
  SPARSEC_ERROR_INPUT = 4      /* an input value the compiled shapes cannot accept */
};

/* SPARSEC_ABI_VERSION of the library. */
SPARSEC_API int sparsec_abi_version(void);

/* JSON: sparsec version, target, inputs and outputs (name, shape, dtype), arena size, layers. */
SPARSEC_API const char *sparsec_model_info(void);

/* SPARSEC_OK if this CPU and OS can run the library; otherwise writes a readable message
 * naming the missing features (NUL-terminated, truncated to capacity) and returns
 * SPARSEC_ERROR_CPU. Safe to call on any CPU: it runs before any specialised code. */
SPARSEC_API int sparsec_cpu_check(char *message, size_t capacity);

/* Creates a run context in *out with one thread per online CPU. Checks the CPU first. */
SPARSEC_API int sparsec_create(sparsec_context **out);

/* The same with `threads` threads (the caller's included); threads <= 0 means one per physical
 * core the process may run on (Linux; elsewhere one per online CPU). The threads live as long
 * as the context and sleep between runs. */
SPARSEC_API int sparsec_create_threads(sparsec_context **out, int threads);

/* How many threads a context runs with. */
SPARSEC_API int sparsec_threads(const sparsec_context *context);

/* Frees a context and its arena. NULL is allowed. */
SPARSEC_API void sparsec_destroy(sparsec_context *context);

/* Runs the model: inputs[i] points at input i, outputs[j] at caller-owned space for output j.
 * Allocates nothing. */
SPARSEC_API int sparsec_run(sparsec_context *context, const void *const *inputs,
                            void *const *outputs);

/* How many plans the library holds (1 without buckets). */
SPARSEC_API size_t sparsec_num_plans(void);

/* Runs plan `plan` (0 .. sparsec_num_plans() - 1) as sparsec_run runs the longest, with that
 * plan's shapes (model info "plans"). SPARSEC_ERROR_ARGUMENT for a plan that does not exist. */
SPARSEC_API int sparsec_run_plan(sparsec_context *context, size_t plan,
                                 const void *const *inputs, void *const *outputs);

/* The message of the last failed call on this context ("" if none). */
SPARSEC_API const char *sparsec_last_error(const sparsec_context *context);

/* Per-layer time, in the order of the "layers" of sparsec_model_info: writes the milliseconds
 * each layer has taken, summed over this context's runs, into ms[0..capacity) and returns the
 * number of layers. Returns 0 unless the library was compiled with profiling
 * (`sparsec compile --profile`), whose timer calls cost about 50 ns a layer. */
SPARSEC_API size_t sparsec_profile(const sparsec_context *context, double *ms, size_t capacity);

/* The same for plan `plan`, in the order of that plan's "layers" (model info "plans"). */
SPARSEC_API size_t sparsec_profile_plan(const sparsec_context *context, size_t plan,
                                        double *ms, size_t capacity);

/* A fixed description of a status code. */
SPARSEC_API const char *sparsec_status_message(int status);
/* cdef-end */

#ifdef __cplusplus
}
#endif

#endif /* SPARSEC_H */
