/* threads.c: the run context's thread pool. A region is done when its tasks are done, not when
 * every worker has checked in: the caller claims tasks alongside the workers and, when no
 * worker is running (the host is busy, or a worker sleeps), runs them all alone. Waiting spins
 * briefly, yields the CPU when the spin sees no progress, then sleeps. Nothing is allocated
 * while a model runs.
 *
 * Each thread (the caller is thread 0) has a home range in every region: the same share of
 * the task numbers each time. Kernels number their tasks by rows (token tiles, row tiles,
 * LayerNorm rows), so a thread goes on producing and then reading the same rows, from its own
 * cache, layer after layer, instead of reading half of them from the other core's, which is
 * slow (homes made MiniLM's 2-thread runs 6-10 % faster than one shared queue of tasks). A
 * thread that has emptied its home takes tasks from the others', so a slow or descheduled
 * thread holds a region up by at most the task it is running. */
#define _POSIX_C_SOURCE 200809L
#include "sparsec_model.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* A home's claim word: the region's generation in the high 32 bits, the home's unclaimed task
 * count in the low 32. A task is claimed by a compare-and-swap from (g, r) to (g, r - 1),
 * which takes the home's task end - r. Because the generation is in the same word, a thread
 * that read region g and was descheduled cannot claim a task of region g + 1 through g's
 * state: its swap fails. And because a successful swap means region g still had a task
 * unclaimed, hence unfinished, the caller cannot have moved on, so the region's fields, read
 * after the swap, are g's. */
#define GENERATION_SHIFT 32
#define REMAINING_MASK 0xffffffffu

struct home {
  _Alignas(64) atomic_uint_least64_t claim; /* a line of its own: other threads steal from it */
};

struct worker {
  sparsec_pool *pool;
  size_t home; /* 1..workers: the caller's home is 0 */
  pthread_t thread;
};

/* Cache lines: what waiting workers read (the newest region's generation), the region's
 * fields, the pending counter and the sleep bookkeeping each sit alone, and the pool and its
 * homes are allocated on whole lines of their own, so that no other data shares a line that
 * threads spin on. */
struct sparsec_pool {
  _Alignas(64) atomic_uint_least64_t published; /* generation << GENERATION_SHIFT */
  _Alignas(64) sparsec_task task; /* written by the caller only between regions */
  void *args;
  size_t count;
  _Alignas(64) atomic_size_t pending; /* tasks of the current region not yet finished */
  _Alignas(64) atomic_int sleepers;   /* workers asleep on `start`, or about to be */
  atomic_int caller_asleep;           /* the caller is asleep on `finished`, or about to be */
  atomic_int stop;
  size_t workers;
  struct home *homes;     /* workers + 1 */
  struct worker *each;    /* workers */
  pthread_mutex_t mutex;
  pthread_cond_t start;
  pthread_cond_t finished;
};

/* Waiting, in three steps. Spin (pause) while spinning pays: a model runs its regions back to
 * back, microseconds apart, and waking a sleeping thread costs tens of microseconds. Every
 * YIELD_EVERY pauses without progress, yield the CPU: when threads outnumber the cores free to
 * run them, the thread being waited for may be waiting for this one's CPU, and yielding (a
 * cheap system call when nothing else is runnable) lets it run. After SPIN_NS in all, sleep:
 * idle threads cost nothing. The bound is in time, not pauses, since a pause lasts from a few
 * to ~140 cycles depending on the CPU. */
#define SPIN_NS 100000
#define YIELD_EVERY 256

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ volatile("yield");
#endif
}

static uint64_t now_ns(void)
{
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
}

/* One step of a bounded spin; `round` counts steps since the waited-for value last changed.
 * Returns 0 once the spin has lasted SPIN_NS and the caller should sleep. */
static int spin_step(unsigned *round, uint64_t *deadline)
{
  if (++*round % YIELD_EVERY != 0) {
    cpu_relax();
    return 1;
  }
  sched_yield();
  const uint64_t now = now_ns();
  if (*deadline == 0)
    *deadline = now + SPIN_NS;
  return now < *deadline;
}

/* Where home `home` of `threads` starts among `count` tasks; it ends where the next starts. */
static size_t home_start(size_t count, size_t threads, size_t home)
{
  return (size_t)((uint64_t)count * home / threads);
}

