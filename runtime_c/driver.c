/* sparsec-driver: runs a compiled model from raw tensor files, for hosts where Python cannot
 * load the library (an AArch64 library under qemu-user on x86; sanitizer builds).
 *
 *   sparsec-driver LIBRARY THREADS INPUT.bin... -- OUTPUT.bin:BYTES...
 *   sparsec-driver --batch JOBS.txt
 *
 * Each input file holds one input's bytes in model order (C order, native byte order); each
 * output is written to its file with the given size. Exit status 0 on success; otherwise a
 * message on stderr: 2 for bad usage or files, 3 when the library cannot be loaded or
 * refuses this CPU, 4 when the run fails (the library's own message), 5 when it leaked memory
 * (sanitized drivers; see below).
 *
 * --batch runs many jobs in one process (under qemu, one emulator start instead of one per
 * job): each line of JOBS.txt is one job's arguments as above, separated by single spaces
 * (paths without spaces). For job i it prints "job i" on stdout, then any message, then
 * "status S" with the single-job exit status, and goes on with the next job; it exits 0
 * once every job has had its turn. A job that crashes the process leaves no status line.
 * "job i" goes to stderr too, so that a sanitizer's report can be told apart per job.
 *
 * Input and output buffers are allocated at exactly their size (64-byte aligned, as the arena),
 * so that a sanitized library reading or writing even one byte past an input or output is
 * caught (as in Python, whose numpy arrays have no padding either). A
 * driver built with AddressSanitizer also checks for leaks after every job (LeakSanitizer,
 * unless ASAN_OPTIONS=detect_leaks=0): status 5, the report on stderr, and --batch stops there
 * (exit 0: the caller runs the remaining jobs in a new process), as the leak would be reported
 * again after every later job. The check at exit is off, as every job has had its own. */
#define _POSIX_C_SOURCE 200809L
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__SANITIZE_ADDRESS__)
#define DRIVER_LEAK_CHECK 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define DRIVER_LEAK_CHECK 1
#endif
#endif

#ifdef DRIVER_LEAK_CHECK
#include <sanitizer/lsan_interface.h>
const char *__lsan_default_options(void);
const char *__lsan_default_options(void)
{
  return "leak_check_at_exit=0";
}
#endif

enum { LEAKED = 5 };

/* Exactly `size` bytes (at least one), 64-byte aligned; NULL when out of memory. */
static void *allocate(size_t size)
{
  void *data = NULL;
  return posix_memalign(&data, 64, size ? size : 1) == 0 ? data : NULL;
}

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
      data = allocate((size_t)length);
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

