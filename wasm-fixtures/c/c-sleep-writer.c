/* c-sleep-writer: thread 1 sleeps 2 s in nanosleep; once it is about to sleep,
 * thread 2 does 200 write() calls of a short line to stdout and reports on
 * stderr how long they took. A host that serialises WASI calls behind one lock
 * would make these writes wait for the sleep.
 * Expected: exit 0; stdout exactly 200 lines "writer line 000\n" .. "writer line 199\n";
 * stderr: "200 writes took N us\n" then "sleeper slept N ms\n" (N vary; writes
 * should take far less than 2000000 us, the sleep >= 2000 ms). */
#include "common.h"
#include <pthread.h>
#include <string.h>

static int sleeping = 0;

static void *sleeper(void *arg) {
    (void)arg;
    struct timespec ts = {2, 0};
    uint64_t t0 = now_ns();
    ASTORE(&sleeping, 1);
    wake32(&sleeping, 1);
    while (nanosleep(&ts, &ts) != 0) {}
    return (void *)(uintptr_t)((now_ns() - t0) / 1000000);
}

static void *writer(void *arg) {
    (void)arg;
    while (!ALOAD(&sleeping)) wait32(&sleeping, 0);
    struct timespec d = {0, 20 * 1000 * 1000}; /* let the sleeper enter nanosleep */
    nanosleep(&d, NULL);
    char line[32];
    uint64_t t0 = now_ns();
    for (int i = 0; i < 200; i++) {
        int len = snprintf(line, sizeof line, "writer line %03d\n", i);
        CHECK(write(1, line, (size_t)len) == len, "write");
    }
    return (void *)(uintptr_t)((now_ns() - t0) / 1000);
}

int main(void) {
    pthread_t s, w;
    void *slept_ms, *write_us;
    CHECK(pthread_create(&s, NULL, sleeper, NULL) == 0, "create");
    CHECK(pthread_create(&w, NULL, writer, NULL) == 0, "create");
    pthread_join(w, &write_us);
    fprintf(stderr, "200 writes took %lu us\n", (unsigned long)(uintptr_t)write_us);
    pthread_join(s, &slept_ms);
    fprintf(stderr, "sleeper slept %lu ms\n", (unsigned long)(uintptr_t)slept_ms);
    return 0;
}
