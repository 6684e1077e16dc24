/* dist.h - the processes of a data-parallel run: rank, world size, and the collectives the
 * trainer needs (an in-place sum of a tensor, sums and extrema of a few host numbers).
 *
 * A run is data-parallel when a launcher started it: `mpirun -np N luthier train ...` (Open MPI,
 * MPICH) or `srun --mpi=pmix luthier train ...` (Slurm). lu_dist_init recognises the launcher by
 * its environment and joins MPI; started by hand, the process is rank 0 of 1 and MPI is never
 * touched; several processes that cannot join (srun --mpi=none, torchrun's WORLD_SIZE) are an
 * error unless LUTHIER_INDEPENDENT_RANKS is set (separate runs on purpose). Host tensors are
 * reduced with MPI; device tensors with the device backend's communicator (NCCL on GPUs),
 * bootstrapped over MPI on first use. One process per GPU: each process takes GPU (local rank
 * mod GPUs on its node).
 *
 * Every collective must be called by every rank in the same order. A rank that fails calls
 * lu_dist_abort, which ends the whole job instead of leaving the others waiting. */
#ifndef LU_DIST_H
#define LU_DIST_H

#include "params.h"

/* Joins the launcher's job (once per process; later calls return the first result). Fails when
 * a launcher started several ranks but luthier was built without MPI, or MPI cannot start. */
lu_status lu_dist_init(void);
int lu_dist_rank(void);
int lu_dist_size(void);
/* Rank among the processes on this node (GPU selection); 0 when not distributed. */
int lu_dist_local_rank(void);
/* The node-local rank a launcher exported (Open MPI, MPICH, Slurm), or -1: lets a process pick
 * its GPU before lu_dist_init (a CUDA-aware MPI may create a context on the current GPU). */
int lu_dist_launcher_local_rank(void);
/* "mpi" when distributed, "none" otherwise. */
const char *lu_dist_backend_name(void);

/* t <- the sum of every rank's t, in place. t is contiguous, floating point, on the CPU (MPI) or
 * on a device whose backend has a communicator (NCCL). A no-op with one rank. */
lu_status lu_dist_all_reduce_sum(lu_tensor *t);

typedef enum lu_dist_op { LU_DIST_SUM, LU_DIST_MIN, LU_DIST_MAX } lu_dist_op;
/* v[0..n) <- op over the ranks of v[0..n), host doubles. */
lu_status lu_dist_all_reduce_doubles(double *v, int n, lu_dist_op op);

/* A barrier that carries each rank's status of the step before it (a step that rank 0 alone may
 * have carried out, the others passing LU_OK): returns s where it failed; on the ranks where it
 * succeeded, an error naming `what` when another rank's failed. s itself with one rank. */
lu_status lu_dist_agree(lu_status s, const char *what);

/* *s <- rank root's string (heap-allocated; NULL travels as NULL), on every rank: the old *s of
 * the other ranks is freed. A no-op with one rank. */
lu_status lu_dist_broadcast_string(char **s, int root);

/* The parameter store's collectives for data-parallel training (no-ops with one rank). */
/* Gradients <- their sum over the ranks (each rank's loss already divided by the micro-batches of
 * the whole step, so the sum is the step's mean): one all-reduce per dtype buffer. */
lu_status lu_dist_sum_gradients(lu_params *p);
/* Float buffers (BatchNorm running statistics) <- their mean over the ranks, which saw different
 * batches, so that the replicas stay identical. */
lu_status lu_dist_average_buffers(lu_params *p);
/* Every rank applies the same update to the same parameters, so the replicas stay equal; a
 * difference (a kernel whose result depends on the rank's thread count, a rank that skipped a
 * step) is an error naming the step: each dtype's buffer sum (lu_params_sums, as the caller has
 * it already for its finiteness check) is compared across ranks. */
lu_status lu_dist_check_replicas(const double sums[LU_DTYPE_COUNT], int64_t step);

/* Ends every process of the job with exit code `code` (MPI_Abort); exit(code) when not
 * distributed. */
_Noreturn void lu_dist_abort(int code);
/* Leaves MPI (after the last collective; the process exits afterwards). */
void lu_dist_finalize(void);

#endif
