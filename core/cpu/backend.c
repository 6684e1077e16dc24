/* backend.c - the CPU backend: host memory, copies, fills, and the kernel table assembled from
 * the kernel files (cpu.h). */
#include <stdlib.h>
#include <string.h>

#include "cpu.h"

static void *cpu_alloc(size_t nbytes) { return aligned_alloc(64, (nbytes + 63) & ~(size_t)63); }
static void cpu_free(void *p) { free(p); }

static lu_status cpu_copy(void *dst, lu_device dst_dev, const void *src, lu_device src_dev, size_t nbytes)
{
    if (dst_dev != LU_CPU || src_dev != LU_CPU)
        return lu_errorf(LU_ERR_DEVICE, "cpu backend: cannot copy %s -> %s", lu_device_name(src_dev),
                         lu_device_name(dst_dev));
    memmove(dst, src, nbytes);
    return LU_OK;
}

static lu_status cpu_fill(void *dst, lu_dtype dt, size_t n, double value)
{
    if (value == 0.0) {
        memset(dst, 0, n * lu_dtype_size(dt));
        return LU_OK;
    }
    if (dt == LU_F32) {
        float v = (float)value, *d = dst;
        for (size_t i = 0; i < n; i++) d[i] = v;
        return LU_OK;
    }
    unsigned char one[8];
    size_t es = lu_dtype_size(dt);
    lu_dtype_convert(one, dt, &value, LU_F64, 1);
    for (size_t i = 0; i < n; i++) memcpy((char *)dst + i * es, one, es);
    return LU_OK;
}

static lu_status cpu_synchronize(void) { return LU_OK; }

void lu_cpu_backend_init(lu_backend *b)
{
    memset(b, 0, sizeof *b);
    b->name = "cpu";
    b->device = LU_CPU;
    b->alloc = cpu_alloc;
    b->free = cpu_free;
    b->copy = cpu_copy;
    b->fill = cpu_fill;
    b->synchronize = cpu_synchronize;
    lu_cpu_register_layout(b);
    lu_cpu_register_matmul(b);
    lu_cpu_register_elementwise(b);
    lu_cpu_register_reduce(b);
    lu_cpu_register_index(b);
    lu_cpu_register_norm(b);
    lu_cpu_register_attention(b);
    lu_cpu_register_conv(b);
    lu_cpu_register_resample(b);
    lu_cpu_register_ctc(b);
    lu_cpu_register_optim(b);
}