/* Claims and runs region `generation`'s tasks from one home until none is left there. */
static void run_home(sparsec_pool *pool, uint64_t generation, size_t home)
{
  atomic_uint_least64_t *claim = &pool->homes[home].claim;
  uint64_t word = atomic_load_explicit(claim, memory_order_acquire);
  for (;;) {
    const uint64_t remaining = word & REMAINING_MASK;
    if (word >> GENERATION_SHIFT != generation || remaining == 0)
      return;
    /* acquire: pairs with the caller's publishing stores, through the chain of swaps since */
    if (!atomic_compare_exchange_weak_explicit(claim, &word, word - 1,
                                               memory_order_acquire, memory_order_acquire))
      continue;
    const size_t end = home_start(pool->count, pool->workers + 1, home + 1);
    pool->task(pool->args, end - (size_t)remaining);
    /* release: the task's writes are the caller's once it sees pending reach 0 */
    if (atomic_fetch_sub_explicit(&pool->pending, 1, memory_order_seq_cst) == 1
        && atomic_load_explicit(&pool->caller_asleep, memory_order_seq_cst)) {
      pthread_mutex_lock(&pool->mutex);
      pthread_cond_signal(&pool->finished);
      pthread_mutex_unlock(&pool->mutex);
    }
    word = atomic_load_explicit(claim, memory_order_acquire);
  }
}

/* Home `self` first, then what is left in the others'. */
static void run_tasks(sparsec_pool *pool, uint64_t generation, size_t self)
{
  const size_t threads = pool->workers + 1;
  for (size_t k = 0; k < threads; k++)
    run_home(pool, generation, (self + k) % threads);
}

static void *worker_main(void *arg)
{
  const struct worker *self = arg;
  sparsec_pool *pool = self->pool;
  uint64_t seen = 0; /* the generation this worker last joined; regions count from 1 */
  for (;;) {
    uint64_t generation = atomic_load_explicit(&pool->published, memory_order_acquire)
                          >> GENERATION_SHIFT;
    unsigned round = 0;
    uint64_t deadline = 0;
    while (generation == seen && !atomic_load_explicit(&pool->stop, memory_order_relaxed)
           && spin_step(&round, &deadline))
      generation = atomic_load_explicit(&pool->published, memory_order_acquire)
                   >> GENERATION_SHIFT;
    if (generation == seen) {
      /* The caller reads `sleepers` after publishing a region, and this worker reads the
       * published generation after counting itself in (both sequentially consistent), so
       * either the caller broadcasts, or this worker sees the new region and does not wait. */
      pthread_mutex_lock(&pool->mutex);
      atomic_fetch_add_explicit(&pool->sleepers, 1, memory_order_seq_cst);
      while ((generation = atomic_load_explicit(&pool->published, memory_order_seq_cst)
                           >> GENERATION_SHIFT) == seen
             && !atomic_load_explicit(&pool->stop, memory_order_relaxed))
        pthread_cond_wait(&pool->start, &pool->mutex);
      atomic_fetch_sub_explicit(&pool->sleepers, 1, memory_order_relaxed);
      pthread_mutex_unlock(&pool->mutex);
    }
    if (atomic_load_explicit(&pool->stop, memory_order_relaxed))
      break;
    /* A worker that slept through several regions joins the newest; the ones it missed were
     * finished without it. */
    seen = generation;
    run_tasks(pool, generation, self->home);
  }
  return NULL;
}

static void pool_free(sparsec_pool *pool)
{
  free(pool->each);
  free(pool->homes);
  free(pool);
}

