/* cublas_v2.h - stand-in for cuBLAS's cublas_v2.h, for the CUDA emulator (tests/cuda_emu) only.
 * As in cuBLAS, the API itself is in cublas_api.h. */
#ifndef LU_EMU_CUBLAS_V2_H
#define LU_EMU_CUBLAS_V2_H

#include <cublas_api.h>

#endif
