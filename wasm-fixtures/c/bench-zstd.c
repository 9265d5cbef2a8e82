/* bench-zstd: usage: bench-zstd MODE MIB WORKERS
 * zstd 1.5.7 (its C sources from the cargo registry, see build.sh) on MIB MiB
 * of deterministic text-like data (words from a fixed vocabulary picked by a
 * seeded splitmix64; zstd level 3 compresses it ~3.5x).
 *   compress:   times ZSTD_compress2 at level 3 with ZSTD_c_nbWorkers=WORKERS,
 *               so zstd's own pthread pool does the work (WORKERS=0 is
 *               zstd's single-threaded mode). Level 3 cuts the input into
 *               8 MiB jobs (windowLog 21 + 2), so at most MIB/8 workers work.
 *   decompress: compresses untimed (same parameters), then times
 *               ZSTD_decompressDCtx (zstd decompression is single-threaded)
 * Both modes check the round trip (decompressed == original; exit 1 if not).
 * Output (exit 0):
 *   RESULT input_bytes=<MIB * 1048576>
 *   RESULT compressed_bytes=<int>
 *   RESULT checksum=<u64, FNV-1a of the compressed bytes (compress) or of the
 *                   decompressed bytes (decompress); deterministic for MIB,
 *                   and for WORKERS >= 1 independent of WORKERS>
 *   RESULT elapsed_ns=<int>
 * Bad arguments: usage on stderr, exit 2. */
#include "common.h"
#include <string.h>
#include <zstd.h>

#define LEVEL 3
#define VOCAB 1024

static uint64_t rng_state = 0x5eed2026u;

static uint64_t next_u64(void) {
    uint64_t x = (rng_state += 0x9e3779b97f4a7c15ull);
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static char vocab[VOCAB][16];
static size_t vocab_len[VOCAB];

/* Letters roughly by English frequency, so literals have a skewed histogram. */
static const char LETTERS[] = "eeeeeeeeeeeetttttttttaaaaaaaaooooooooiiiiiiinnnnnnnsssssshhhhhhrrrrrrddddlllluuummmwwffggyyppbbvk";

static void make_vocab(void) {
    for (int i = 0; i < VOCAB; i++) {
        uint64_t r = next_u64();
        size_t len = 2 + (size_t)(r % 5) + (size_t)((r >> 8) % 6); /* 2..11 */
        for (size_t j = 0; j < len; j++)
            vocab[i][j] = LETTERS[next_u64() % (sizeof LETTERS - 1)];
        vocab_len[i] = len;
    }
}

/* Words with a skewed (Zipf-like) choice, sentences of 5-20 words, lines of
 * up to ~72 columns. */
static void generate(unsigned char *buf, size_t n) {
    size_t pos = 0, col = 0;
    int words_left = 0;
    int capital = 1;
    while (pos < n) {
        uint64_t r = next_u64();
        /* product of three uniforms: small indices are much more likely */
        size_t w = (size_t)(((r & 0x3ff) * ((r >> 10) & 0x3ff) * ((r >> 20) & 0x3ff)) >> 20);
        const char *word = vocab[w];
        size_t len = vocab_len[w];
        char tmp[24];
        size_t k = 0;
        for (size_t j = 0; j < len; j++) tmp[k++] = word[j];
        if (capital) tmp[0] = (char)(tmp[0] - 'a' + 'A');
        capital = 0;
        if (words_left <= 0) words_left = 5 + (int)((r >> 30) % 16);
        if (--words_left == 0) {
            tmp[k++] = ((r >> 36) % 8) ? '.' : '?';
            capital = 1;
        } else if ((r >> 42) % 12 == 0) {
            tmp[k++] = ',';
        }
        if (col + k + 1 > 72) {
            tmp[k++] = '\n';
            col = 0;
        } else {
            tmp[k++] = ' ';
            col += k;
        }
        for (size_t j = 0; j < k && pos < n; j++) buf[pos++] = (unsigned char)tmp[j];
    }
}

static uint64_t fnv1a(const unsigned char *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

static void usage(void) {
    fprintf(stderr, "usage: bench-zstd compress|decompress MIB WORKERS\n");
    exit(2);
}

#define ZCHECK(call, what)                                                                    \
    do {                                                                                      \
        size_t zr_ = (call);                                                                  \
        CHECK(!ZSTD_isError(zr_), "%s: %s", what, ZSTD_getErrorName(zr_));                    \
    } while (0)

int main(int argc, char **argv) {
    if (argc != 4) usage();
    int compress_mode;
    if (strcmp(argv[1], "compress") == 0) compress_mode = 1;
    else if (strcmp(argv[1], "decompress") == 0) compress_mode = 0;
    else usage();
    char *end;
    long mib = strtol(argv[2], &end, 10);
    if (*end || mib < 1 || mib > 256) usage();
    long workers = strtol(argv[3], &end, 10);
    if (*end || workers < 0 || workers > 64) usage();

    size_t n = (size_t)mib << 20;
    size_t bound = ZSTD_compressBound(n);
    unsigned char *src = malloc(n), *dst = malloc(bound), *back = malloc(n);
    CHECK(src && dst && back, "malloc");
    make_vocab();
    generate(src, n);

    ZSTD_CCtx *cctx = ZSTD_createCCtx();
    ZSTD_DCtx *dctx = ZSTD_createDCtx();
    CHECK(cctx && dctx, "ZSTD_create*Ctx");
    ZCHECK(ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, LEVEL), "compressionLevel");
    ZCHECK(ZSTD_CCtx_setParameter(cctx, ZSTD_c_nbWorkers, (int)workers), "nbWorkers");

    uint64_t t0 = now_ns();
    size_t csize = ZSTD_compress2(cctx, dst, bound, src, n);
    uint64_t t1 = now_ns();
    ZCHECK(csize, "ZSTD_compress2");

    uint64_t t2 = now_ns();
    size_t dsize = ZSTD_decompressDCtx(dctx, back, n, dst, csize);
    uint64_t t3 = now_ns();
    ZCHECK(dsize, "ZSTD_decompressDCtx");
    CHECK(dsize == n && memcmp(back, src, n) == 0, "round trip: decompressed data differs from the input");

    uint64_t sum = compress_mode ? fnv1a(dst, csize) : fnv1a(back, dsize);
    printf("RESULT input_bytes=%llu\nRESULT compressed_bytes=%llu\nRESULT checksum=%llu\nRESULT elapsed_ns=%llu\n",
           (unsigned long long)n, (unsigned long long)csize, (unsigned long long)sum,
           (unsigned long long)(compress_mode ? t1 - t0 : t3 - t2));
    ZSTD_freeCCtx(cctx);
    ZSTD_freeDCtx(dctx);
    free(src);
    free(dst);
    free(back);
    return 0;
}
