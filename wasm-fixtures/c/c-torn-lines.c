/* c-torn-lines: 8 threads x 2000 lines, each line written with ONE write() to
 * stdout (fd 1). All threads start together (barrier).
 * Line format (exactly 60 bytes incl. '\n'): "T<t> L<llll> " then the letter
 * ('a'+t) repeated up to column 59, then '\n'; e.g.
 *   "T3 L0042 ddddddddddddddddddddddddddddddddddddddddddddddddddd\n"
 * Expected: exit 0; stdout has 16000 lines, each intact, each (t, l) exactly
 * once, and per thread in increasing l order; interleaving between threads
 * is nondeterministic. */
#include "common.h"
#include <pthread.h>
#include <string.h>

#define NT 8
#define LINES 2000
#define LINE_LEN 60

static pthread_barrier_t bar;

static void *worker(void *arg) {
    int t = (int)(intptr_t)arg;
    char line[LINE_LEN + 1];
    pthread_barrier_wait(&bar);
    for (int l = 0; l < LINES; l++) {
        int n = snprintf(line, sizeof line, "T%d L%04d ", t, l);
        memset(line + n, 'a' + t, (size_t)(LINE_LEN - 1 - n));
        line[LINE_LEN - 1] = '\n';
        ssize_t w = write(1, line, LINE_LEN);
        CHECK(w == LINE_LEN, "thread %d line %d: write returned %zd", t, l, w);
    }
    return NULL;
}

int main(void) {
    pthread_t th[NT];
    pthread_barrier_init(&bar, NULL, NT);
    for (int t = 0; t < NT; t++) CHECK(pthread_create(&th[t], NULL, worker, (void *)(intptr_t)t) == 0, "create");
    for (int t = 0; t < NT; t++) pthread_join(th[t], NULL);
    return 0;
}
