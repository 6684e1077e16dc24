/* generic.h - compiles a kernel file once per float type, as TH's generic/ files did.
 *
 * Usage in a kernel .c file:
 *     #define LU_GENERIC_FILE "cpu/elementwise_generic.h"
 *     #include "generic.h"
 * The included file is written over the type `real`, names its functions with R(name) (which
 * becomes name_f32 / name_f64) and uses <tgmath.h> math (exp, log, ... pick the right width).
 * R_BLAS(gemm) becomes cblas_sgemm / cblas_dgemm. R_EXP and R_LOG1P_POS (x >= 0) are the
 * vectorisable lu_expf and lu_log1pf_pos for float (cpu_math.h), exp and log1p for double. */
#include <tgmath.h>

#include "cpu_math.h"

#define R_CAT_(a, b) a##_##b
#define R_CAT(a, b) R_CAT_(a, b)

#define real float
#define R_SUFFIX f32
#define R(name) R_CAT(name, f32)
#define R_BLAS(name) cblas_s##name
#define R_DTYPE LU_F32
#define R_EXP lu_expf
#define R_LOG1P_POS lu_log1pf_pos
#include LU_GENERIC_FILE
#undef real
#undef R_SUFFIX
#undef R
#undef R_BLAS
#undef R_DTYPE
#undef R_EXP
#undef R_LOG1P_POS

#define real double
#define R_SUFFIX f64
#define R(name) R_CAT(name, f64)
#define R_BLAS(name) cblas_d##name
#define R_DTYPE LU_F64
#define R_EXP exp
#define R_LOG1P_POS log1p
#include LU_GENERIC_FILE
#undef real
#undef R_SUFFIX
#undef R
#undef R_BLAS
#undef R_DTYPE
#undef R_EXP
#undef R_LOG1P_POS
#undef LU_GENERIC_FILE
