/* bench-fdwrite: usage: bench-fdwrite [THREADS=2] [CALLS=10000] [PATH=bench-fdwrite.out]
 * Truncates PATH (O_CREAT|O_TRUNC), then opens it once with O_APPEND (wasmtime
 * 36 refuses O_TRUNC and O_APPEND together: EINVAL) and has THREADS threads each do
 * CALLS write() calls of one 32-byte line
 * ("t0001 c000000042 ..............\n") on that shared fd; then fstat()s it.
 * Output (exit 0):
 *   RESULT threads=T
 *   RESULT calls=C
 *   RESULT bytes=<T*C*32>
 *   RESULT file_size=<T*C*32 when appends are atomic>
 *   RESULT elapsed_ns=<int> */
#include "common.h"
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <sys/stat.h>

static int fd;
static long calls;
static pthread_barrier_t bar;

static void *worker(void *arg) {
    int id = (int)(intptr_t)arg;
    char line[33];
    pthread_barrier_wait(&bar);
    for (long i = 0; i < calls; i++) {
        int n = snprintf(line, sizeof line, "t%04d c%09ld ", id % 10000, i % 1000000000L);
        memset(line + n, '.', (size_t)(31 - n));
        line[31] = '\n';
        ssize_t w = write(fd, line, 32);
        CHECK(w == 32, "write returned %zd: %s", w, strerror(errno));
    }
    return NULL;
}

int main(int argc, char **argv) {
    long nt = arg_long(argc, argv, 1, 2);
    calls = arg_long(argc, argv, 2, 10000);
    const char *path = argc > 3 ? argv[3] : "bench-fdwrite.out";
    CHECK(nt >= 1 && calls >= 0, "bad args");
    fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0644);
    CHECK(fd >= 0, "create %s: %s", path, strerror(errno));
    close(fd);
    fd = open(path, O_WRONLY | O_APPEND);
    CHECK(fd >= 0, "open %s: %s", path, strerror(errno));
    pthread_t *t = calloc((size_t)nt, sizeof *t);
    CHECK(t, "calloc");
    pthread_barrier_init(&bar, NULL, (unsigned)nt + 1);
    for (long i = 0; i < nt; i++) CHECK(pthread_create(&t[i], NULL, worker, (void *)(intptr_t)i) == 0, "pthread_create");
    pthread_barrier_wait(&bar);
    uint64_t t0 = now_ns();
    for (long i = 0; i < nt; i++) pthread_join(t[i], NULL);
    uint64_t dt = now_ns() - t0;
    struct stat st;
    CHECK(fstat(fd, &st) == 0, "fstat: %s", strerror(errno));
    close(fd);
    printf("RESULT threads=%ld\nRESULT calls=%ld\nRESULT bytes=%lld\nRESULT file_size=%lld\nRESULT elapsed_ns=%llu\n", nt, calls,
           (long long)nt * calls * 32, (long long)st.st_size, (unsigned long long)dt);
    return 0;
}
