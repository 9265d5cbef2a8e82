/* c-grow: a spawned thread grows linear memory and writes to the new pages;
 * main reads them after pthread_join.
 *  - malloc(8 MiB) in the thread (forces memory.grow past the initial size), fill
 *  - wasm only: __builtin_wasm_memory_grow(0, 4) directly, write to those 4 pages
 * Expected stdout (exit 0), identical natively:
 *   thread: grew memory
 *   main: block[0]=0 block[1048576]=3145728 block[2097151]=6291453 sum=6597066620928
 *   main: raw pages ok
 */
#include "common.h"
#include <pthread.h>

#define WORDS (2u * 1024 * 1024) /* 8 MiB of uint32_t */
static uint32_t *block;
static uint32_t *raw;
static int grew = 0;

static void *grower(void *arg) {
    (void)arg;
#ifdef __wasm__
    size_t before = __builtin_wasm_memory_size(0);
#endif
    block = malloc(WORDS * sizeof *block);
    CHECK(block, "malloc 8 MiB failed");
    for (uint32_t i = 0; i < WORDS; i++) block[i] = i * 3;
#ifdef __wasm__
    size_t old = __builtin_wasm_memory_grow(0, 4);
    CHECK(old != (size_t)-1, "memory.grow(4) failed");
    raw = (uint32_t *)(old * 65536);
    grew = __builtin_wasm_memory_size(0) > before;
#else
    raw = malloc(4 * 65536);
    CHECK(raw, "malloc raw");
    grew = 1;
#endif
    for (uint32_t i = 0; i < 4 * 65536 / 4; i++) raw[i] = 0xA5000000u | i;
    printf("thread: %s\n", grew ? "grew memory" : "memory did NOT grow");
    fflush(stdout);
    return NULL;
}

int main(void) {
    pthread_t t;
    CHECK(pthread_create(&t, NULL, grower, NULL) == 0, "create");
    pthread_join(t, NULL);
    uint64_t sum = 0;
    for (uint32_t i = 0; i < WORDS; i++) sum += block[i];
    printf("main: block[0]=%u block[%u]=%u block[%u]=%u sum=%llu\n", block[0], WORDS / 2, block[WORDS / 2], WORDS - 1,
           block[WORDS - 1], (unsigned long long)sum);
    for (uint32_t i = 0; i < 4 * 65536 / 4; i++) CHECK(raw[i] == (0xA5000000u | i), "raw[%u]=%x", i, raw[i]);
    printf("main: raw pages ok\n");
    return grew ? 0 : 1;
}
