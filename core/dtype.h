/* dtype.h - element types and the float conversions between them.
 *
 * bf16 is the top half of an IEEE float32; conversion rounds to nearest even (as torch does).
 * f16 is IEEE binary16 with subnormals, infinities and NaN. */
#ifndef LU_DTYPE_H
#define LU_DTYPE_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

typedef enum lu_dtype {
    LU_F32 = 0,
    LU_F64,  /* CPU only: used by the float64 reference and gradient checks */
    LU_BF16,
    LU_F16,
    LU_I32,
    LU_I64,
    LU_U8,
    LU_BOOL,
    LU_DTYPE_COUNT
} lu_dtype;

size_t lu_dtype_size(lu_dtype dt);
const char *lu_dtype_name(lu_dtype dt);
/* Parses "f32", "float32", "bf16", "bfloat16", ... Returns false when unknown. */
bool lu_dtype_parse(const char *name, lu_dtype *out);
bool lu_dtype_is_float(lu_dtype dt);

uint16_t lu_f32_to_bf16(float f);
float lu_bf16_to_f32(uint16_t h);
uint16_t lu_f32_to_f16(float f);
float lu_f16_to_f32(uint16_t h);

/* Converts n contiguous elements between any two dtypes (float -> int truncates toward zero). */
void lu_dtype_convert(void *dst, lu_dtype dst_dt, const void *src, lu_dtype src_dt, size_t n);

#endif
