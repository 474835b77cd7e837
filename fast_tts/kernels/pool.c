/* A small thread pool for the native kernels.
 *
 * Why not OpenMP: a backend's decode loop runs on its own thread, and as soon as a second thread (the one that
 * loaded the model) owns an OpenMP team, libgomp counts more threads than cores and stops spinning at barriers, so
 * each of a decode step's ~200 barriers became a sleep and a wake-up (measured: 2 threads 1.5-2x slower than 1).
 * Here the helpers spin at barriers only while a job runs (yielding the core if they wait long, in case another
 * thread took it) and sleep on a condition variable between jobs: helpers that spun between jobs took the cores
 * from torch's own threads, which run the operations between our calls (measured: the MegaTTS3 aligner's 200 steps
 * took 3.9 s instead of 2.4 s). One job runs at a time; a forked child starts helpers of its own.
 */
#include <immintrin.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#include "fast_tts_kernels.h"

#define MAX_THREADS 64
#define WAIT_SPINS 4000 /* pauses a waiting thread spends before it starts yielding the core */

/* One round of waiting for another thread: a pause, or once `spins` reaches WAIT_SPINS, giving up the core. */
void fast_tts_wait_a_little(int *spins) {
    if (*spins < WAIT_SPINS) {
        ++*spins;
        _mm_pause();
    } else {
        sched_yield();
    }
}

static struct {
    pthread_mutex_t job_lock; /* one job at a time, whichever thread posts it */
    pthread_mutex_t lock;     /* guards sleeping helpers against lost wake-ups */
    pthread_cond_t wake;
    int helpers;              /* helper threads running (thread ids 1..helpers) */
    atomic_ulong generation;  /* bumped for each job */
    atomic_int finished;      /* helpers done with the current job */
    fast_tts_job_fn fn;
    void *arg;
    int threads;
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, NULL, NULL, 0};

/* `start` packs the helper's id (low 8 bits) and the generation current when it was created: it must take part in
 * every later job, including one posted before it got to run. */
static void *helper_main(void *start) {
    int id = (int)((uintptr_t)start & 0xff);
    unsigned long seen = (unsigned long)((uintptr_t)start >> 8);
    for (;;) {
        pthread_mutex_lock(&pool.lock);
        while (atomic_load(&pool.generation) == seen) pthread_cond_wait(&pool.wake, &pool.lock);
        pthread_mutex_unlock(&pool.lock);
        seen = atomic_load_explicit(&pool.generation, memory_order_acquire);
        if (id < pool.threads) pool.fn(pool.arg, id, pool.threads);
        atomic_fetch_add_explicit(&pool.finished, 1, memory_order_release);
    }
    return NULL;
}

static void forget_helpers_after_fork(void) { /* a forked child has none of the parent's threads */
    pthread_mutex_init(&pool.job_lock, NULL);
    pthread_mutex_init(&pool.lock, NULL);
    pthread_cond_init(&pool.wake, NULL);
    pool.helpers = 0;
}

static void install_fork_handler(void) { pthread_atfork(NULL, NULL, forget_helpers_after_fork); }

/* Run fn(arg, i, threads) for i = 0..threads-1, i = 0 on the calling thread; returns when all are done. */
void fast_tts_run_parallel(fast_tts_job_fn fn, void *arg, int threads) {
    static pthread_once_t fork_handler = PTHREAD_ONCE_INIT;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads <= 1) {
        fn(arg, 0, 1);
        return;
    }
    pthread_once(&fork_handler, install_fork_handler);
    pthread_mutex_lock(&pool.job_lock);
    while (pool.helpers < threads - 1) {
        pthread_t thread;
        uintptr_t start = ((uintptr_t)atomic_load(&pool.generation) << 8) | (uintptr_t)(pool.helpers + 1);
        if (pthread_create(&thread, NULL, helper_main, (void *)start) != 0) break;
        pthread_detach(thread);
        pool.helpers++;
    }
    if (threads > pool.helpers + 1) threads = pool.helpers + 1; /* could not start them all */
    pool.fn = fn;
    pool.arg = arg;
    pool.threads = threads;
    atomic_store(&pool.finished, 0);
    pthread_mutex_lock(&pool.lock);
    atomic_fetch_add_explicit(&pool.generation, 1, memory_order_release);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    fn(arg, 0, threads);
    for (int spins = 0; atomic_load_explicit(&pool.finished, memory_order_acquire) < pool.helpers;)
        fast_tts_wait_a_little(&spins);
    pthread_mutex_unlock(&pool.job_lock);
}
