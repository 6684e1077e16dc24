/* cpu.h - shared declarations of the CPU backend: one registration function per kernel file,
 * and the float dispatch used by kernels written once over `real` (see generic.h). */
#ifndef LU_CPU_H
#define LU_CPU_H

#include "../backend.h"

void lu_cpu_register_layout(lu_backend *b);
void lu_cpu_register_matmul(lu_backend *b);
void lu_cpu_register_elementwise(lu_backend *b);
void lu_cpu_register_reduce(lu_backend *b);
void lu_cpu_register_index(lu_backend *b);
void lu_cpu_register_norm(lu_backend *b);
void lu_cpu_register_attention(lu_backend *b);
void lu_cpu_register_conv(lu_backend *b);
void lu_cpu_register_resample(lu_backend *b);
void lu_cpu_register_ctc(lu_backend *b);
void lu_cpu_register_optim(lu_backend *b);

/* dst[i . dst_stride] = src[i . src_stride] for every index i < shape (strides in elements of
 * es bytes); host memory, non-overlapping. Rows and transposes go by memcpy and tiles. */
void lu_cpu_strided_copy(void *dst, const int64_t *dst_stride, const void *src, const int64_t *src_stride,
                         const int64_t *shape, int ndim, size_t es);

/* acc = the sum over c in [0, n) of EXPR (an expression of c), accumulated in double over 8
 * lanes in a fixed order: the loop vectorises without reassociating, and the result does not
 * depend on the thread count. A plain `acc += EXPR` loop waits on each double add in turn. */
#define LU_CPU_LANE_SUM(acc, n, c, EXPR)                                                       \
    do {                                                                                       \
        double lu_lane_[8] = {0}, lu_sum_ = 0;                                                 \
        int64_t lu_n_ = (n), lu_b_ = 0;                                                        \
        for (; lu_b_ + 8 <= lu_n_; lu_b_ += 8)                                                 \
            for (int lu_k_ = 0; lu_k_ < 8; lu_k_++) {                                          \
                int64_t c = lu_b_ + lu_k_;                                                     \
                lu_lane_[lu_k_] += (EXPR);                                                     \
            }                                                                                  \
        for (int64_t c = lu_b_; c < lu_n_; c++) lu_sum_ += (EXPR);                             \
        for (int lu_k_ = 0; lu_k_ < 8; lu_k_++) lu_sum_ += lu_lane_[lu_k_];                    \
        (acc) = lu_sum_;                                                                       \
    } while (0)

/* Calls fn_f32 or fn_f64 by dtype `dt`; any other dtype is an error naming the op. */
#define LU_CPU_DISPATCH_FLOAT(fn, call, dt)                                                    \
    do {                                                                                       \
        switch (dt) {                                                                          \
        case LU_F32: return fn##_f32(call);                                                    \
        case LU_F64: return fn##_f64(call);                                                    \
        default:                                                                               \
            return lu_errorf(LU_ERR_DTYPE, "%s: dtype %s is not supported by the cpu backend " \
                             "(use f32 or f64)", lu_op_name((call)->op), lu_dtype_name(dt));  \
        }                                                                                      \
    } while (0)

/* Reads element i of an integer index tensor (i32 or i64). */
static inline int64_t lu_cpu_index_at(const lu_tensor *t, int64_t i)
{
    return t->dtype == LU_I64 ? ((const int64_t *)lu_tensor_data(t))[i] : ((const int32_t *)lu_tensor_data(t))[i];
}

#endif
