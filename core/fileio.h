/* fileio.h - whole-file reads and durable renames, shared by luthier's file formats. Errors name
 * the file and the system's reason. */
#ifndef LU_FILEIO_H
#define LU_FILEIO_H

#include <stddef.h>

#include <cjson/cJSON.h>

#include "error.h"

/* The whole file, NUL-terminated, in a heap buffer (free it); *len (may be NULL) receives its
 * size. A file larger than max_bytes is an error, so a bad path cannot exhaust memory. */
char *lu_file_read(const char *path, size_t max_bytes, size_t *len);
/* A JSON file (at most 64 MB) whose top level is an object; errors give the byte of a syntax error. */
cJSON *lu_json_read(const char *path);
/* fsync of the directory holding path, so that a rename into it survives a crash. */
lu_status lu_file_sync_dir(const char *path);

#endif
