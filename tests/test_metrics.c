/* test_metrics.c - the JSONL metrics writer and reader, and the progress line: duration and rate
 * formatting, plain log lines off a terminal, and the rewritten line on a pseudo-terminal. */
#define _GNU_SOURCE /* posix_openpt, grantpt, unlockpt, ptsname */
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "core/metrics.h"
#include "core/progress.h"
#include "testutil.h"

/* A fresh empty temporary path (the file exists); caller unlinks and frees. */
static char *temp_path(void)
{
    char *path = strdup("/tmp/luthier_metrics_XXXXXX");
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    close(fd);
    return path;
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
}

/* Reads up to max lines of path (each malloc'd, newline removed); returns the count. */
static int read_lines(const char *path, char **lines, int max)
{
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f);
    int n = 0;
    char *buf = NULL;
    size_t cap = 0;
    ssize_t len;
    while ((len = getline(&buf, &cap, f)) > 0) {
        cr_assert_lt(n, max);
        cr_assert_eq(buf[len - 1], '\n', "every line is terminated");
        buf[len - 1] = 0;
        lines[n++] = strdup(buf);
    }
    free(buf);
    fclose(f);
    return n;
}

static void free_lines(char **lines, int n)
{
    for (int i = 0; i < n; i++) free(lines[i]);
}

Test(metrics, lines_parse_back_with_their_values)
{
    char *path = temp_path();
    lu_metrics *m = lu_metrics_open(path, false);
    cr_assert_not_null(m, "%s", lu_error_message());
    const char *keys[] = {"loss", "lr"};
    double values[] = {2.31, 3e-4};
    double before = (double)time(NULL);
    cr_assert_eq(lu_metrics_log(m, "train", 12, 2, keys, values), LU_OK, "%s", lu_error_message());
    cr_assert_eq(lu_metrics_log(m, "eval", 20, 1, keys, (double[]){0.123456789012345678}), LU_OK);
    lu_metrics_close(m);

    char *lines[4];
    int n = read_lines(path, lines, 4);
    cr_assert_eq(n, 2);
    cr_assert(!strncmp(lines[0], "{\"event\":\"train\",\"step\":12,\"time\":", 34), "fixed leading fields: %s",
              lines[0]);
    cJSON *a = cJSON_Parse(lines[0]), *b = cJSON_Parse(lines[1]);
    cr_assert(cJSON_IsObject(a) && cJSON_IsObject(b));
    cr_assert_eq(cJSON_GetObjectItem(a, "loss")->valuedouble, 2.31);
    cr_assert_eq(cJSON_GetObjectItem(a, "lr")->valuedouble, 3e-4);
    double t = cJSON_GetObjectItem(a, "time")->valuedouble;
    /* A minute of slack: virtual machines step their wall clock (seen on CI: a jump of seconds
     * between two reads); a unix time in seconds is what is checked, not the clock. */
    cr_assert(t >= before - 60 && t <= (double)time(NULL) + 60, "unix time %f, read between %f and %f", t, before,
              (double)time(NULL));
    cr_assert_lt(fabs(t * 1000 - round(t * 1000)), 1e-3, "millisecond resolution: %f", t);
    cr_assert_str_eq(cJSON_GetObjectItem(b, "event")->valuestring, "eval");
    cr_assert_eq(cJSON_GetObjectItem(b, "step")->valuedouble, 20);
    cr_assert_eq(cJSON_GetObjectItem(b, "loss")->valuedouble, 0.123456789012345678, "17 digits survive");
    cJSON_Delete(a);
    cJSON_Delete(b);
    free_lines(lines, n);
    unlink(path);
    free(path);
}

Test(metrics, non_finite_values_are_written_as_null)
{
    char *path = temp_path();
    lu_metrics *m = lu_metrics_open(path, false);
    const char *keys[] = {"loss", "grad_norm", "lr"};
    cr_assert_eq(lu_metrics_log(m, "train", 1, 3, keys, (double[]){NAN, -INFINITY, 1.0}), LU_OK);
    lu_metrics_close(m);
    char *lines[2];
    int n = read_lines(path, lines, 2);
    cr_assert_eq(n, 1);
    cr_assert(strstr(lines[0], "\"loss\":null,\"grad_norm\":null,\"lr\":1}"), "%s", lines[0]);
    double v = 0;
    int64_t step = 0;
    cr_assert_eq(lu_metrics_read_last(path, "train", "loss", &v, &step), LU_OK, "%s", lu_error_message());
    cr_assert(isnan(v), "null reads back as NaN");
    cr_assert_eq(step, 1);
    free_lines(lines, n);
    unlink(path);
    free(path);
}

Test(metrics, append_keeps_lines_and_truncate_drops_them)
{
    char *path = temp_path();
    const char *keys[] = {"loss"};
    for (int round = 0; round < 2; round++) {
        lu_metrics *m = lu_metrics_open(path, true);
        cr_assert_eq(lu_metrics_log(m, "train", round, 1, keys, (double[]){1.0}), LU_OK);
        lu_metrics_close(m);
    }
    char *lines[4];
    int n = read_lines(path, lines, 4);
    cr_assert_eq(n, 2, "append keeps earlier lines");
    free_lines(lines, n);
    lu_metrics *m = lu_metrics_open(path, false);
    cr_assert_eq(lu_metrics_log(m, "train", 9, 1, keys, (double[]){1.0}), LU_OK);
    lu_metrics_close(m);
    n = read_lines(path, lines, 4);
    cr_assert_eq(n, 1, "opening without append truncates");
    free_lines(lines, n);
    unlink(path);
    free(path);
}

