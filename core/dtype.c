/* dtype.c - dtype sizes and names; bf16/f16 <-> f32 conversions (bit-exact, round to nearest even). */
#include "dtype.h"

#include <math.h>
#include <string.h>

static const struct {
    const char *name, *alias;
    size_t size;
} dtype_info[LU_DTYPE_COUNT] = {
    [LU_F32] = {"f32", "float32", 4}, [LU_F64] = {"f64", "float64", 8},
    [LU_BF16] = {"bf16", "bfloat16", 2}, [LU_F16] = {"f16", "float16", 2},
    [LU_I32] = {"i32", "int32", 4},   [LU_I64] = {"i64", "int64", 8},
    [LU_U8] = {"u8", "uint8", 1},     [LU_BOOL] = {"bool", "bool", 1},
};

size_t lu_dtype_size(lu_dtype dt) { return dt < LU_DTYPE_COUNT ? dtype_info[dt].size : 0; }
const char *lu_dtype_name(lu_dtype dt) { return dt < LU_DTYPE_COUNT ? dtype_info[dt].name : "?"; }
bool lu_dtype_is_float(lu_dtype dt) { return dt == LU_F32 || dt == LU_F64 || dt == LU_BF16 || dt == LU_F16; }

bool lu_dtype_parse(const char *name, lu_dtype *out)
{
    for (int i = 0; i < LU_DTYPE_COUNT; i++) {
        if (!strcmp(name, dtype_info[i].name) || !strcmp(name, dtype_info[i].alias)) {
            *out = (lu_dtype)i;
            return true;
        }
    }
    return false;
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t lu_f32_to_bf16(float f)
{
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float lu_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t lu_f32_to_f16(float f)
{
    uint32_t u = f32_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t absu = u & 0x7fffffffu;
    if (absu > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);       /* NaN */
    if (absu >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);      /* overflow -> inf */
    if (absu < 0x38800000u) {                                        /* subnormal or zero */
        /* Scale so that the f16 subnormal unit (2^-24) becomes 1, then round to even. */
        float a = bits_f32(absu) * 16777216.0f;
        float r = nearbyintf(a);
        return (uint16_t)(sign | (uint32_t)r);
    }
    uint32_t mant = absu & 0x7fffffu;
    uint32_t exp = (absu >> 23) - 127 + 15;
    uint32_t h = (exp << 10) | (mant >> 13);
    uint32_t rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;
    return (uint16_t)(sign | h);
}

float lu_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0) {
        float v = ldexpf((float)mant, -24);
        return sign ? -v : v;
    }
    if (exp == 31) return bits_f32(sign | 0x7f800000u | (mant << 13));
    return bits_f32(sign | ((exp - 15 + 127) << 23) | (mant << 13));
}

static double load_as_double(const void *p, lu_dtype dt, size_t i)
{
    switch (dt) {
    case LU_F32: return ((const float *)p)[i];
    case LU_F64: return ((const double *)p)[i];
    case LU_BF16: return lu_bf16_to_f32(((const uint16_t *)p)[i]);
    case LU_F16: return lu_f16_to_f32(((const uint16_t *)p)[i]);
    case LU_I32: return ((const int32_t *)p)[i];
    case LU_I64: return (double)((const int64_t *)p)[i];
    case LU_U8: return ((const uint8_t *)p)[i];
    case LU_BOOL: return ((const uint8_t *)p)[i] != 0;
    default: return 0;
    }
}

static void store_double(void *p, lu_dtype dt, size_t i, double v)
{
    switch (dt) {
    case LU_F32: ((float *)p)[i] = (float)v; break;
    case LU_F64: ((double *)p)[i] = v; break;
    case LU_BF16: ((uint16_t *)p)[i] = lu_f32_to_bf16((float)v); break;
    case LU_F16: ((uint16_t *)p)[i] = lu_f32_to_f16((float)v); break;
    case LU_I32: ((int32_t *)p)[i] = (int32_t)v; break;
    case LU_I64: ((int64_t *)p)[i] = (int64_t)v; break;
    case LU_U8: ((uint8_t *)p)[i] = (uint8_t)v; break;
    case LU_BOOL: ((uint8_t *)p)[i] = v != 0; break;
    default: break;
    }
}

void lu_dtype_convert(void *dst, lu_dtype dst_dt, const void *src, lu_dtype src_dt, size_t n)
{
    if (dst_dt == src_dt) {
        memcpy(dst, src, n * lu_dtype_size(dst_dt));
        return;
    }
    if (src_dt == LU_I64 && dst_dt == LU_I32) {
        for (size_t i = 0; i < n; i++) ((int32_t *)dst)[i] = (int32_t)((const int64_t *)src)[i];
        return;
    }
    if (src_dt == LU_I32 && dst_dt == LU_I64) {
        for (size_t i = 0; i < n; i++) ((int64_t *)dst)[i] = ((const int32_t *)src)[i];
        return;
    }
    if (src_dt == LU_BF16 && dst_dt == LU_F32) {
        for (size_t i = 0; i < n; i++) ((float *)dst)[i] = lu_bf16_to_f32(((const uint16_t *)src)[i]);
        return;
    }
    if (src_dt == LU_F32 && dst_dt == LU_BF16) {
        for (size_t i = 0; i < n; i++) ((uint16_t *)dst)[i] = lu_f32_to_bf16(((const float *)src)[i]);
        return;
    }
    for (size_t i = 0; i < n; i++) store_double(dst, dst_dt, i, load_as_double(src, src_dt, i));
}
