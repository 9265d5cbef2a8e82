/* c-exit-midwrite: a writer thread writes numbered lines to stdout as fast as
 * it can, one write() per line ("line 00000000\n", 14 bytes), incrementing a
 * shared atomic counter after each completed write. Main waits until the
 * counter reaches >= 1000, prints "exit(3) after N completed lines" to stderr
 * (N = counter value it saw) and calls exit(3) while the writer keeps going.
 * Expected: exit code 3; stdout is "line 00000000\n", "line 00000001\n", ...
 * consecutive from 0 with no gap and no partial line, at least N (>= 1000) lines. */
#include "common.h"
#include <pthread.h>

static int completed = 0;

static void *writer(void *arg) {
    (void)arg;
    char line[16];
    for (unsigned i = 0;; i++) {
        int len = snprintf(line, sizeof line, "line %08u\n", i);
        ssize_t w = write(1, line, (size_t)len);
        if (w != len) {
            fprintf(stderr, "writer: write returned %zd at line %u\n", w, i);
            exit(1);
        }
        AADD(&completed, 1);
    }
    return NULL;
}

int main(void) {
    pthread_t t;
    CHECK(pthread_create(&t, NULL, writer, NULL) == 0, "create");
    int n;
    while ((n = ALOAD(&completed)) < 1000) {
        struct timespec d = {0, 100 * 1000}; /* 100 us */
        nanosleep(&d, NULL);
    }
    fprintf(stderr, "exit(3) after %d completed lines\n", n);
    exit(3);
}
