/* c-churn: usage: c-churn [N=100000]
 * Creates N short-lived threads in total, at most 8 alive at once (ring of 8:
 * join the oldest before creating the next). Each adds its index to a sum.
 * Expected: stdout "churned N\n", exit 0 (stderr FAIL + exit 1 on a bad sum
 * or a failed pthread_create). */
#include "common.h"
#include <pthread.h>

#define RING 8
static uint64_t sum = 0;

static void *worker(void *arg) {
    __atomic_add_fetch(&sum, (uint64_t)(uintptr_t)arg, __ATOMIC_SEQ_CST);
    return NULL;
}

int main(int argc, char **argv) {
    long n = arg_long(argc, argv, 1, 100000);
    pthread_t ring[RING];
    for (long i = 0; i < n; i++) {
        int slot = (int)(i % RING);
        if (i >= RING) CHECK(pthread_join(ring[slot], NULL) == 0, "join %ld", i - RING);
        int e = pthread_create(&ring[slot], NULL, worker, (void *)(uintptr_t)i);
        CHECK(e == 0, "pthread_create #%ld failed: %d", i, e);
    }
    for (long i = n > RING ? n - RING : 0; i < n; i++) pthread_join(ring[i % RING], NULL);
    uint64_t expect = (uint64_t)n * (uint64_t)(n - 1) / 2;
    CHECK(ALOAD(&sum) == expect, "sum %llu != %llu", (unsigned long long)sum, (unsigned long long)expect);
    printf("churned %ld\n", n);
    return 0;
}
