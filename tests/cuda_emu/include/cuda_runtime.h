/* cuda_runtime.h - for the CPU emulator only: the runtime API (cuda_runtime_api.h) and, in C++,
 * the device-side language (lu_emu_device.h). */
#ifndef LU_EMU_CUDA_RUNTIME_H
#define LU_EMU_CUDA_RUNTIME_H
#include "cuda_runtime_api.h"
#ifdef __cplusplus
#include "lu_emu_device.h"
#endif
#endif
