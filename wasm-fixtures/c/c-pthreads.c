/* c-pthreads: pthread_create/join with return values, mutex, condvar,
 * thread-local storage (__thread and _Thread_local), pthread_barrier.
 * Deterministic output, exit 0 (exit 1 + FAIL line on stderr on a mismatch). */
#include "common.h"
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#define NT 4

/* 1. create/join with return values */
static void *sum_range(void *arg) {
    intptr_t k = (intptr_t)arg;
    intptr_t s = 0;
    for (intptr_t i = 1; i <= 1000; i++) s += i * (k + 1);
    return (void *)s;
}

/* 2. mutex */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static long counter = 0;
static void *incr(void *arg) {
    (void)arg;
    for (int i = 0; i < 10000; i++) {
        pthread_mutex_lock(&mu);
        counter++;
        pthread_mutex_unlock(&mu);
    }
    return NULL;
}

/* 3. condvar: one-slot queue, producer sends 1..100 then 0 as terminator */
static pthread_mutex_t qmu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t qcv = PTHREAD_COND_INITIALIZER;
static int slot_full = 0, slot_val = 0;
static void *producer(void *arg) {
    (void)arg;
    for (int v = 1; v <= 101; v++) {
        int send = v == 101 ? 0 : v;
        pthread_mutex_lock(&qmu);
        while (slot_full) pthread_cond_wait(&qcv, &qmu);
        slot_val = send;
        slot_full = 1;
        pthread_cond_broadcast(&qcv);
        pthread_mutex_unlock(&qmu);
    }
    return NULL;
}
static void *consumer(void *arg) {
    (void)arg;
    intptr_t sum = 0, n = 0;
    for (;;) {
        pthread_mutex_lock(&qmu);
        while (!slot_full) pthread_cond_wait(&qcv, &qmu);
        int v = slot_val;
        slot_full = 0;
        pthread_cond_broadcast(&qcv);
        pthread_mutex_unlock(&qmu);
        if (v == 0) break;
        sum += v;
        n++;
    }
    return (void *)(sum * 1000 + n);
}

/* 4. TLS: each thread must start from the initializer, not from main's value */
static __thread int tls_a = 100;
static _Thread_local int tls_b = 7;
static pthread_barrier_t tls_barrier;
static void *tls_worker(void *arg) {
    intptr_t id = (intptr_t)arg;
    int ok = (tls_a == 100 && tls_b == 7);
    tls_a = (int)id * 10;
    tls_b = (int)id;
    pthread_barrier_wait(&tls_barrier); /* everyone has written its own copy */
    for (int i = 0; i < 1000; i++) { tls_a++; tls_b += 2; }
    pthread_barrier_wait(&tls_barrier);
    ok = ok && tls_a == (int)id * 10 + 1000 && tls_b == (int)id + 2000;
    return (void *)(intptr_t)(ok ? tls_a : -1);
}

/* 5. barrier phases */
#define PHASES 3
static pthread_barrier_t bar;
static int slots[NT];
static int serial_count = 0;
static int phase_sums[PHASES][NT];
static void *barrier_worker(void *arg) {
    intptr_t id = (intptr_t)arg;
    for (int p = 0; p < PHASES; p++) {
        slots[id] = (int)(id + 1) * (p + 1);
        if (pthread_barrier_wait(&bar) == PTHREAD_BARRIER_SERIAL_THREAD) AADD(&serial_count, 1);
        int s = 0;
        for (int j = 0; j < NT; j++) s += slots[j];
        phase_sums[p][id] = s;
        pthread_barrier_wait(&bar); /* nobody overwrites slots before all have read */
    }
    return NULL;
}

int main(void) {
    pthread_t t[NT];
    void *ret;

    for (intptr_t i = 0; i < NT; i++) CHECK(pthread_create(&t[i], NULL, sum_range, (void *)i) == 0, "create");
    printf("join results:");
    for (int i = 0; i < NT; i++) {
        CHECK(pthread_join(t[i], &ret) == 0, "join");
        printf(" %ld", (long)(intptr_t)ret);
    }
    printf("\n");

    for (int i = 0; i < NT; i++) CHECK(pthread_create(&t[i], NULL, incr, NULL) == 0, "create");
    for (int i = 0; i < NT; i++) pthread_join(t[i], NULL);
    printf("mutex counter: %ld\n", counter);

    pthread_t pt, ct;
    CHECK(pthread_create(&ct, NULL, consumer, NULL) == 0, "create");
    CHECK(pthread_create(&pt, NULL, producer, NULL) == 0, "create");
    pthread_join(pt, NULL);
    pthread_join(ct, &ret);
    printf("condvar queue: received %ld values, sum %ld\n", (long)(intptr_t)ret % 1000, (long)(intptr_t)ret / 1000);

    tls_a = 555; tls_b = 555; /* main's copy must not leak into the threads */
    pthread_barrier_init(&tls_barrier, NULL, NT);
    for (intptr_t i = 0; i < NT; i++) CHECK(pthread_create(&t[i], NULL, tls_worker, (void *)i) == 0, "create");
    printf("thread-local:");
    for (int i = 0; i < NT; i++) {
        pthread_join(t[i], &ret);
        printf(" %ld", (long)(intptr_t)ret);
    }
    printf("; main still %d %d\n", tls_a, tls_b);
    pthread_barrier_destroy(&tls_barrier);

    pthread_barrier_init(&bar, NULL, NT);
    for (intptr_t i = 0; i < NT; i++) CHECK(pthread_create(&t[i], NULL, barrier_worker, (void *)i) == 0, "create");
    for (int i = 0; i < NT; i++) pthread_join(t[i], NULL);
    pthread_barrier_destroy(&bar);
    printf("barrier: phase sums");
    for (int p = 0; p < PHASES; p++) {
        for (int i = 1; i < NT; i++) CHECK(phase_sums[p][i] == phase_sums[p][0], "phase %d thread %d saw %d", p, i, phase_sums[p][i]);
        printf(" %d", phase_sums[p][0]);
    }
    printf(", serial threads %d\n", serial_count);
    printf("c-pthreads ok\n");
    return 0;
}
