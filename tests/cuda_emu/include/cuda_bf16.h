/* cuda_bf16.h - for the CPU emulator only: the bfloat16 pair type and the one conversion
 * luthier's kernels use (round to nearest even, as __floats2bfloat162_rn; NaN becomes the
 * canonical 0x7fff as on the GPU). */
#ifndef LU_EMU_CUDA_BF16_H
#define LU_EMU_CUDA_BF16_H

#include <stdint.h>
#include <string.h>

struct __nv_bfloat16 {
    uint16_t bits;
};
struct __nv_bfloat162 {
    __nv_bfloat16 x, y;
};

static inline __nv_bfloat16 __float2bfloat16_rn(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{0x7fff};
    uint32_t lsb = (u >> 16) & 1u;
    return __nv_bfloat16{(uint16_t)((u + 0x7fffu + lsb) >> 16)};
}

static inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi)
{
    return __nv_bfloat162{__float2bfloat16_rn(lo), __float2bfloat16_rn(hi)};
}

#endif
