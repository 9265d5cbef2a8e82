/* c-exit-thread: a spawned thread calls exit(17) while main is blocked in
 * pthread_join. Expected: stdout "thread calling exit(17)\n", exit code 17. */
#include "common.h"
#include <pthread.h>

static void *worker(void *arg) {
    (void)arg;
    printf("thread calling exit(17)\n");
    fflush(stdout);
    exit(17);
}

int main(void) {
    pthread_t t;
    CHECK(pthread_create(&t, NULL, worker, NULL) == 0, "pthread_create");
    pthread_join(t, NULL);
    printf("UNREACHABLE: main returned from join\n");
    return 1;
}
