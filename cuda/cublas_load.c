/* cublas_load.c - cuBLAS and cuBLASLt loaded on the first product that needs them (dlopen), not
 * when the program starts. Linked the usual way, their initialisers ran at the start of every
 * process of a CUDA build, GPU or no GPU: on the development machine (2026-11-27) a program that
 * only links them takes 140 ms to start and exit, against 0.5 ms without them, and every
 * `luthier` command, CPU run and test process (Criterion starts one a test) paid that.
 * The functions matmul.c and linear.c call are defined here under their cuBLAS names and call the
 * library's own, so those files read as plain cuBLAS code; lu_cublas_load, which they call before
 * creating their handles, turns a library that cannot be loaded into an error that says which and
 * why. The emulator's cuBLAS (tests/cuda_emu/cublas.c) is linked in as usual. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <cublasLt.h>
#include <cublas_v2.h>

#include "cuda_backend.h"

#ifdef LU_CUDA_EMU

lu_status lu_cublas_load(void) { return LU_OK; }

void lu_cublas_describe(char *out, size_t size)
{
    snprintf(out, size, "the emulator's (tests/cuda_emu/cublas.c, on the host BLAS)");
}

#else

#define LU_STR_(x) #x
#define LU_STR(x) LU_STR_(x)

/* The functions the backend calls: X(library, return type, name, parameters, arguments, what it
 * returns while the library is not loaded). Names are the headers', macros expanded
 * (cublasCreate is cublasCreate_v2). */
#define LU_NOT_LOADED CUBLAS_STATUS_NOT_INITIALIZED
#define LU_CUBLAS_FUNCTIONS(X)                                                                                         \
    X(blas, cublasStatus_t, cublasCreate, (cublasHandle_t * handle), (handle), LU_NOT_LOADED)                          \
    X(blas, cublasStatus_t, cublasGemmStridedBatchedEx,                                                                \
      (cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k,                 \
       const void *alpha, const void *A, cudaDataType Atype, int lda, long long int strideA, const void *B,            \
       cudaDataType Btype, int ldb, long long int strideB, const void *beta, void *C, cudaDataType Ctype, int ldc,     \
       long long int strideC, int batchCount, cublasComputeType_t computeType, cublasGemmAlgo_t algo),                 \
      (handle, transa, transb, m, n, k, alpha, A, Atype, lda, strideA, B, Btype, ldb, strideB, beta, C, Ctype, ldc,   \
       strideC, batchCount, computeType, algo),                                                                        \
      LU_NOT_LOADED)                                                                                                   \
    X(blas, const char *, cublasGetStatusName, (cublasStatus_t status), (status), "cuBLAS not loaded")                 \
    X(blas, const char *, cublasGetStatusString, (cublasStatus_t status), (status), "cuBLAS not loaded")               \
    X(lt, cublasStatus_t, cublasLtCreate, (cublasLtHandle_t * handle), (handle), LU_NOT_LOADED)                        \
    X(lt, size_t, cublasLtGetVersion, (void), (), 0)                                                                   \
    X(lt, cublasStatus_t, cublasLtMatmulDescCreate,                                                                    \
      (cublasLtMatmulDesc_t * desc, cublasComputeType_t computeType, cudaDataType_t scaleType),                        \
      (desc, computeType, scaleType), LU_NOT_LOADED)                                                                   \
    X(lt, cublasStatus_t, cublasLtMatmulDescDestroy, (cublasLtMatmulDesc_t desc), (desc), LU_NOT_LOADED)              \
    X(lt, cublasStatus_t, cublasLtMatmulDescSetAttribute,                                                              \
      (cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, const void *buf, size_t size),                  \
      (desc, attr, buf, size), LU_NOT_LOADED)                                                                          \
    X(lt, cublasStatus_t, cublasLtMatrixLayoutCreate,                                                                  \
      (cublasLtMatrixLayout_t * layout, cudaDataType type, uint64_t rows, uint64_t cols, int64_t ld),                 \
      (layout, type, rows, cols, ld), LU_NOT_LOADED)                                                                   \
    X(lt, cublasStatus_t, cublasLtMatrixLayoutDestroy, (cublasLtMatrixLayout_t layout), (layout), LU_NOT_LOADED)      \
    X(lt, cublasStatus_t, cublasLtMatmulPreferenceCreate, (cublasLtMatmulPreference_t * pref), (pref),                \
      LU_NOT_LOADED)                                                                                                   \
    X(lt, cublasStatus_t, cublasLtMatmulPreferenceDestroy, (cublasLtMatmulPreference_t pref), (pref), LU_NOT_LOADED)  \
    X(lt, cublasStatus_t, cublasLtMatmulPreferenceSetAttribute,                                                        \
      (cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attr, const void *buf, size_t size),      \
      (pref, attr, buf, size), LU_NOT_LOADED)                                                                          \
    X(lt, cublasStatus_t, cublasLtMatmulAlgoGetHeuristic,                                                              \
      (cublasLtHandle_t handle, cublasLtMatmulDesc_t op, cublasLtMatrixLayout_t Adesc, cublasLtMatrixLayout_t Bdesc,  \
       cublasLtMatrixLayout_t Cdesc, cublasLtMatrixLayout_t Ddesc, cublasLtMatmulPreference_t preference,            \
       int requestedAlgoCount, cublasLtMatmulHeuristicResult_t heuristicResultsArray[], int *returnAlgoCount),       \
      (handle, op, Adesc, Bdesc, Cdesc, Ddesc, preference, requestedAlgoCount, heuristicResultsArray,                 \
       returnAlgoCount),                                                                                               \
      LU_NOT_LOADED)                                                                                                   \
    X(lt, cublasStatus_t, cublasLtMatmul,                                                                              \
      (cublasLtHandle_t handle, cublasLtMatmulDesc_t op, const void *alpha, const void *A,                            \
       cublasLtMatrixLayout_t Adesc, const void *B, cublasLtMatrixLayout_t Bdesc, const void *beta, const void *C,    \
       cublasLtMatrixLayout_t Cdesc, void *D, cublasLtMatrixLayout_t Ddesc, const cublasLtMatmulAlgo_t *algo,         \
       void *workspace, size_t workspaceSizeInBytes, cudaStream_t stream),                                            \
      (handle, op, alpha, A, Adesc, B, Bdesc, beta, C, Cdesc, D, Ddesc, algo, workspace, workspaceSizeInBytes,        \
       stream),                                                                                                        \
      LU_NOT_LOADED)

