/* error.h - the one error convention of luthier.
 *
 * Library functions never exit. A fallible function returns an lu_status (LU_OK == 0) or a
 * pointer that is NULL on failure; in both cases it first records a message with lu_errorf(),
 * naming the op, file, tensor, key or line at fault. The caller (ultimately the CLI) reads it
 * with lu_error_message() and decides what to do. Messages are per thread. */
#ifndef LU_ERROR_H
#define LU_ERROR_H

#include <stdio.h>

typedef enum lu_status {
    LU_OK = 0,
    LU_ERR_INVALID,  /* bad argument value */
    LU_ERR_SHAPE,    /* shape or rank mismatch */
    LU_ERR_DTYPE,    /* unsupported or mismatched dtype */
    LU_ERR_DEVICE,   /* device mismatch or unavailable backend */
    LU_ERR_NOMEM,    /* allocation failed */
    LU_ERR_IO,       /* file could not be read or written */
    LU_ERR_FORMAT,   /* malformed file contents */
    LU_ERR_CONFIG,   /* bad configuration key or value */
    LU_ERR_STATE,    /* call made in the wrong state (e.g. backward without a tape) */
    LU_ERR_UNSUPPORTED
} lu_status;

/* Records a message (printf format) for `code` and returns `code`. */
lu_status lu_errorf(lu_status code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prepends context ("while loading x.h5: ") to the current message; returns the current code. */
lu_status lu_error_context(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
const char *lu_error_message(void);
lu_status lu_error_code(void);
const char *lu_status_name(lu_status code);
void lu_error_clear(void);

/* Propagate a failing status to the caller. */
#define LU_TRY(expr)                         \
    do {                                     \
        lu_status lu_try_s_ = (expr);        \
        if (lu_try_s_ != LU_OK) return lu_try_s_; \
    } while (0)

/* Like LU_TRY for calls returning a pointer: NULL propagates as the recorded status. */
#define LU_TRY_PTR(var, expr)                \
    do {                                     \
        (var) = (expr);                      \
        if (!(var)) return lu_error_code();  \
    } while (0)

#endif
