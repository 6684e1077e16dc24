/* error.c - per-thread error message storage for the lu_errorf convention (see error.h). */
#include "error.h"

#include <stdarg.h>
#include <string.h>

#define LU_ERROR_MAX 1024

static _Thread_local char err_msg[LU_ERROR_MAX];
static _Thread_local lu_status err_code;

/* Formats into a buffer of its own first: an argument may be lu_error_message() itself. */
lu_status lu_errorf(lu_status code, const char *fmt, ...)
{
    char msg[LU_ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    memcpy(err_msg, msg, sizeof msg);
    err_code = code;
    return code;
}

lu_status lu_error_context(const char *fmt, ...)
{
    char prefix[LU_ERROR_MAX], old[LU_ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, err_msg, sizeof old);
    size_t n = strlen(prefix);
    memcpy(err_msg, prefix, n);
    size_t rest = sizeof err_msg - 1 - n;
    size_t m = strnlen(old, rest);
    memcpy(err_msg + n, old, m);
    err_msg[n + m] = 0;
    return err_code;
}

const char *lu_error_message(void) { return err_msg[0] ? err_msg : "no error recorded"; }
lu_status lu_error_code(void) { return err_code ? err_code : LU_ERR_STATE; }

void lu_error_clear(void)
{
    err_msg[0] = 0;
    err_code = LU_OK;
}

const char *lu_status_name(lu_status code)
{
    static const char *names[] = {"ok", "invalid argument", "shape mismatch", "dtype error",
                                  "device error", "out of memory", "I/O error", "format error",
                                  "config error", "state error", "unsupported"};
    if ((unsigned)code < sizeof names / sizeof names[0]) return names[code];
    return "unknown error";
}
