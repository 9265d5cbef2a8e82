/* c-spawn-limit: usage: c-spawn-limit [MAX=100000]
 * Creates threads that block on a condition variable until pthread_create
 * fails (or MAX threads exist), prints "limit reached after N: EAGAIN"
 * (N = threads created; "errno E (name)" instead of EAGAIN if another error,
 * or "no limit below MAX" if none), then releases and joins them all, spawns
 * and joins 10 more one after another and prints "recovered".
 * Expected: exit 0 when the failure was EAGAIN and the 10 extra threads
 * worked; exit 1 otherwise. N depends on the host's thread limit and on
 * memory: default pthread stacks (128 KiB on wasi-libc) in 64 MiB => N is a
 * few hundred unless the host limits threads earlier. */
#include "common.h"
#include <errno.h>
#include <pthread.h>
#include <string.h>

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int release = 0;

static void *blocker(void *arg) {
    (void)arg;
    pthread_mutex_lock(&mu);
    while (!release) pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    return NULL;
}

static void *quick(void *arg) { return arg; }

int main(int argc, char **argv) {
    long max = arg_long(argc, argv, 1, 100000);
    pthread_t *t = calloc((size_t)max, sizeof *t);
    CHECK(t, "calloc");
    long n = 0;
    int err = 0;
    while (n < max) {
        err = pthread_create(&t[n], NULL, blocker, NULL);
        if (err) break;
        n++;
    }
    int ok = 1;
    if (err == EAGAIN) {
        printf("limit reached after %ld: EAGAIN\n", n);
    } else if (err) {
        printf("limit reached after %ld: errno %d (%s)\n", n, err, strerror(err));
        ok = 0;
    } else {
        printf("no limit below %ld\n", max);
        ok = 0;
    }
    fflush(stdout);
    pthread_mutex_lock(&mu);
    release = 1;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    for (long i = 0; i < n; i++) CHECK(pthread_join(t[i], NULL) == 0, "join %ld", i);
    for (intptr_t i = 0; i < 10; i++) {
        pthread_t q;
        void *r;
        int e = pthread_create(&q, NULL, quick, (void *)i);
        CHECK(e == 0, "extra thread %ld: pthread_create failed: %d (%s)", (long)i, e, strerror(e));
        CHECK(pthread_join(q, &r) == 0 && (intptr_t)r == i, "extra join %ld", (long)i);
    }
    printf("recovered\n");
    return ok ? 0 : 1;
}
