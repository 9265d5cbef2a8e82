/* c-shared-file: usage: c-shared-file PATH   (PATH inside a preopened dir, e.g. /data/out.txt)
 * Thread A creates/truncates PATH, writes a line and publishes the fd number in
 * a global; thread B (already running, waiting for it) writes a second line to
 * that same fd and closes it. Main joins both, checks the fd is now closed
 * (write -> EBADF), reopens PATH, reads it and prints the content.
 * Expected stdout (exit 0):
 *   thread A: wrote 20 bytes
 *   thread B: wrote 20 bytes, closed fd
 *   main: fd closed by B is closed here too
 *   --- content ---
 *   hello from thread A
 *   hello from thread B
 *   --- end ---
 * Errors: message on stderr, exit 1. */
#include "common.h"
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <string.h>

static const char *path;
static int shared_fd = -1;
static int fd_ready = 0; /* 0 = not yet, 1 = published, 2 = A failed */

static void *thread_a(void *arg) {
    (void)arg;
    int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0644);
    if (fd < 0) {
        fprintf(stderr, "thread A: open %s: %s\n", path, strerror(errno));
        ASTORE(&fd_ready, 2);
        wake32(&fd_ready, 1);
        return (void *)1;
    }
    const char *msg = "hello from thread A\n";
    ssize_t n = write(fd, msg, strlen(msg));
    CHECK(n == (ssize_t)strlen(msg), "thread A: write: %s", strerror(errno));
    printf("thread A: wrote %zd bytes\n", n);
    fflush(stdout);
    ASTORE(&shared_fd, fd);
    ASTORE(&fd_ready, 1);
    wake32(&fd_ready, 1);
    return NULL;
}

static void *thread_b(void *arg) {
    (void)arg;
    int r;
    while ((r = ALOAD(&fd_ready)) == 0) wait32(&fd_ready, 0);
    if (r != 1) return (void *)1;
    int fd = ALOAD(&shared_fd);
    const char *msg = "hello from thread B\n";
    ssize_t n = write(fd, msg, strlen(msg));
    CHECK(n == (ssize_t)strlen(msg), "thread B: write fd %d: %s", fd, strerror(errno));
    CHECK(close(fd) == 0, "thread B: close fd %d: %s", fd, strerror(errno));
    printf("thread B: wrote %zd bytes, closed fd\n", n);
    fflush(stdout);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: c-shared-file PATH\n");
        return 2;
    }
    path = argv[1];
    pthread_t a, b;
    void *ra, *rb;
    CHECK(pthread_create(&b, NULL, thread_b, NULL) == 0, "create B");
    CHECK(pthread_create(&a, NULL, thread_a, NULL) == 0, "create A");
    pthread_join(a, &ra);
    pthread_join(b, &rb);
    if (ra || rb) return 1;

    int fd = ALOAD(&shared_fd);
    errno = 0;
    ssize_t w = write(fd, "x", 1);
    CHECK(w == -1 && errno == EBADF, "fd %d still usable in main after B closed it (write=%zd errno=%d)", fd, w, errno);
    printf("main: fd closed by B is closed here too\n");

    int rfd = open(path, O_RDONLY);
    CHECK(rfd >= 0, "main: reopen %s: %s", path, strerror(errno));
    char buf[256];
    size_t len = 0;
    ssize_t n;
    while ((n = read(rfd, buf + len, sizeof buf - 1 - len)) > 0) len += (size_t)n;
    CHECK(n == 0, "main: read: %s", strerror(errno));
    close(rfd);
    buf[len] = 0;
    printf("--- content ---\n%s--- end ---\n", buf);
    return 0;
}
