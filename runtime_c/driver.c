/* sparsec-driver: runs a compiled model from raw tensor files, for hosts where Python cannot
 * load the library (an AArch64 library under qemu-user on x86; sanitizer builds).
 *
 *   sparsec-driver LIBRARY THREADS INPUT.bin... -- OUTPUT.bin:BYTES...
 *
 * Each input file holds one input's bytes in model order (C order, native byte order); each
 * output is written to its file with the given size. Exit status 0 on success; otherwise a
 * message on stderr: 2 for bad usage or files, 3 when the library cannot be loaded or
 * refuses this CPU, 4 when the run fails (the library's own message). */
#define _POSIX_C_SOURCE 200809L
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct sparsec_context sparsec_context;
typedef int (*create_fn)(sparsec_context **, int);
typedef int (*run_fn)(sparsec_context *, const void *const *, void *const *);
typedef void (*destroy_fn)(sparsec_context *);
typedef const char *(*error_fn)(const sparsec_context *);
typedef int (*cpu_check_fn)(char *, size_t);

static void *read_file(const char *path, size_t *size)
{
  FILE *file = fopen(path, "rb");
  if (!file)
    return NULL;
  void *data = NULL;
  if (fseek(file, 0, SEEK_END) == 0) {
    const long length = ftell(file);
    if (length >= 0 && fseek(file, 0, SEEK_SET) == 0) {
      /* 64-byte aligned, as the arena: kernels may use aligned vector loads on inputs */
      data = aligned_alloc(64, ((size_t)length + 64) / 64 * 64);
      if (data && fread(data, 1, (size_t)length, file) != (size_t)length) {
        free(data);
        data = NULL;
      }
      *size = (size_t)length;
    }
  }
  fclose(file);
  return data;
}

int main(int argc, char **argv)
{
  if (argc < 3) {
    fprintf(stderr, "usage: %s LIBRARY THREADS INPUT.bin... -- OUTPUT.bin:BYTES...\n", argv[0]);
    return 2;
  }
  int separator = 3;
  while (separator < argc && strcmp(argv[separator], "--") != 0)
    separator++;
  const int inputs = separator - 3, outputs = separator < argc ? argc - separator - 1 : 0;
  void *library = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!library) {
    fprintf(stderr, "cannot load %s: %s\n", argv[1], dlerror());
    return 3;
  }
  cpu_check_fn cpu_check = (cpu_check_fn)dlsym(library, "sparsec_cpu_check");
  create_fn create = (create_fn)dlsym(library, "sparsec_create_threads");
  run_fn run = (run_fn)dlsym(library, "sparsec_run");
  destroy_fn destroy = (destroy_fn)dlsym(library, "sparsec_destroy");
  error_fn last_error = (error_fn)dlsym(library, "sparsec_last_error");
  if (!cpu_check || !create || !run || !destroy || !last_error) {
    fprintf(stderr, "%s is not a sparsec library\n", argv[1]);
    return 3;
  }
  char message[512];
  if (cpu_check(message, sizeof message) != 0) {
    fprintf(stderr, "%s: %s\n", argv[1], message);
    return 3;
  }
  const void **in = calloc((size_t)inputs + 1, sizeof *in);
  void **out = calloc((size_t)outputs + 1, sizeof *out);
  size_t *out_size = calloc((size_t)outputs + 1, sizeof *out_size);
  if (!in || !out || !out_size)
    return 2;
  for (int i = 0; i < inputs; i++) {
    size_t size = 0;
    in[i] = read_file(argv[3 + i], &size);
    if (!in[i]) {
      fprintf(stderr, "cannot read input %s\n", argv[3 + i]);
      return 2;
    }
  }
  for (int i = 0; i < outputs; i++) {
    const char *spec = argv[separator + 1 + i];
    const char *colon = strrchr(spec, ':');
    if (!colon) {
      fprintf(stderr, "bad output %s: expected FILE:BYTES\n", spec);
      return 2;
    }
    out_size[i] = strtoull(colon + 1, NULL, 10);
    out[i] = aligned_alloc(64, (out_size[i] + 64) / 64 * 64);
    if (!out[i])
      return 2;
  }
  sparsec_context *context = NULL;
  int status = create(&context, atoi(argv[2]));
  if (status != 0) {
    fprintf(stderr, "cannot create a run context (status %d)\n", status);
    return 3;
  }
  status = run(context, in, out);
  if (status != 0) {
    fprintf(stderr, "run failed: %s\n", last_error(context));
    return 4;
  }
  destroy(context);
  for (int i = 0; i < outputs; i++) {
    const char *spec = argv[separator + 1 + i];
    const size_t name_length = (size_t)(strrchr(spec, ':') - spec);
    char *path = malloc(name_length + 1);
    if (!path)
      return 2;
    memcpy(path, spec, name_length);
    path[name_length] = '\0';
    FILE *file = fopen(path, "wb");
    if (!file || fwrite(out[i], 1, out_size[i], file) != out_size[i]) {
      fprintf(stderr, "cannot write %s\n", path);
      return 2;
    }
    fclose(file);
    free(path);
  }
  for (int i = 0; i < inputs; i++)
    free((void *)in[i]);
  for (int i = 0; i < outputs; i++)
    free(out[i]);
  free(in);
  free(out);
  free(out_size);
  dlclose(library);
  return 0;
}
