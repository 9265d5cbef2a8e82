/* c-main-return: main starts 3 threads that never finish (spin forever /
 * sleep(100) in a loop / pthread_cond_wait forever), waits until all three
 * have started, prints "main done" and returns 0 from main.
 * Expected: stdout "main done\n", exit 0 (promptly, while the threads run). */
#include "common.h"
#include <pthread.h>

static int started = 0;
static volatile unsigned long spins = 0;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int never = 0;

static void *spinner(void *arg) {
    (void)arg;
    bump_count(&started);
    for (;;) spins++;
    return NULL;
}
static void *sleeper(void *arg) {
    (void)arg;
    bump_count(&started);
    for (;;) sleep(100);
    return NULL;
}
static void *waiter(void *arg) {
    (void)arg;
    pthread_mutex_lock(&mu);
    bump_count(&started);
    while (!never) pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    return NULL;
}

int main(void) {
    pthread_t t[3];
    CHECK(pthread_create(&t[0], NULL, spinner, NULL) == 0, "create");
    CHECK(pthread_create(&t[1], NULL, sleeper, NULL) == 0, "create");
    CHECK(pthread_create(&t[2], NULL, waiter, NULL) == 0, "create");
    wait_count(&started, 3);
    printf("main done\n");
    fflush(stdout);
    return 0;
}
