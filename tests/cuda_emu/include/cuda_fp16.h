/* cuda_fp16.h - for the CPU emulator only: the half pair type and __floats2half2_rn (round to
 * nearest even through the compiler's _Float16). */
#ifndef LU_EMU_CUDA_FP16_H
#define LU_EMU_CUDA_FP16_H

#include <stdint.h>
#include <string.h>

struct __half {
    uint16_t bits;
};
struct __half2 {
    __half x, y;
};

static inline __half __float2half_rn(float f)
{
    _Float16 h = (_Float16)f;
    __half r;
    memcpy(&r.bits, &h, sizeof r.bits);
    return r;
}

static inline __half2 __floats2half2_rn(float lo, float hi) { return __half2{__float2half_rn(lo), __float2half_rn(hi)}; }

#endif
