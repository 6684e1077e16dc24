/* version.c - `luthier version`: the version, what the build holds (compiler, BLAS, HDF5, MPI,
 * the CUDA backend and the compute capabilities it has code for, NCCL) and the devices this
 * process can use, or why not: what one checks first on a new machine or cluster node. */
#include <cblas.h>
#include <hdf5.h>
#include <omp.h>
#include <stdio.h>
#include <string.h>

#include "core/backend.h"
#include "experiments/runner/cli.h"
#ifdef LUTHIER_HAVE_MPI
#include <mpi.h>
#endif
#ifdef LUTHIER_HAVE_CUDA
#include "cuda/cuda_backend.h"
#endif

/* The first line of s, at most size - 1 bytes, into out. */
static void first_line(char *out, size_t size, const char *s)
{
    size_t n = strcspn(s, "\n");
    if (n >= size) n = size - 1;
    memcpy(out, s, n);
    out[n] = 0;
}

#if defined(__clang__)
#define COMPILER "clang " __clang_version__
#elif defined(__GNUC__)
#define COMPILER "gcc " __VERSION__
#else
#define COMPILER "an unknown compiler"
#endif

static void print_build(void)
{
    char blas[160];
    unsigned h5[3] = {0, 0, 0};
    first_line(blas, sizeof blas, openblas_get_config());
    H5get_libversion(&h5[0], &h5[1], &h5[2]);
    printf("build: C11 (%s), %s, HDF5 %u.%u.%u, OpenMP %d\n", COMPILER, blas, h5[0], h5[1], h5[2], _OPENMP);
#ifdef LUTHIER_HAVE_MPI
    char mpi[MPI_MAX_LIBRARY_VERSION_STRING], line[160];
    int len = 0;
    MPI_Get_library_version(mpi, &len); /* allowed before MPI_Init */
    first_line(line, sizeof line, mpi);
    printf("mpi: %s\n", line);
#else
    printf("mpi: not built (no MPI found at configure time): one process only\n");
#endif
#ifdef LUTHIER_HAVE_CUDA
    char comm[96];
    lu_cuda_comm_describe(comm, sizeof comm);
#ifdef LU_CUDA_EMU
    printf("cuda backend: on the CPU emulator (tests/cuda_emu; kernels' logic, not their speed), %s\n", comm);
#else
    printf("cuda backend: code for %s, CUDA %d.%d toolkit, %s\n", lu_cuda_built_archs(),
           CUDART_VERSION / 1000, CUDART_VERSION % 1000 / 10, comm);
#endif
#else
    printf("cuda backend: not built (configured with LUTHIER_CUDA off, or no nvcc found)\n");
#endif
}

static void print_devices(void)
{
    printf("cpu: %d OpenMP threads\n", omp_get_max_threads());
#ifdef LUTHIER_HAVE_CUDA
    if (!lu_device_available(LU_CUDA)) {
        printf("cuda: not usable: %s\n", lu_cuda_unavailable_reason());
        return;
    }
    int count = 0, driver = 0;
    cudaGetDeviceCount(&count);
    cudaDriverGetVersion(&driver);
    for (int d = 0; d < count; d++) {
        struct cudaDeviceProp prop;
        if (cudaGetDeviceProperties(&prop, d) != cudaSuccess) {
            printf("cuda %d: properties unreadable\n", d);
            continue;
        }
        printf("cuda %d: %s (compute capability %d.%d, %d SMs, %.1f GiB), driver for CUDA %d.%d\n", d, prop.name,
               prop.major, prop.minor, prop.multiProcessorCount, (double)prop.totalGlobalMem / (1 << 30),
               driver / 1000, driver % 1000 / 10);
    }
    char cublas[640];
    lu_cublas_describe(cublas, sizeof cublas); /* loads it: the backend does so on its first product */
    printf("cublas: %s\n", cublas);
#endif
}

int lu_cli_version(int argc, char **argv)
{
    if (argc > 1) {
        bool help = !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h");
        fprintf(help ? stdout : stderr, "%susage: luthier version\n"
                "  The version, what the build holds (compiler, BLAS, HDF5, MPI, the CUDA backend and the compute\n"
                "  capabilities it has code for, NCCL) and the devices this process can use, or why not.\n",
                help ? "" : "luthier version: takes no arguments\n");
        return help ? 0 : 2;
    }
    printf("luthier %s\n", LU_VERSION);
    print_build();
    print_devices();
    return 0;
}
