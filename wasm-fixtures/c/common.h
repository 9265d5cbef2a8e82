/* Shared helpers for the wasm-fixtures C programs. Every program compiles both
 * for wasm32-wasi-threads (clang-19) and natively (gcc -O2 -pthread). */
#ifndef FIXTURE_COMMON_H
#define FIXTURE_COMMON_H
#define _GNU_SOURCE 1
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

/* Atomics via compiler builtins (same spelling in gcc and clang). */
#define ALOAD(p) __atomic_load_n((p), __ATOMIC_SEQ_CST)
#define ASTORE(p, v) __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)
#define AADD(p, v) __atomic_add_fetch((p), (v), __ATOMIC_SEQ_CST)

#ifdef __wasm__
/* memory.atomic.wait32 with infinite timeout; returns 0 ok, 1 not-equal, 2 timed out */
static inline int wait32(int *addr, int expected) {
    return __builtin_wasm_memory_atomic_wait32(addr, expected, -1);
}
static inline void wake32(int *addr, int count) {
    __builtin_wasm_memory_atomic_notify(addr, (unsigned)count);
}
#else
#include <linux/futex.h>
#include <sys/syscall.h>
static inline int wait32(int *addr, int expected) {
    return (int)syscall(SYS_futex, addr, FUTEX_WAIT, expected, NULL, NULL, 0);
}
static inline void wake32(int *addr, int count) {
    syscall(SYS_futex, addr, FUTEX_WAKE, count, NULL, NULL, 0);
}
#endif

/* Park the calling thread forever (a wait that is never notified). */
static inline void park_forever(void) {
    static int never = 0;
    for (;;) wait32(&never, 0);
}

static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Wait (spinning politely) until *counter >= target. */
static inline void wait_count(int *counter, int target) {
    for (;;) {
        int v = ALOAD(counter);
        if (v >= target) return;
        wait32(counter, v);
    }
}
static inline void bump_count(int *counter) {
    AADD(counter, 1);
    wake32(counter, 1 << 30);
}

static inline long arg_long(int argc, char **argv, int i, long dflt) {
    return argc > i ? strtol(argv[i], NULL, 10) : dflt;
}

#define CHECK(cond, ...) do { if (!(cond)) { fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
    fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); exit(1); } } while (0)

#endif
