/* c-trap-thread: a spawned thread executes __builtin_trap() (wasm `unreachable`)
 * while main is blocked in pthread_join. Expected: stdout "thread trapping\n",
 * then a trap (wasmtime-style exit 134; natively SIGILL). */
#include "common.h"
#include <pthread.h>

static void *worker(void *arg) {
    (void)arg;
    printf("thread trapping\n");
    fflush(stdout);
    __builtin_trap();
}

int main(void) {
    pthread_t t;
    CHECK(pthread_create(&t, NULL, worker, NULL) == 0, "pthread_create");
    pthread_join(t, NULL);
    printf("UNREACHABLE: main returned from join\n");
    return 1;
}
