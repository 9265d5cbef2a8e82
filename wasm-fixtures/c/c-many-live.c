/* c-many-live: usage: c-many-live [N=1000]
 * N threads (16 KiB stacks) alive at once, all blocked on one barrier of N+1;
 * when main arrives they are all released and joined.
 * Expected: stdout "live N\n", exit 0. (Built with --max-memory=128 MiB.) */
#include "common.h"
#include <pthread.h>

static pthread_barrier_t bar;
static int arrived = 0;

static void *worker(void *arg) {
    (void)arg;
    AADD(&arrived, 1);
    pthread_barrier_wait(&bar);
    return NULL;
}

int main(int argc, char **argv) {
    long n = arg_long(argc, argv, 1, 1000);
    pthread_t *t = calloc((size_t)n, sizeof *t);
    CHECK(t, "calloc");
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    CHECK(pthread_attr_setstacksize(&attr, 16 * 1024) == 0, "setstacksize");
    pthread_barrier_init(&bar, NULL, (unsigned)n + 1);
    for (long i = 0; i < n; i++) {
        int e = pthread_create(&t[i], &attr, worker, NULL);
        CHECK(e == 0, "pthread_create #%ld failed: %d", i, e);
    }
    pthread_barrier_wait(&bar); /* returns only once all N threads are alive and waiting */
    for (long i = 0; i < n; i++) CHECK(pthread_join(t[i], NULL) == 0, "join %ld", i);
    CHECK(ALOAD(&arrived) == n, "arrived %d", arrived);
    printf("live %ld\n", n);
    return 0;
}
