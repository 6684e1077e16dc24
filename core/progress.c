/* progress.c - the progress line (see progress.h). The throughput shown while running is measured
 * over windows of at least one second, so it follows the current speed rather than the average
 * since the start (which includes warm-up); the final line gives the overall average. */
#include "progress.h"

#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PROGRESS_TTY_INTERVAL 0.1    /* seconds between redraws on a terminal */
#define PROGRESS_LOG_INTERVAL 10.0   /* default seconds between plain log lines */
#define PROGRESS_RATE_WINDOW 1.0     /* seconds of work behind each throughput figure */
#define PROGRESS_LINE_MAX 512

struct lu_progress {
    FILE *f;
    char *label;
    int64_t total, done;
    bool tty;
    double interval;   /* seconds between outputs */
    double t0;         /* start (monotonic seconds) */
    double last_print; /* < 0: nothing printed yet */
    double items;      /* items (tokens, ...) since the start */
    char unit[32];     /* "" until an update names one */
    double win_t, win_items, rate; /* the current throughput window; rate < 0 until one closes */
    char kv[PROGRESS_LINE_MAX / 2];
    int last_len;      /* length of the terminal line, to blank what a shorter one leaves */
};

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void lu_progress_format_duration(double seconds, char *buf, size_t n)
{
    if (!isfinite(seconds) || seconds < 0) {
        snprintf(buf, n, "--");
        return;
    }
    long long s = (long long)floor(seconds);
    if (s < 60)
        snprintf(buf, n, "%llds", s);
    else if (s < 3600)
        snprintf(buf, n, "%lldm%02llds", s / 60, s % 60);
    else if (s < 86400)
        snprintf(buf, n, "%lldh%02lldm", s / 3600, s % 3600 / 60);
    else
        snprintf(buf, n, "%lldd%02lldh", s / 86400, s % 86400 / 3600);
}

void lu_progress_format_rate(double per_sec, const char *unit, char *buf, size_t n)
{
    if (!isfinite(per_sec)) {
        snprintf(buf, n, "-- %s/s", unit);
        return;
    }
    static const char *prefix[] = {"", "k", "M", "G", "T"};
    int p = 0;
    /* 999.95 would print as "1000.0" with one decimal: move to the next prefix instead. */
    while (fabs(per_sec) >= 999.95 && p < 4) {
        per_sec /= 1000;
        p++;
    }
    snprintf(buf, n, "%.1f%s %s/s", per_sec, prefix[p], unit);
}

static double log_interval(void)
{
    const char *env = getenv("LUTHIER_PROGRESS_INTERVAL");
    if (!env || !*env) return PROGRESS_LOG_INTERVAL;
    char *end;
    double v = strtod(env, &end);
    return (*end || !isfinite(v) || v < 0) ? PROGRESS_LOG_INTERVAL : v;
}

lu_progress *lu_progress_begin(FILE *f, const char *label, int64_t total)
{
    lu_progress *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->label = strdup(label ? label : "");
    if (!p->label) {
        free(p);
        return NULL;
    }
    p->f = f;
    p->total = total > 0 ? total : 0;
    p->tty = isatty(fileno(f));
    p->interval = p->tty ? PROGRESS_TTY_INTERVAL : log_interval();
    p->t0 = p->win_t = now_seconds();
    p->last_print = -1;
    p->rate = -1;
    return p;
}

/* Appends to line (of PROGRESS_LINE_MAX bytes), truncating at the end. */
static void append(char *line, size_t *len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void append(char *line, size_t *len, const char *fmt, ...)
{
    if (*len >= PROGRESS_LINE_MAX - 1) return;
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(line + *len, PROGRESS_LINE_MAX - *len, fmt, ap);
    va_end(ap);
    if (w > 0) *len = *len + (size_t)w < PROGRESS_LINE_MAX ? *len + (size_t)w : PROGRESS_LINE_MAX - 1;
}

static void render(lu_progress *p, double now, bool final)
{
    char line[PROGRESS_LINE_MAX], piece[64];
    size_t len = 0;
    double elapsed = now - p->t0;
    append(line, &len, "%s", p->label);
    if (p->total > 0)
        append(line, &len, " %lld/%lld %.1f%%", (long long)p->done, (long long)p->total,
               100.0 * (double)p->done / (double)p->total);
    else
        append(line, &len, " %lld", (long long)p->done);
    append(line, &len, "%s", p->kv);
    if (p->unit[0] && elapsed > 0) {
        double rate = (final || p->rate < 0) ? p->items / elapsed : p->rate;
        lu_progress_format_rate(rate, p->unit, piece, sizeof piece);
        append(line, &len, " %s", piece);
    }
    lu_progress_format_duration(elapsed, piece, sizeof piece);
    append(line, &len, " %s", piece);
    if (!final && p->total > 0 && p->done > 0 && p->done < p->total) {
        lu_progress_format_duration(elapsed * (double)(p->total - p->done) / (double)p->done, piece, sizeof piece);
        append(line, &len, " eta %s", piece);
    }
    if (p->tty) {
        int pad = p->last_len > (int)len ? p->last_len - (int)len : 0;
        fprintf(p->f, "\r%s%*s%s", line, pad, "", final ? "\n" : "");
        p->last_len = (int)len;
    } else {
        fprintf(p->f, "%s\n", line);
    }
    fflush(p->f);
    p->last_print = now;
}

void lu_progress_update(lu_progress *p, int64_t done, int n, const char *const *keys, const double *values,
                        double items, const char *item_unit)
{
    if (!p) return;
    double now = now_seconds();
    p->done = done;
    p->items += items;
    if (item_unit) snprintf(p->unit, sizeof p->unit, "%s", item_unit);
    if (now - p->win_t >= PROGRESS_RATE_WINDOW) {
        p->rate = (p->items - p->win_items) / (now - p->win_t);
        p->win_t = now;
        p->win_items = p->items;
    }
    size_t len = 0;
    p->kv[0] = 0;
    for (int i = 0; i < n && len < sizeof p->kv; i++)
        len += (size_t)snprintf(p->kv + len, sizeof p->kv - len, " %s=%.4g", keys[i], values[i]);
    if (p->last_print < 0 || now - p->last_print >= p->interval) render(p, now, false);
}

void lu_progress_end(lu_progress *p)
{
    if (!p) return;
    render(p, now_seconds(), true);
    free(p->label);
    free(p);
}