Test(metrics, read_last_returns_the_latest_line_of_the_event_holding_the_key)
{
    char *path = temp_path();
    lu_metrics *m = lu_metrics_open(path, false);
    const char *loss[] = {"loss"}, *lr[] = {"lr"};
    cr_assert_eq(lu_metrics_log(m, "train", 1, 1, loss, (double[]){3.0}), LU_OK);
    cr_assert_eq(lu_metrics_log(m, "train", 2, 1, loss, (double[]){2.5}), LU_OK);
    cr_assert_eq(lu_metrics_log(m, "eval", 2, 1, loss, (double[]){2.75}), LU_OK);
    cr_assert_eq(lu_metrics_log(m, "train", 3, 1, lr, (double[]){1e-4}), LU_OK);
    lu_metrics_close(m);
    double v;
    int64_t step;
    cr_assert_eq(lu_metrics_read_last(path, "train", "loss", &v, &step), LU_OK, "%s", lu_error_message());
    cr_assert_eq(v, 2.5);
    cr_assert_eq(step, 2, "step 3 has no loss");
    cr_assert_eq(lu_metrics_read_last(path, "eval", "loss", &v, &step), LU_OK);
    cr_assert_eq(v, 2.75);
    cr_assert_eq(lu_metrics_read_last(path, "train", "wer", &v, &step), LU_ERR_INVALID);
    tu_assert_error_contains("no 'train' line with \"wer\"");
    unlink(path);
    free(path);
}

Test(metrics, read_last_ignores_a_cut_final_line_but_not_a_bad_middle_one)
{
    char *path = temp_path();
    write_text(path, "{\"event\":\"train\",\"step\":4,\"loss\":1.5}\n{\"event\":\"train\",\"step\":5,\"lo");
    double v;
    int64_t step;
    cr_assert_eq(lu_metrics_read_last(path, "train", "loss", &v, &step), LU_OK, "%s", lu_error_message());
    cr_assert_eq(step, 4);
    cr_assert_eq(v, 1.5);
    write_text(path, "{\"event\":\"train\",\"step\":4,\"loss\":1.5}\nnot json\n{\"event\":\"train\",\"step\":6}\n");
    cr_assert_eq(lu_metrics_read_last(path, "train", "loss", &v, &step), LU_ERR_FORMAT);
    char expect[128];
    snprintf(expect, sizeof expect, "%s:2: not a JSON object", path);
    tu_assert_error_contains(expect);
    unlink(path);
    free(path);
}

Test(metrics, reserved_keys_are_rejected)
{
    char *path = temp_path();
    lu_metrics *m = lu_metrics_open(path, false);
    const char *keys[] = {"loss", "step"};
    cr_assert_eq(lu_metrics_log(m, "train", 1, 2, keys, (double[]){1, 2}), LU_ERR_INVALID);
    tu_assert_error_contains("key 'step' of event 'train' is reserved");
    lu_metrics_close(m);
    unlink(path);
    free(path);
}

Test(metrics, open_failure_names_the_path_and_reason)
{
    cr_assert_null(lu_metrics_open("/nonexistent/dir/metrics.jsonl", false));
    tu_assert_error_contains("cannot open '/nonexistent/dir/metrics.jsonl': No such file or directory");
    double v;
    int64_t step;
    cr_assert_eq(lu_metrics_read_last("/nonexistent/m.jsonl", "train", "loss", &v, &step), LU_ERR_IO);
    tu_assert_error_contains("'/nonexistent/m.jsonl'");
}

/* ---- progress -------------------------------------------------------------------------------- */

Test(progress, formats_durations)
{
    struct {
        double s;
        const char *text;
    } cases[] = {{0, "0s"},           {59.9, "59s"},          {60, "1m00s"},   {192.5, "3m12s"},
                 {3900, "1h05m"},     {86399, "23h59m"},      {86400 * 3 + 4 * 3600, "3d04h"},
                 {-1, "--"},          {NAN, "--"},            {INFINITY, "--"}};
    char buf[32];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        lu_progress_format_duration(cases[i].s, buf, sizeof buf);
        cr_assert_str_eq(buf, cases[i].text, "%g seconds", cases[i].s);
    }
}

Test(progress, formats_rates_with_si_prefixes)
{
    struct {
        double r;
        const char *text;
    } cases[] = {{0, "0.0 tok/s"},         {12.34, "12.3 tok/s"},    {1234, "1.2k tok/s"},
                 {999.96, "1.0k tok/s"},   {3.4e6, "3.4M tok/s"},    {5.6e9, "5.6G tok/s"},
                 {NAN, "-- tok/s"},        {INFINITY, "-- tok/s"}};
    char buf[32];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        lu_progress_format_rate(cases[i].r, "tok", buf, sizeof buf);
        cr_assert_str_eq(buf, cases[i].text, "%g per second", cases[i].r);
    }
}

