/* threads.c: the run context's thread pool. Workers are created with the context and sleep
 * between parallel regions; a region hands out task indices through one atomic counter, and
 * the calling thread works too. Nothing is allocated while a model runs. */
#define _POSIX_C_SOURCE 200809L
#include "sparsec_model.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

struct sparsec_pool {
  size_t workers;
  pthread_t *threads;
  pthread_mutex_t mutex;
  pthread_cond_t start;
  pthread_cond_t finished;
  unsigned long generation; /* bumped under the mutex for each region */
  int stop;
  sparsec_task task;
  void *args;
  size_t count;
  atomic_size_t next;
  size_t busy; /* workers not yet done with the current region */
};

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
  pthread_mutex_lock(&pool->mutex);
  for (;;) {
    while (pool->generation == seen && !pool->stop)
      pthread_cond_wait(&pool->start, &pool->mutex);
    if (pool->stop)
      break;
    seen = pool->generation;
    pthread_mutex_unlock(&pool->mutex);
    run_tasks(pool);
    pthread_mutex_lock(&pool->mutex);
    if (--pool->busy == 0)
      pthread_cond_signal(&pool->finished);
  }
  pthread_mutex_unlock(&pool->mutex);
  return NULL;
}

sparsec_pool *sparsec__pool_create(size_t threads)
{
  sparsec_pool *pool = calloc(1, sizeof *pool);
  if (!pool)
    return NULL;
  pool->workers = threads > 1 ? threads - 1 : 0;
  pool->threads = pool->workers ? calloc(pool->workers, sizeof *pool->threads) : NULL;
  if (pool->workers && !pool->threads) {
    free(pool);
    return NULL;
  }
  pthread_mutex_init(&pool->mutex, NULL);
  pthread_cond_init(&pool->start, NULL);
  pthread_cond_init(&pool->finished, NULL);
  atomic_init(&pool->next, 0);
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
  pool->stop = 1;
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
  pthread_mutex_lock(&pool->mutex);
  pool->task = task;
  pool->args = args;
  pool->count = count;
  atomic_store_explicit(&pool->next, 0, memory_order_relaxed);
  pool->busy = pool->workers;
  pool->generation++;
  pthread_cond_broadcast(&pool->start);
  pthread_mutex_unlock(&pool->mutex);
  run_tasks(pool);
  pthread_mutex_lock(&pool->mutex);
  while (pool->busy)
    pthread_cond_wait(&pool->finished, &pool->mutex);
  pthread_mutex_unlock(&pool->mutex);
}
