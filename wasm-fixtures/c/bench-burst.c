/* bench-burst: usage: bench-burst [N=256]
 * Creates N threads back to back; each increments a counter and waits on a
 * barrier of N+1 (with main). Measures the time until all N are running
 * (main passes the barrier) and until all are joined.
 * Output (exit 0):
 *   RESULT threads=N
 *   RESULT started_ns=<int>
 *   RESULT total_ns=<int> */
#include "common.h"
#include <pthread.h>

static pthread_barrier_t bar;
static int started = 0;

static void *worker(void *arg) {
    (void)arg;
    AADD(&started, 1);
    pthread_barrier_wait(&bar);
    return NULL;
}

int main(int argc, char **argv) {
    long n = arg_long(argc, argv, 1, 256);
    pthread_t *t = calloc((size_t)n, sizeof *t);
    CHECK(t, "calloc");
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    pthread_barrier_init(&bar, NULL, (unsigned)n + 1);
    uint64_t t0 = now_ns();
    for (long i = 0; i < n; i++) {
        int e = pthread_create(&t[i], &attr, worker, NULL);
        CHECK(e == 0, "pthread_create #%ld failed: %d", i, e);
    }
    pthread_barrier_wait(&bar);
    uint64_t t1 = now_ns();
    for (long i = 0; i < n; i++) pthread_join(t[i], NULL);
    uint64_t t2 = now_ns();
    CHECK(ALOAD(&started) == n, "started %d != %ld", started, n);
    printf("RESULT threads=%ld\nRESULT started_ns=%llu\nRESULT total_ns=%llu\n", n,
           (unsigned long long)(t1 - t0), (unsigned long long)(t2 - t0));
    return 0;
}
