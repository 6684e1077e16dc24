/* progress.h - the progress line of long loops (training steps, evaluation batches).
 *
 * On a terminal one line is rewritten in place with '\r' at most ~10 times a second:
 *   train 120/1000 12.0% loss=2.31 lr=0.0003 1.2k tok/s 1m05s eta 9m30s
 * Elsewhere (a log file, a batch job) the same text is printed as a plain line at most every
 * LUTHIER_PROGRESS_INTERVAL seconds (default 10; the first update is printed at once), and
 * lu_progress_end prints the final line with the overall rate. */
#ifndef LU_PROGRESS_H
#define LU_PROGRESS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct lu_progress lu_progress;

/* total 0: unknown (no percent, no ETA). NULL only when out of memory. */
lu_progress *lu_progress_begin(FILE *f, const char *label, int64_t total);
/* done: items of the loop finished so far; items: units processed since the last update (for
 * the throughput, e.g. tokens), item_unit its name ("tok"). n keys/values are shown as k=v. */
void lu_progress_update(lu_progress *p, int64_t done, int n, const char *const *keys, const double *values,
                        double items, const char *item_unit);
/* Prints the final line (with a newline on a terminal) and frees p. */
void lu_progress_end(lu_progress *p);

/* "42s", "3m12s", "2h05m", "3d04h"; "--" for a negative or non-finite duration. */
void lu_progress_format_duration(double seconds, char *buf, size_t n);
/* "12.0 tok/s", "1.2k tok/s", "3.4M tok/s", "5.6G tok/s"; "-- tok/s" if not finite. */
void lu_progress_format_rate(double per_sec, const char *unit, char *buf, size_t n);

#endif