#define LU_DECLARE_POINTER(lib, ret, name, params, args, not_loaded) static ret(*p_##name) params;
LU_CUBLAS_FUNCTIONS(LU_DECLARE_POINTER)

/* By soname, as the loader would have found them (LD_LIBRARY_PATH, ld.so.cache); then in the
 * toolkit's library folder of the build (LUTHIER_CUDA_LIBDIR). cuBLASLt first: cuBLAS needs it. */
enum { LIB_LT, LIB_BLAS };
static const char *const lib_names[2] = {"libcublasLt.so." LU_STR(CUBLAS_VER_MAJOR),
                                         "libcublas.so." LU_STR(CUBLAS_VER_MAJOR)};
static void *lib_handles[2];
static char load_error[1024];
static pthread_once_t load_once = PTHREAD_ONCE_INIT;

static void *open_library(const char *name)
{
    void *h = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (h) return h;
    char first[400];
    snprintf(first, sizeof first, "%s", dlerror());
    char path[512];
    snprintf(path, sizeof path, "%s/%s", LUTHIER_CUDA_LIBDIR, name);
    if ((h = dlopen(path, RTLD_NOW | RTLD_LOCAL))) return h;
    snprintf(load_error, sizeof load_error, "cannot load %s (%s; nor %s: %s)", name, first, path, dlerror());
    return NULL;
}

static void load(void)
{
    for (int i = 0; i < 2; i++)
        if (!(lib_handles[i] = open_library(lib_names[i]))) return;
    void *lt = lib_handles[LIB_LT], *blas = lib_handles[LIB_BLAS];
#define LU_RESOLVE(lib, ret, name, params, args, not_loaded)                                                           \
    if (!(p_##name = (ret(*) params)dlsym(lib, LU_STR(name)))) {                                                       \
        snprintf(load_error, sizeof load_error, "%s has no %s (%s)", lib_names[lib == lt ? LIB_LT : LIB_BLAS],         \
                 LU_STR(name), dlerror());                                                                             \
        return;                                                                                                        \
    }
    LU_CUBLAS_FUNCTIONS(LU_RESOLVE)
#undef LU_RESOLVE
}

lu_status lu_cublas_load(void)
{
    pthread_once(&load_once, load);
    if (load_error[0]) return lu_errorf(LU_ERR_DEVICE, "cuda backend: %s", load_error);
    return LU_OK;
}

void lu_cublas_describe(char *out, size_t size)
{
    if (lu_cublas_load() != LU_OK) {
        snprintf(out, size, "not loaded: %s", load_error);
        return;
    }
    const size_t v = p_cublasLtGetVersion();
    struct link_map *map = NULL;
    const bool found = dlinfo(lib_handles[LIB_BLAS], RTLD_DI_LINKMAP, &map) == 0 && map && map->l_name[0];
    snprintf(out, size, "cuBLAS %zu.%zu.%zu (%s)", v / 10000, v / 100 % 100, v % 100,
             found ? map->l_name : lib_names[LIB_BLAS]);
}

/* The functions themselves: the library's, once loaded. Callers go through lu_cublas_load first
 * (matmul.c, linear.c); one that has not gets what the library would say uninitialised. */
#define LU_DEFINE(lib, ret, name, params, args, not_loaded)                                                            \
    ret CUBLASWINAPI name params                                                                                       \
    {                                                                                                                  \
        pthread_once(&load_once, load);                                                                                \
        return p_##name ? p_##name args : not_loaded;                                                                  \
    }
LU_CUBLAS_FUNCTIONS(LU_DEFINE)

#endif
