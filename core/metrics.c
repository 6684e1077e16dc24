/* metrics.c - the JSONL metrics writer and its reader (see metrics.h). Lines are built with cJSON,
 * which escapes keys and prints doubles with up to 17 significant digits. */
#include "metrics.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

struct lu_metrics {
    FILE *f;
    char *path;
};

lu_metrics *lu_metrics_open(const char *path, bool append)
{
    lu_metrics *m = calloc(1, sizeof *m);
    if (!m || !(m->path = strdup(path))) {
        free(m);
        lu_errorf(LU_ERR_NOMEM, "metrics: out of memory opening '%s'", path);
        return NULL;
    }
    m->f = fopen(path, append ? "a" : "w");
    if (!m->f) {
        lu_errorf(LU_ERR_IO, "metrics: cannot open '%s': %s", path, strerror(errno));
        free(m->path);
        free(m);
        return NULL;
    }
    return m;
}

static double unix_time_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return round(((double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6)) / 1e3;
}

static bool add_number(cJSON *obj, const char *key, double v)
{
    return isfinite(v) ? cJSON_AddNumberToObject(obj, key, v) != NULL : cJSON_AddNullToObject(obj, key) != NULL;
}

lu_status lu_metrics_log(lu_metrics *m, const char *event, int64_t step, int n, const char *const *keys,
                         const double *values)
{
    if (!event) return lu_errorf(LU_ERR_INVALID, "metrics: event name is NULL");
    for (int i = 0; i < n; i++) {
        if (!keys[i]) return lu_errorf(LU_ERR_INVALID, "metrics: key %d of event '%s' is NULL", i, event);
        if (!strcmp(keys[i], "event") || !strcmp(keys[i], "step") || !strcmp(keys[i], "time"))
            return lu_errorf(LU_ERR_INVALID, "metrics: key '%s' of event '%s' is reserved", keys[i], event);
    }
    cJSON *obj = cJSON_CreateObject();
    bool ok = obj && cJSON_AddStringToObject(obj, "event", event) &&
              cJSON_AddNumberToObject(obj, "step", (double)step) && add_number(obj, "time", unix_time_ms());
    for (int i = 0; i < n && ok; i++) ok = add_number(obj, keys[i], values[i]);
    char *line = ok ? cJSON_PrintUnformatted(obj) : NULL;
    cJSON_Delete(obj);
    if (!line) return lu_errorf(LU_ERR_NOMEM, "metrics: out of memory formatting a '%s' line", event);
    bool written = fputs(line, m->f) >= 0 && fputc('\n', m->f) != EOF && fflush(m->f) == 0;
    cJSON_free(line);
    if (!written) return lu_errorf(LU_ERR_IO, "metrics: writing '%s': %s", m->path, strerror(errno));
    return LU_OK;
}

void lu_metrics_close(lu_metrics *m)
{
    if (!m) return;
    fclose(m->f);
    free(m->path);
    free(m);
}

lu_status lu_metrics_read_last(const char *path, const char *event, const char *key, double *value, int64_t *step)
{
    FILE *f = fopen(path, "r");
    if (!f) return lu_errorf(LU_ERR_IO, "metrics: cannot open '%s': %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    lu_status s = LU_OK;
    bool found = false;
    for (int lineno = 1; s == LU_OK && (len = getline(&line, &cap, f)) > 0; lineno++) {
        bool terminated = line[len - 1] == '\n';
        cJSON *obj = cJSON_Parse(line);
        if (!cJSON_IsObject(obj)) {
            cJSON_Delete(obj);
            bool blank = strspn(line, " \t\r\n") == (size_t)len;
            if (!blank && terminated) s = lu_errorf(LU_ERR_FORMAT, "metrics: %s:%d: not a JSON object", path, lineno);
            continue;
        }
        const cJSON *ev = cJSON_GetObjectItemCaseSensitive(obj, "event");
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
        if (cJSON_IsString(ev) && !strcmp(ev->valuestring, event) && v) {
            const cJSON *st = cJSON_GetObjectItemCaseSensitive(obj, "step");
            if (!cJSON_IsNumber(st))
                s = lu_errorf(LU_ERR_FORMAT, "metrics: %s:%d: line has no numeric \"step\"", path, lineno);
            else if (!cJSON_IsNumber(v) && !cJSON_IsNull(v))
                s = lu_errorf(LU_ERR_FORMAT, "metrics: %s:%d: \"%s\" is not a number", path, lineno, key);
            else {
                *value = cJSON_IsNumber(v) ? v->valuedouble : NAN;
                *step = (int64_t)st->valuedouble;
                found = true;
            }
        }
        cJSON_Delete(obj);
    }
    bool read_failed = ferror(f);
    free(line);
    fclose(f);
    if (s != LU_OK) return s;
    if (read_failed) return lu_errorf(LU_ERR_IO, "metrics: reading '%s' failed", path);
    if (!found) return lu_errorf(LU_ERR_INVALID, "metrics: no '%s' line with \"%s\" in '%s'", event, key, path);
    return LU_OK;
}
