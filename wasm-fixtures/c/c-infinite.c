/* c-infinite: prints "spinning\n" (flushed) and then main spins forever (a
 * second thread spins too). Never exits by itself: for wall-clock timeout tests. */
#include "common.h"
#include <pthread.h>

static volatile unsigned long counter = 0;

static void *spin(void *arg) {
    (void)arg;
    for (;;) counter++;
    return NULL;
}

int main(void) {
    pthread_t t;
    CHECK(pthread_create(&t, NULL, spin, NULL) == 0, "create");
    printf("spinning\n");
    fflush(stdout);
    for (;;) counter++;
}
