/* fileio.c - whole-file reads and directory syncs (see fileio.h). */
#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define JSON_MAX_BYTES ((size_t)64 << 20)

char *lu_file_read(const char *path, size_t max_bytes, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        lu_errorf(LU_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    char *buf = NULL;
    if (fstat(fileno(fp), &st) != 0 || !S_ISREG(st.st_mode))
        lu_errorf(LU_ERR_IO, "%s: not a regular file", path);
    else if ((size_t)st.st_size > max_bytes)
        lu_errorf(LU_ERR_FORMAT, "%s: %lld bytes, more than the %zu expected at most", path, (long long)st.st_size,
                  max_bytes);
    else if (!(buf = malloc((size_t)st.st_size + 1)))
        lu_errorf(LU_ERR_NOMEM, "%s: out of memory", path);
    else if (fread(buf, 1, (size_t)st.st_size, fp) != (size_t)st.st_size) {
        lu_errorf(LU_ERR_IO, "%s: read failed: %s", path, strerror(errno));
        free(buf);
        buf = NULL;
    } else {
        buf[st.st_size] = 0;
        if (len) *len = (size_t)st.st_size;
    }
    fclose(fp);
    return buf;
}

cJSON *lu_json_read(const char *path)
{
    size_t n = 0;
    char *buf = lu_file_read(path, JSON_MAX_BYTES, &n);
    if (!buf) return NULL;
    cJSON *j = cJSON_ParseWithLength(buf, n);
    if (!j) {
        const char *at = cJSON_GetErrorPtr();
        lu_errorf(LU_ERR_FORMAT, "%s: not valid JSON (error near byte %ld)", path,
                  at && at >= buf && at <= buf + n ? (long)(at - buf) : 0L);
    } else if (!cJSON_IsObject(j)) {
        lu_errorf(LU_ERR_FORMAT, "%s: the top level is not a JSON object", path);
        cJSON_Delete(j);
        j = NULL;
    }
    free(buf);
    return j;
}

lu_status lu_file_sync_dir(const char *path)
{
    char *copy = strdup(path);
    if (!copy) return lu_errorf(LU_ERR_NOMEM, "%s: out of memory", path);
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY);
    lu_status s = LU_OK;
    if (fd < 0 || fsync(fd) != 0) s = lu_errorf(LU_ERR_IO, "%s: cannot sync its directory: %s", path, strerror(errno));
    if (fd >= 0) close(fd);
    free(copy);
    return s;
}
