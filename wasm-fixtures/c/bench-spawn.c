/* bench-spawn: usage: bench-spawn [N=2000]
 * Creates and joins N threads one after another (each returns its argument).
 * Output (exit 0):
 *   RESULT threads=N
 *   RESULT total_ns=<int>
 *   RESULT ns_per_thread=<int> */
#include "common.h"
#include <pthread.h>

static void *worker(void *arg) { return arg; }

int main(int argc, char **argv) {
    long n = arg_long(argc, argv, 1, 2000);
    uint64_t t0 = now_ns();
    for (long i = 0; i < n; i++) {
        pthread_t t;
        void *r;
        int e = pthread_create(&t, NULL, worker, (void *)(intptr_t)i);
        CHECK(e == 0, "pthread_create #%ld failed: %d", i, e);
        CHECK(pthread_join(t, &r) == 0 && (intptr_t)r == i, "join #%ld", i);
    }
    uint64_t dt = now_ns() - t0;
    printf("RESULT threads=%ld\nRESULT total_ns=%llu\nRESULT ns_per_thread=%llu\n", n,
           (unsigned long long)dt, (unsigned long long)(n ? dt / (uint64_t)n : 0));
    return 0;
}
