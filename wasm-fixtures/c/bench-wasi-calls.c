/* bench-wasi-calls: usage: bench-wasi-calls OP CALLS DIR [THREADS=1]
 * Times CALLS iterations of one WASI call (one libc call) from one thread,
 * after a warm-up of CALLS/10. DIR holds file.txt (>= 1 MiB) and many/ (a
 * directory of 1000 entries); the write ops create (and remove) DIR/out.bin.
 * OP is one of:
 *   open_close    open("DIR/file.txt") + close      path_open + fd_close
 *   open_missing  open("DIR/missing") (ENOENT)       path_open (errno path)
 *   fstat         fstat(fd of file.txt)              fd_filestat_get
 *   stat          stat("DIR/file.txt")               path_filestat_get
 *   readdir       opendir+readdir*+closedir of many/ fd_readdir (per listing)
 *   read4k        read 4 KiB (rewinding at the end)  fd_read
 *   read64k       read 64 KiB                        fd_read
 *   write64       write 64 B to a file               fd_write
 *   write64_mt    THREADS threads, each CALLS writes of 64 B to one shared fd
 *   clock         clock_gettime(CLOCK_MONOTONIC)     clock_time_get
 *   random        getentropy(16 bytes)               random_get
 * Output (exit 0):
 *   RESULT ns_per_call=<float>   (write64_mt: wall time / (THREADS*CALLS))
 *   RESULT checksum=<int>        (keeps the loop from being optimised away) */
#include "common.h"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <sys/stat.h>

static char path_file[4096], path_missing[4096], path_many[4096], path_out[4096];
static long calls;
static int shared_fd;
static pthread_barrier_t bar;

static long run(const char *op, long n) {
    long sum = 0;
    static char buf[65536];
    if (!strcmp(op, "open_close")) {
        for (long i = 0; i < n; i++) {
            int fd = open(path_file, O_RDONLY);
            CHECK(fd >= 0, "open: %s", strerror(errno));
            sum += fd;
            close(fd);
        }
    } else if (!strcmp(op, "open_missing")) {
        for (long i = 0; i < n; i++) {
            int fd = open(path_missing, O_RDONLY);
            CHECK(fd < 0 && errno == ENOENT, "open of a missing file: %d", fd);
            sum += errno;
        }
    } else if (!strcmp(op, "fstat")) {
        int fd = open(path_file, O_RDONLY);
        CHECK(fd >= 0, "open: %s", strerror(errno));
        struct stat st;
        for (long i = 0; i < n; i++) {
            CHECK(fstat(fd, &st) == 0, "fstat: %s", strerror(errno));
            sum += st.st_size;
        }
        close(fd);
    } else if (!strcmp(op, "stat")) {
        struct stat st;
        for (long i = 0; i < n; i++) {
            CHECK(stat(path_file, &st) == 0, "stat: %s", strerror(errno));
            sum += st.st_size;
        }
    } else if (!strcmp(op, "readdir")) {
        for (long i = 0; i < n; i++) {
            DIR *d = opendir(path_many);
            CHECK(d, "opendir: %s", strerror(errno));
            struct dirent *e;
            while ((e = readdir(d))) sum++;
            closedir(d);
        }
    } else if (!strcmp(op, "read4k") || !strcmp(op, "read64k")) {
        size_t len = op[4] == '4' ? 4096 : 65536;
        int fd = open(path_file, O_RDONLY);
        CHECK(fd >= 0, "open: %s", strerror(errno));
        for (long i = 0; i < n; i++) {
            ssize_t r = read(fd, buf, len);
            CHECK(r >= 0, "read: %s", strerror(errno));
            if ((size_t)r < len) lseek(fd, 0, SEEK_SET);
            sum += r;
        }
        close(fd);
    } else if (!strcmp(op, "write64")) {
        int fd = open(path_out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        CHECK(fd >= 0, "open %s: %s", path_out, strerror(errno));
        memset(buf, 'w', 64);
        for (long i = 0; i < n; i++) {
            CHECK(write(fd, buf, 64) == 64, "write: %s", strerror(errno));
            sum += 64;
        }
        close(fd);
    } else if (!strcmp(op, "clock")) {
        struct timespec ts;
        for (long i = 0; i < n; i++) {
            clock_gettime(CLOCK_MONOTONIC, &ts);
            sum += ts.tv_nsec;
        }
    } else if (!strcmp(op, "random")) {
        for (long i = 0; i < n; i++) {
            CHECK(getentropy(buf, 16) == 0, "getentropy: %s", strerror(errno));
            sum += buf[0];
        }
    } else {
        CHECK(0, "unknown op %s", op);
    }
    return sum;
}

static void *writer(void *arg) {
    (void)arg;
    char line[64];
    memset(line, 'm', sizeof line);
    pthread_barrier_wait(&bar);
    for (long i = 0; i < calls; i++) CHECK(write(shared_fd, line, 64) == 64, "write: %s", strerror(errno));
    return NULL;
}

int main(int argc, char **argv) {
    CHECK(argc >= 4, "usage: bench-wasi-calls OP CALLS DIR [THREADS]");
    const char *op = argv[1];
    calls = arg_long(argc, argv, 2, 10000);
    const char *dir = argv[3];
    long threads = arg_long(argc, argv, 4, 1);
    snprintf(path_file, sizeof path_file, "%s/file.txt", dir);
    snprintf(path_missing, sizeof path_missing, "%s/missing", dir);
    snprintf(path_many, sizeof path_many, "%s/many", dir);
    snprintf(path_out, sizeof path_out, "%s/out.bin", dir);
    if (!strcmp(op, "write64_mt")) {
        shared_fd = open(path_out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        CHECK(shared_fd >= 0, "open %s: %s", path_out, strerror(errno));
        pthread_t *t = calloc((size_t)threads, sizeof *t);
        CHECK(t, "calloc");
        pthread_barrier_init(&bar, NULL, (unsigned)threads + 1);
        for (long i = 0; i < threads; i++) CHECK(pthread_create(&t[i], NULL, writer, NULL) == 0, "pthread_create");
        pthread_barrier_wait(&bar);
        uint64_t t0 = now_ns();
        for (long i = 0; i < threads; i++) pthread_join(t[i], NULL);
        uint64_t dt = now_ns() - t0;
        close(shared_fd);
        unlink(path_out);
        printf("RESULT ns_per_call=%.1f\nRESULT checksum=%ld\n", (double)dt / (double)(threads * calls), threads * calls);
        return 0;
    }
    long sum = run(op, calls / 10 + 1);
    uint64_t t0 = now_ns();
    sum += run(op, calls);
    uint64_t dt = now_ns() - t0;
    unlink(path_out);
    printf("RESULT ns_per_call=%.1f\nRESULT checksum=%ld\n", (double)dt / (double)calls, sum);
    return 0;
}
