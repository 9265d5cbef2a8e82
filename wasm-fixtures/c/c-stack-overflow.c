/* c-stack-overflow: a spawned thread recurses without bound (not a tail call:
 * a volatile store follows the recursive call) while main waits in pthread_join.
 * Expected: stdout "recursing\n" then a trap (wasm call-stack exhaustion => 134;
 * natively SIGSEGV). */
#include "common.h"
#include <pthread.h>

static volatile int depth_sink;
static volatile int stop = 0;

__attribute__((noinline)) static int recurse(int n) {
    if (stop) return n;
    depth_sink = n;
    int r = recurse(n + 1);
    depth_sink = r; /* work after the call: no tail call / loop conversion */
    return r + 1;
}

static void *worker(void *arg) {
    (void)arg;
    printf("recursing\n");
    fflush(stdout);
    return (void *)(intptr_t)recurse(0);
}

int main(void) {
    pthread_t t;
    void *r;
    CHECK(pthread_create(&t, NULL, worker, NULL) == 0, "create");
    pthread_join(t, &r);
    printf("UNREACHABLE: recursion returned %ld\n", (long)(intptr_t)r);
    return 1;
}
