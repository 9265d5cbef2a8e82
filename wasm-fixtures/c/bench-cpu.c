/* bench-cpu: usage: bench-cpu [THREADS=2] [WORK=50000000]
 * Sums splitmix64(i) for i in [0, WORK), the range split evenly across THREADS
 * threads. The checksum is independent of THREADS.
 * Output (exit 0):
 *   RESULT threads=T
 *   RESULT work=W
 *   RESULT checksum=<hex, deterministic for W>
 *   RESULT elapsed_ns=<int>
 * (checksum for the default WORK=50000000 is listed in README.md) */
#include "common.h"
#include <pthread.h>

struct job { uint64_t begin, end, sum; };

static inline uint64_t splitmix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static void *worker(void *arg) {
    struct job *j = arg;
    uint64_t s = 0;
    for (uint64_t i = j->begin; i < j->end; i++) s += splitmix64(i);
    j->sum = s;
    return NULL;
}

int main(int argc, char **argv) {
    long nt = arg_long(argc, argv, 1, 2);
    long long work = argc > 2 ? strtoll(argv[2], NULL, 10) : 50000000LL;
    CHECK(nt >= 1 && nt <= 4096 && work >= 0, "bad args");
    pthread_t *t = calloc((size_t)nt, sizeof *t);
    struct job *jobs = calloc((size_t)nt, sizeof *jobs);
    CHECK(t && jobs, "calloc");
    uint64_t t0 = now_ns();
    for (long i = 0; i < nt; i++) {
        jobs[i].begin = (uint64_t)work * (uint64_t)i / (uint64_t)nt;
        jobs[i].end = (uint64_t)work * (uint64_t)(i + 1) / (uint64_t)nt;
        CHECK(pthread_create(&t[i], NULL, worker, &jobs[i]) == 0, "pthread_create");
    }
    uint64_t sum = 0;
    for (long i = 0; i < nt; i++) {
        pthread_join(t[i], NULL);
        sum += jobs[i].sum;
    }
    uint64_t dt = now_ns() - t0;
    printf("RESULT threads=%ld\nRESULT work=%lld\nRESULT checksum=%016llx\nRESULT elapsed_ns=%llu\n", nt, work,
           (unsigned long long)sum, (unsigned long long)dt);
    return 0;
}
