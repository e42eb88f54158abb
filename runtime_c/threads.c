/* threads.c: the run context's thread pool. Workers are created with the context, spin
 * briefly after a parallel region in case another follows, then sleep; a region hands out task indices through one atomic counter, and
 * the calling thread works too. Nothing is allocated while a model runs. */
#define _POSIX_C_SOURCE 200809L
#include "sparsec_model.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* Cache lines: what spinning workers read (generation, with the region it publishes), the
 * task counter and the done counter each sit alone, and the pool is allocated on whole lines
 * of its own, so that no other data (the heap neighbours of a malloc'd pool) shares a line
 * that workers spin on: each write to such a line would cost the spinners a transfer. */
struct sparsec_pool {
  _Alignas(64) atomic_ulong generation; /* bumped for each region, then broadcast under the mutex */
  sparsec_task task;
  void *args;
  size_t count;
  _Alignas(64) atomic_size_t next;
  _Alignas(64) atomic_size_t busy; /* workers not yet done with the current region */
  _Alignas(64) atomic_int stop;
  size_t workers;
  pthread_t *threads;
  pthread_mutex_t mutex;
  pthread_cond_t start;
  pthread_cond_t finished;
};

/* How long a worker (or the caller) spins before it sleeps on a condition variable: about
 * 50-100 us. A model runs its regions back to back, microseconds apart; waking a sleeping
 * thread costs tens of microseconds (more in a VM), which made a 2-thread run of a small
 * layer slower than one thread. Idle between runs, the threads sleep and cost nothing. */
#define SPIN_ROUNDS 20000

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ volatile("yield");
#endif
}

static void run_tasks(sparsec_pool *pool)
{
  for (;;) {
    const size_t index = atomic_fetch_add_explicit(&pool->next, 1, memory_order_relaxed);
    if (index >= pool->count)
      return;
    pool->task(pool->args, index);
  }
}

static void *worker_main(void *arg)
{
  sparsec_pool *pool = arg;
  /* Regions are counted from 0, the generation when the pool was made: a worker that starts
   * late must still join the regions already begun, or the caller waits for it forever. */
  unsigned long seen = 0;
  for (;;) {
    unsigned long now = atomic_load_explicit(&pool->generation, memory_order_acquire);
    for (int spin = 0; now == seen && spin < SPIN_ROUNDS; spin++) {
      if (atomic_load_explicit(&pool->stop, memory_order_relaxed))
        break;
      cpu_relax();
      now = atomic_load_explicit(&pool->generation, memory_order_acquire);
    }
    if (now == seen) {
      pthread_mutex_lock(&pool->mutex);
      while ((now = atomic_load_explicit(&pool->generation, memory_order_acquire)) == seen
             && !atomic_load_explicit(&pool->stop, memory_order_relaxed))
        pthread_cond_wait(&pool->start, &pool->mutex);
      pthread_mutex_unlock(&pool->mutex);
    }
    if (atomic_load_explicit(&pool->stop, memory_order_relaxed))
      break;
    seen = now;
    run_tasks(pool);
    if (atomic_fetch_sub_explicit(&pool->busy, 1, memory_order_acq_rel) == 1) {
      /* The last worker out wakes the caller if it went to sleep (it checks under the mutex). */
      pthread_mutex_lock(&pool->mutex);
      pthread_cond_signal(&pool->finished);
      pthread_mutex_unlock(&pool->mutex);
    }
  }
  return NULL;
}

sparsec_pool *sparsec__pool_create(size_t threads)
{
  sparsec_pool *pool = aligned_alloc(_Alignof(sparsec_pool), sizeof *pool); /* whole lines */
  if (!pool)
    return NULL;
  memset(pool, 0, sizeof *pool);
  pool->workers = threads > 1 ? threads - 1 : 0;
  pool->threads = pool->workers ? calloc(pool->workers, sizeof *pool->threads) : NULL;
  if (pool->workers && !pool->threads) {
    free(pool);
    return NULL;
  }
  pthread_mutex_init(&pool->mutex, NULL);
  pthread_cond_init(&pool->start, NULL);
  pthread_cond_init(&pool->finished, NULL);
  atomic_init(&pool->generation, 0);
  atomic_init(&pool->stop, 0);
  atomic_init(&pool->next, 0);
  atomic_init(&pool->busy, 0);
  for (size_t i = 0; i < pool->workers; i++) {
    if (pthread_create(&pool->threads[i], NULL, worker_main, pool) != 0) {
      pool->workers = i; /* run with the workers that did start */
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
    pthread_join(pool->threads[i], NULL);
  pthread_cond_destroy(&pool->finished);
  pthread_cond_destroy(&pool->start);
  pthread_mutex_destroy(&pool->mutex);
  free(pool->threads);
  free(pool);
}

size_t sparsec__pool_threads(const sparsec_pool *pool)
{
  return pool ? pool->workers + 1 : 1;
}

void sparsec__parallel(sparsec_pool *pool, size_t count, sparsec_task task, void *args)
{
  if (!pool || pool->workers == 0 || count <= 1) {
    for (size_t i = 0; i < count; i++)
      task(args, i);
    return;
  }
  /* Every worker has finished the previous region (busy reached 0), so these plain fields
   * are ours until the release below publishes them. */
  pool->task = task;
  pool->args = args;
  pool->count = count;
  atomic_store_explicit(&pool->next, 0, memory_order_relaxed);
  atomic_store_explicit(&pool->busy, pool->workers, memory_order_relaxed);
  atomic_fetch_add_explicit(&pool->generation, 1, memory_order_release);
  pthread_mutex_lock(&pool->mutex); /* wakes workers that gave up spinning */
  pthread_cond_broadcast(&pool->start);
  pthread_mutex_unlock(&pool->mutex);
  run_tasks(pool);
  for (int spin = 0; spin < SPIN_ROUNDS; spin++) {
    if (atomic_load_explicit(&pool->busy, memory_order_acquire) == 0)
      return;
    cpu_relax();
  }
  pthread_mutex_lock(&pool->mutex);
  while (atomic_load_explicit(&pool->busy, memory_order_acquire) != 0)
    pthread_cond_wait(&pool->finished, &pool->mutex);
  pthread_mutex_unlock(&pool->mutex);
}
