/* c-exit-code: main creates and joins one thread, then returns 42.
 * Expected: stdout "thread ran\njoined\n", exit code 42. */
#include "common.h"
#include <pthread.h>

static void *worker(void *arg) {
    (void)arg;
    printf("thread ran\n");
    fflush(stdout);
    return NULL;
}

int main(void) {
    pthread_t t;
    CHECK(pthread_create(&t, NULL, worker, NULL) == 0, "pthread_create");
    CHECK(pthread_join(t, NULL) == 0, "pthread_join");
    printf("joined\n");
    return 42;
}