sparsec_pool *sparsec__pool_create(size_t threads)
{
  sparsec_pool *pool = aligned_alloc(_Alignof(sparsec_pool), sizeof *pool); /* whole lines */
  if (!pool)
    return NULL;
  memset(pool, 0, sizeof *pool);
  pool->workers = threads > 1 ? threads - 1 : 0;
  pool->homes = aligned_alloc(_Alignof(struct home), (pool->workers + 1) * sizeof *pool->homes);
  pool->each = pool->workers ? calloc(pool->workers, sizeof *pool->each) : NULL;
  if (!pool->homes || (pool->workers && !pool->each)) {
    pool_free(pool);
    return NULL;
  }
  for (size_t i = 0; i <= pool->workers; i++)
    atomic_init(&pool->homes[i].claim, 0);
  pthread_mutex_init(&pool->mutex, NULL);
  pthread_cond_init(&pool->start, NULL);
  pthread_cond_init(&pool->finished, NULL);
  atomic_init(&pool->published, 0);
  atomic_init(&pool->pending, 0);
  atomic_init(&pool->sleepers, 0);
  atomic_init(&pool->caller_asleep, 0);
  atomic_init(&pool->stop, 0);
  const size_t wanted = pool->workers;
  for (size_t i = 0; i < wanted; i++) {
    pool->each[i].pool = pool;
    pool->each[i].home = i + 1;
    if (pthread_create(&pool->each[i].thread, NULL, worker_main, &pool->each[i]) != 0) {
      /* run with the workers that did start: homes are counted from pool->workers */
      pool->workers = i;
      break;
    }
  }
  return pool;
}

void sparsec__pool_destroy(sparsec_pool *pool)
{
  if (!pool)
    return;
  pthread_mutex_lock(&pool->mutex);
  atomic_store(&pool->stop, 1);
  pthread_cond_broadcast(&pool->start);
  pthread_mutex_unlock(&pool->mutex);
  for (size_t i = 0; i < pool->workers; i++)
    pthread_join(pool->each[i].thread, NULL);
  pthread_cond_destroy(&pool->finished);
  pthread_cond_destroy(&pool->start);
  pthread_mutex_destroy(&pool->mutex);
  pool_free(pool);
}

size_t sparsec__pool_threads(const sparsec_pool *pool)
{
  return pool ? pool->workers + 1 : 1;
}

void sparsec__parallel(sparsec_pool *pool, size_t count, sparsec_task task, void *args)
{
  if (!pool || pool->workers == 0 || count <= 1 || count > REMAINING_MASK) {
    for (size_t i = 0; i < count; i++)
      task(args, i);
    return;
  }
  /* The previous region's tasks are all finished (pending reached 0) and none is left to
   * claim, so no thread reads these fields until the store below publishes them. */
  pool->task = task;
  pool->args = args;
  pool->count = count;
  atomic_store_explicit(&pool->pending, count, memory_order_relaxed);
  const uint64_t generation =
    ((atomic_load_explicit(&pool->published, memory_order_relaxed) >> GENERATION_SHIFT) + 1)
    & REMAINING_MASK;
  /* Generation 0 is the pool's start, which workers have already seen; skip it on wrapping. */
  const uint64_t published = generation ? generation : 1;
  const size_t threads = pool->workers + 1;
  for (size_t home = 0; home < threads; home++)
    atomic_store_explicit(&pool->homes[home].claim,
                          published << GENERATION_SHIFT
                            | (home_start(count, threads, home + 1)
                               - home_start(count, threads, home)),
                          memory_order_relaxed);
  /* seq_cst, after the homes: a worker that sees the generation sees its homes' counts */
  atomic_store_explicit(&pool->published, published << GENERATION_SHIFT, memory_order_seq_cst);
  if (atomic_load_explicit(&pool->sleepers, memory_order_seq_cst) > 0) {
    pthread_mutex_lock(&pool->mutex);
    pthread_cond_broadcast(&pool->start);
    pthread_mutex_unlock(&pool->mutex);
  }
  run_tasks(pool, published, 0);
  /* Every task is claimed; wait only for those claimed by workers and still running. */
  size_t left = atomic_load_explicit(&pool->pending, memory_order_acquire);
  unsigned round = 0;
  uint64_t deadline = 0;
  while (left != 0 && spin_step(&round, &deadline)) {
    const size_t now = atomic_load_explicit(&pool->pending, memory_order_acquire);
    if (now != left) { /* progress: the workers are running, so keep spinning */
      left = now;
      round = 0;
    }
  }
  if (left == 0)
    return;
  pthread_mutex_lock(&pool->mutex);
  atomic_store_explicit(&pool->caller_asleep, 1, memory_order_seq_cst);
  while (atomic_load_explicit(&pool->pending, memory_order_seq_cst) != 0)
    pthread_cond_wait(&pool->finished, &pool->mutex);
  atomic_store_explicit(&pool->caller_asleep, 0, memory_order_relaxed);
  pthread_mutex_unlock(&pool->mutex);
}