/* Runs `updates` quick updates of a 10-step loop into a temporary (non-terminal) file. */
static int progress_lines(int64_t total, int updates, char **lines, int max)
{
    char *path = temp_path();
    FILE *f = fopen(path, "w");
    lu_progress *p = lu_progress_begin(f, "train", total);
    cr_assert_not_null(p);
    const char *keys[] = {"loss", "lr"};
    for (int i = 1; i <= updates; i++) lu_progress_update(p, i, 2, keys, (double[]){2.5, 3e-4}, 100, "tok");
    lu_progress_end(p);
    fclose(f);
    int n = read_lines(path, lines, max);
    unlink(path);
    free(path);
    return n;
}

Test(progress, log_prints_the_first_update_and_the_final_line)
{
    unsetenv("LUTHIER_PROGRESS_INTERVAL");
    char *lines[8];
    int n = progress_lines(10, 5, lines, 8);
    cr_assert_eq(n, 2, "updates within 10 s print once, plus the final line");
    cr_assert(!strncmp(lines[0], "train 1/10 10.0% loss=2.5 lr=0.0003 ", 36), "%s", lines[0]);
    cr_assert(strstr(lines[0], " tok/s "), "%s", lines[0]);
    cr_assert(strstr(lines[0], " eta "), "%s", lines[0]);
    cr_assert(!strncmp(lines[1], "train 5/10 50.0% loss=2.5 lr=0.0003 ", 36), "%s", lines[1]);
    cr_assert(strstr(lines[1], " tok/s "), "%s", lines[1]);
    cr_assert_null(strstr(lines[1], "eta"), "the final line has no ETA: %s", lines[1]);
    free_lines(lines, n);
}

Test(progress, interval_environment_variable_sets_the_log_frequency)
{
    setenv("LUTHIER_PROGRESS_INTERVAL", "0", 1);
    char *lines[8];
    int n = progress_lines(10, 5, lines, 8);
    cr_assert_eq(n, 6, "interval 0: every update plus the final line");
    for (int i = 0; i < 5; i++) {
        char head[32];
        snprintf(head, sizeof head, "train %d/10 ", i + 1);
        cr_assert(!strncmp(lines[i], head, strlen(head)), "%s", lines[i]);
    }
    free_lines(lines, n);
}

Test(progress, unknown_total_shows_the_count_without_percent_or_eta)
{
    setenv("LUTHIER_PROGRESS_INTERVAL", "0", 1);
    char *lines[8];
    int n = progress_lines(0, 3, lines, 8);
    cr_assert_eq(n, 4);
    cr_assert(!strncmp(lines[2], "train 3 loss=2.5", 16), "%s", lines[2]);
    for (int i = 0; i < n; i++) {
        cr_assert_null(strchr(lines[i], '%'), "%s", lines[i]);
        cr_assert_null(strstr(lines[i], "eta"), "%s", lines[i]);
    }
    free_lines(lines, n);
}

/* Reads what arrives on fd within 200 ms of quiet. */
static size_t drain(int fd, char *buf, size_t cap)
{
    size_t n = 0;
    struct pollfd pfd = {fd, POLLIN, 0};
    while (n < cap - 1 && poll(&pfd, 1, 200) > 0) {
        ssize_t got = read(fd, buf + n, cap - 1 - n);
        if (got <= 0) break;
        n += (size_t)got;
    }
    buf[n] = 0;
    return n;
}

Test(progress, terminal_rewrites_one_line)
{
    int master = posix_openpt(O_RDWR | O_NOCTTY);
    cr_assert_geq(master, 0, "a pseudo-terminal is needed for this test");
    cr_assert_eq(grantpt(master), 0);
    cr_assert_eq(unlockpt(master), 0);
    int slave = open(ptsname(master), O_RDWR | O_NOCTTY);
    cr_assert_geq(slave, 0);
    FILE *f = fdopen(slave, "w");
    lu_progress *p = lu_progress_begin(f, "eval", 3);
    const char *keys[] = {"wer"};
    lu_progress_update(p, 1, 1, keys, (double[]){12.5}, 0, NULL);
    lu_progress_update(p, 2, 1, keys, (double[]){11.0}, 0, NULL); /* within 0.1 s: not drawn */
    lu_progress_update(p, 3, 1, keys, (double[]){10.0}, 0, NULL);
    lu_progress_end(p);
    char out[1024];
    drain(master, out, sizeof out);
    fclose(f);
    close(master);
    cr_assert(!strncmp(out, "\reval 1/3 33.3% wer=12.5 ", 25), "%s", out);
    cr_assert(strstr(out, "\reval 3/3 100.0% wer=10 "), "the final line is redrawn: %s", out);
    cr_assert_null(strstr(out, "2/3"), "at most ~10 redraws a second: %s", out);
    char *nl = strchr(out, '\n');
    cr_assert(nl && nl[1] == 0, "one newline, at the very end: %s", out);
}
