/* library_types.h - stand-in for the CUDA toolkit's library_types.h, for the CUDA emulator
 * (tests/cuda_emu) only: the element types the cuBLAS and cuBLASLt stand-ins take, with
 * NVIDIA's numeric values so that a value logged or compared reads as on the GPU. */
#ifndef LU_EMU_LIBRARY_TYPES_H
#define LU_EMU_LIBRARY_TYPES_H

typedef enum cudaDataType_t {
    CUDA_R_32F = 0,
    CUDA_R_64F = 1,
    CUDA_R_16F = 2,
    CUDA_R_8I = 3,
    CUDA_R_32I = 10,
    CUDA_R_16BF = 14,
} cudaDataType_t;

typedef cudaDataType_t cudaDataType;

#endif