static int run_job(int argc, char **argv, FILE *log)
{
  if (argc < 2) {
    fprintf(log, "usage: sparsec-driver LIBRARY THREADS INPUT.bin... -- OUTPUT.bin:BYTES...\n");
    return 2;
  }
  int separator = 2;
  while (separator < argc && strcmp(argv[separator], "--") != 0)
    separator++;
  const int inputs = separator - 2, outputs = separator < argc ? argc - separator - 1 : 0;
  void *library = dlopen(argv[0], RTLD_NOW | RTLD_LOCAL);
  if (!library) {
    fprintf(log, "cannot load %s: %s\n", argv[0], dlerror());
    return 3;
  }
  cpu_check_fn cpu_check = (cpu_check_fn)dlsym(library, "sparsec_cpu_check");
  create_fn create = (create_fn)dlsym(library, "sparsec_create_threads");
  run_fn run = (run_fn)dlsym(library, "sparsec_run");
  destroy_fn destroy = (destroy_fn)dlsym(library, "sparsec_destroy");
  error_fn last_error = (error_fn)dlsym(library, "sparsec_last_error");
  int status = 0;
  const void **in = calloc((size_t)inputs + 1, sizeof *in);
  void **out = calloc((size_t)outputs + 1, sizeof *out);
  size_t *out_size = calloc((size_t)outputs + 1, sizeof *out_size);
  sparsec_context *context = NULL;
  char message[512];
  if (!cpu_check || !create || !run || !destroy || !last_error) {
    fprintf(log, "%s is not a sparsec library\n", argv[0]);
    status = 3;
  } else if (cpu_check(message, sizeof message) != 0) {
    fprintf(log, "%s: %s\n", argv[0], message);
    status = 3;
  } else if (!in || !out || !out_size) {
    fprintf(log, "out of memory\n");
    status = 2;
  }
  for (int i = 0; status == 0 && i < inputs; i++) {
    size_t size = 0;
    in[i] = read_file(argv[2 + i], &size);
    if (!in[i]) {
      fprintf(log, "cannot read input %s\n", argv[2 + i]);
      status = 2;
    }
  }
  for (int i = 0; status == 0 && i < outputs; i++) {
    const char *spec = argv[separator + 1 + i];
    const char *colon = strrchr(spec, ':');
    if (!colon) {
      fprintf(log, "bad output %s: expected FILE:BYTES\n", spec);
      status = 2;
      break;
    }
    out_size[i] = strtoull(colon + 1, NULL, 10);
    out[i] = allocate(out_size[i]);
    if (!out[i]) {
      fprintf(log, "out of memory for output %s\n", spec);
      status = 2;
    }
  }
  if (status == 0) {
    const int created = create(&context, atoi(argv[1]));
    if (created != 0) {
      fprintf(log, "cannot create a run context (status %d)\n", created);
      context = NULL;
      status = 3;
    }
  }
  if (status == 0 && run(context, in, out) != 0) {
    fprintf(log, "run failed: %s\n", last_error(context));
    status = 4;
  }
  if (context)
    destroy(context);
  for (int i = 0; status == 0 && i < outputs; i++) {
    const char *spec = argv[separator + 1 + i];
    const size_t name_length = (size_t)(strrchr(spec, ':') - spec);
    char *path = malloc(name_length + 1);
    FILE *file = NULL;
    if (path) {
      memcpy(path, spec, name_length);
      path[name_length] = '\0';
      file = fopen(path, "wb");
    }
    if (!file || fwrite(out[i], 1, out_size[i], file) != out_size[i]) {
      fprintf(log, "cannot write %s\n", path ? path : spec);
      status = 2;
    }
    if (file)
      fclose(file);
    free(path);
  }
  for (int i = 0; in && i < inputs; i++)
    free((void *)in[i]);
  for (int i = 0; out && i < outputs; i++)
    free(out[i]);
  free(in);
  free(out);
  free(out_size);
#ifdef DRIVER_LEAK_CHECK
  /* before dlclose: the report names the library's functions */
  if (__lsan_do_recoverable_leak_check() != 0) {
    fprintf(log, "memory leaked (LeakSanitizer's report is on stderr)\n");
    status = LEAKED; /* a failed run's message is above */
  }
#endif
  dlclose(library);
  return status;
}

/* Every line of `path` as one job; see the header comment. */
static int run_batch(const char *path)
{
  FILE *jobs = fopen(path, "r");
  if (!jobs) {
    fprintf(stderr, "cannot read the job list %s\n", path);
    return 2;
  }
  char *line = NULL;
  size_t capacity = 0;
  for (long job = 0; getline(&line, &capacity, jobs) != -1; job++) {
    line[strcspn(line, "\n")] = '\0';
    size_t words = 0;
    for (char *c = line; *c; c++)
      words += *c == ' ';
    char **args = calloc(words + 2, sizeof *args);
    if (!args) {
      fprintf(stderr, "out of memory\n");
      return 2;
    }
    int argc = 0;
    for (char *word = strtok(line, " "); word; word = strtok(NULL, " "))
      args[argc++] = word;
    printf("job %ld\n", job);
    fflush(stdout);
    fprintf(stderr, "job %ld\n", job);
    const int status = run_job(argc, args, stdout);
    printf("status %d\n", status);
    fflush(stdout);
    free(args);
    if (status == LEAKED)
      break; /* the leak stays: a later job's check would report it again */
  }
  free(line);
  fclose(jobs);
  return 0;
}

int main(int argc, char **argv)
{
  if (argc == 3 && strcmp(argv[1], "--batch") == 0)
    return run_batch(argv[2]);
  return run_job(argc - 1, argv + 1, stderr);
}
