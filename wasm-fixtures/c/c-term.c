/* c-term: termination matrix.  usage: c-term <who> <how> <others>
 *   who    = main | thread   (main itself, or a new thread while main is in pthread_join)
 *   how    = exit | trap | return
 *   others = busy | sleep | wait | read   (what 4 background threads do forever)
 * The 4 "other" threads signal that they started (atomic counter); then the
 * `who` thread prints "ready\n" (flushed) and does `how`:
 *   exit   -> exit(99)                                  => exit code 99
 *   trap   -> __builtin_trap()                          => trap (134)
 *   return -> main: return 0 from main;                 => exit code 0
 *             thread: the thread returns, main returns 0 => exit code 0
 * Bad arguments: usage on stderr, exit code 2. */
#include "common.h"
#include <pthread.h>
#include <string.h>

#define NOTHERS 4
static int started = 0;
static volatile unsigned long spin_counter = 0;
static int wait_word = 0;
static const char *who, *how, *others;

static void *other(void *arg) {
    (void)arg;
    if (!strcmp(others, "busy")) {
        bump_count(&started);
        for (;;) spin_counter++;
    } else if (!strcmp(others, "sleep")) {
        bump_count(&started);
        for (;;) sleep(1000);
    } else if (!strcmp(others, "wait")) {
        bump_count(&started);
        for (;;) wait32(&wait_word, 0); /* memory.atomic.wait32, infinite timeout */
    } else { /* read */
        char buf[1];
        bump_count(&started);
        for (;;) {
            ssize_t n = read(0, buf, 1);
            if (n <= 0) { /* EOF or error: stdin was not kept open; fall back to parking */
                for (;;) sleep(1000);
            }
        }
    }
    return NULL;
}

static int do_how(void) {
    printf("ready\n");
    fflush(stdout);
    if (!strcmp(how, "exit")) exit(99);
    if (!strcmp(how, "trap")) __builtin_trap();
    return 0; /* "return" */
}

static void *who_thread(void *arg) {
    (void)arg;
    do_how();
    return NULL;
}

static int valid(const char *v, const char *const *set) {
    for (; *set; set++) if (!strcmp(v, *set)) return 1;
    return 0;
}

int main(int argc, char **argv) {
    static const char *const whos[] = {"main", "thread", NULL};
    static const char *const hows[] = {"exit", "trap", "return", NULL};
    static const char *const otherss[] = {"busy", "sleep", "wait", "read", NULL};
    if (argc != 4 || !valid(argv[1], whos) || !valid(argv[2], hows) || !valid(argv[3], otherss)) {
        fprintf(stderr, "usage: c-term main|thread exit|trap|return busy|sleep|wait|read\n");
        return 2;
    }
    who = argv[1]; how = argv[2]; others = argv[3];
    pthread_t t[NOTHERS];
    for (int i = 0; i < NOTHERS; i++) CHECK(pthread_create(&t[i], NULL, other, NULL) == 0, "create other");
    wait_count(&started, NOTHERS);
    if (!strcmp(who, "main")) return do_how();
    pthread_t w;
    CHECK(pthread_create(&w, NULL, who_thread, NULL) == 0, "create who");
    pthread_join(w, NULL);
    return 0;
}
