/* c-debug-trap: built with -g -O0 (see build.sh): a spawned thread calls
 * boom(), which executes __builtin_trap() (wasm `unreachable`) while main is
 * blocked in pthread_join. Expected: stdout "thread trapping\n", then a trap
 * (exit 134); the backtrace names c-debug-trap.c and boom's line. */
#include "common.h"
#include <pthread.h>

static volatile int reached;

__attribute__((noinline)) static void boom(void) {
    reached = 1;
    __builtin_trap();
}

static void *worker(void *arg) {
    (void)arg;
    printf("thread trapping\n");
    fflush(stdout);
    boom();
    return NULL;
}

int main(void) {
    pthread_t t;
    CHECK(pthread_create(&t, NULL, worker, NULL) == 0, "pthread_create");
    pthread_join(t, NULL);
    printf("UNREACHABLE: main returned from join\n");
    return 1;
}
