/* profile.c - the LUTHIER_PROFILE per-op timer (see profile.h). */
#include "profile.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_DEPTH 32

typedef struct row { int64_t calls; double seconds; } row;

static pthread_once_t once = PTHREAD_ONCE_INIT;
static bool enabled;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static row table[LU_OP_COUNT + 1][2];
/* Time spent in regions nested inside each open region of this thread, to make times exclusive. */
static _Thread_local double child[MAX_DEPTH];
static _Thread_local int depth;

static void report_at_exit(void) { lu_profile_report(stderr); }

static void init(void)
{
    const char *v = getenv("LUTHIER_PROFILE");
    enabled = v && *v && strcmp(v, "0");
    if (enabled) atexit(report_at_exit);
}

bool lu_profile_enabled(void)
{
    pthread_once(&once, init);
    return enabled;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double lu_profile_begin(void)
{
    if (depth < MAX_DEPTH) child[depth] = 0;
    depth++;
    return now();
}

void lu_profile_end(lu_op op, lu_profile_dir dir, double t0)
{
    double total = now() - t0;
    depth--;
    double own = depth < MAX_DEPTH ? total - child[depth] : total;
    if (depth > 0 && depth <= MAX_DEPTH) child[depth - 1] += total;
    unsigned k = (unsigned)op <= LU_OP_COUNT ? (unsigned)op : LU_OP_COUNT;
    pthread_mutex_lock(&lock);
    table[k][dir].calls++;
    table[k][dir].seconds += own;
    pthread_mutex_unlock(&lock);
}

static int by_time(const void *a, const void *b)
{
    const row *x = *(const row *const *)a, *y = *(const row *const *)b;
    return (x->seconds < y->seconds) - (x->seconds > y->seconds);
}

void lu_profile_reset(void)
{
    pthread_mutex_lock(&lock);
    memset(table, 0, sizeof table);
    pthread_mutex_unlock(&lock);
}

void lu_profile_report(FILE *f)
{
    const row *rows[2 * (LU_OP_COUNT + 1)];
    int n = 0;
    double sum = 0;
    pthread_mutex_lock(&lock);
    for (int k = 0; k <= LU_OP_COUNT; k++)
        for (int d = 0; d < 2; d++)
            if (table[k][d].calls) {
                rows[n++] = &table[k][d];
                sum += table[k][d].seconds;
            }
    if (n) {
        qsort(rows, (size_t)n, sizeof rows[0], by_time);
        fprintf(f, "luthier profile (LUTHIER_PROFILE): exclusive wall time per op\n");
        fprintf(f, "| %-24s | %9s | %10s | %10s | %6s |\n", "op", "calls", "total ms", "us/call", "share");
        fprintf(f, "|--------------------------|-----------|------------|------------|--------|\n");
        for (int i = 0; i < n; i++) {
            const row *r = rows[i];
            int k = (int)((r - &table[0][0]) / 2), d = (int)((r - &table[0][0]) % 2);
            char name[40];
            snprintf(name, sizeof name, "%s %s", k == LU_OP_COUNT ? "view/custom" : lu_op_name((lu_op)k),
                     d ? "backward" : "forward");
            fprintf(f, "| %-24s | %9lld | %10.2f | %10.2f | %5.1f%% |\n", name, (long long)r->calls, 1e3 * r->seconds,
                    1e6 * r->seconds / (double)r->calls, sum > 0 ? 100 * r->seconds / sum : 0);
        }
        fprintf(f, "| %-24s | %9s | %10.2f | %10s | %6s |\n", "all ops", "", 1e3 * sum, "", "");
        memset(table, 0, sizeof table);
    }
    pthread_mutex_unlock(&lock);
}
