/* bench-pingpong: usage: bench-pingpong [ROUNDS=50000]
 * Main and one thread bounce a shared word through wait/notify
 * (memory.atomic.wait32/notify on wasm, futex natively) ROUNDS times.
 * Output (exit 0):
 *   RESULT rounds=N
 *   RESULT total_ns=<int>
 *   RESULT ns_per_roundtrip=<int> */
#include "common.h"
#include <pthread.h>

static int turn = 0; /* 0: main's turn, 1: ponger's turn, 2: quit */

static void *ponger(void *arg) {
    (void)arg;
    long n = 0;
    for (;;) {
        int v;
        while ((v = ALOAD(&turn)) == 0) wait32(&turn, 0);
        if (v == 2) break;
        ASTORE(&turn, 0);
        wake32(&turn, 1);
        n++;
    }
    return (void *)(intptr_t)n;
}

int main(int argc, char **argv) {
    long rounds = arg_long(argc, argv, 1, 50000);
    pthread_t t;
    void *r;
    CHECK(pthread_create(&t, NULL, ponger, NULL) == 0, "pthread_create");
    uint64_t t0 = now_ns();
    for (long i = 0; i < rounds; i++) {
        ASTORE(&turn, 1);
        wake32(&turn, 1);
        while (ALOAD(&turn) == 1) wait32(&turn, 1);
    }
    uint64_t dt = now_ns() - t0;
    ASTORE(&turn, 2);
    wake32(&turn, 1);
    pthread_join(t, &r);
    CHECK((intptr_t)r == rounds, "ponger saw %ld rounds", (long)(intptr_t)r);
    printf("RESULT rounds=%ld\nRESULT total_ns=%llu\nRESULT ns_per_roundtrip=%llu\n", rounds, (unsigned long long)dt,
           (unsigned long long)(rounds ? dt / (uint64_t)rounds : 0));
    return 0;
}
