/* metrics.h - training and evaluation metrics as JSON Lines, one object per logged step:
 *   {"event":"train","step":12,"time":1718000000.123,"loss":2.31,"lr":0.0003}
 * Every line is flushed when written, so a crashed run keeps all lines before the crash.
 * NaN and infinite values are written as null (JSON has no spelling for them). */
#ifndef LU_METRICS_H
#define LU_METRICS_H

#include <stdbool.h>
#include <stdint.h>

#include "error.h"

typedef struct lu_metrics lu_metrics;

/* Opens (creating it) the JSONL file at path; append keeps existing lines. NULL on failure. */
lu_metrics *lu_metrics_open(const char *path, bool append);
/* Writes one line: event, step, time (unix seconds, millisecond resolution), then the n
 * key/value pairs in order. Keys "event", "step" and "time" are reserved. */
lu_status lu_metrics_log(lu_metrics *m, const char *event, int64_t step, int n, const char *const *keys,
                         const double *values);
void lu_metrics_close(lu_metrics *m);

/* Reads back the value of `key` (NaN for null) and the step of the last line of `event` that
 * holds key. An unterminated final line (a write cut short) is ignored; any other malformed
 * line is an LU_ERR_FORMAT error naming PATH:LINE. LU_ERR_INVALID if no line matches. */
lu_status lu_metrics_read_last(const char *path, const char *event, const char *key, double *value, int64_t *step);

#endif
