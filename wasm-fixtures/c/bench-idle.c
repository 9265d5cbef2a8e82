/* bench-idle: usage: bench-idle [N=100] [SECONDS=2]
 * Spawns N threads (32 KiB stacks) that park forever in wait (memory.atomic.wait32
 * / futex), waits until all have started, prints "ready N" (flushed), sleeps
 * SECONDS, then exit(0) with the N threads still parked.
 * Output: "ready N\n", exit 0. (Built with --max-memory=256 MiB so large N fit.) */
#include "common.h"
#include <pthread.h>

static int started = 0;

static void *idler(void *arg) {
    (void)arg;
    bump_count(&started);
    park_forever();
    return NULL;
}

int main(int argc, char **argv) {
    long n = arg_long(argc, argv, 1, 100);
    long secs = arg_long(argc, argv, 2, 2);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 32 * 1024);
    for (long i = 0; i < n; i++) {
        pthread_t t;
        int e = pthread_create(&t, &attr, idler, NULL);
        CHECK(e == 0, "pthread_create #%ld failed: %d", i, e);
        pthread_detach(t);
    }
    wait_count(&started, (int)n);
    printf("ready %ld\n", n);
    fflush(stdout);
    sleep((unsigned)secs);
    exit(0);
}
