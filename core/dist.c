/* dist.c - data-parallel processes over MPI, device buffers over the backend's communicator
 * (see dist.h). */
#include "dist.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "ops.h"

#ifdef LUTHIER_HAVE_MPI
#include <mpi.h>
#endif

static struct {
    bool done;
    lu_status status;
    char error[512];
    bool mpi; /* MPI_Init was called by us */
    int rank, size, local_rank;
    void *comm[LU_DEVICE_COUNT]; /* device communicators, joined on first use */
} dist = {.size = 1};

/* The launcher environments that start one process per rank. Slurm's srun sets PMIX_RANK
 * (--mpi=pmix) or PMI_RANK (--mpi=pmi2); Open MPI's mpirun sets OMPI_COMM_WORLD_SIZE; MPICH's
 * Hydra sets PMI_SIZE. A batch script run by hand (sbatch without srun) sets none of them. */
static int launcher_size(const char **name)
{
    static const char *vars[][2] = {{"OMPI_COMM_WORLD_SIZE", "mpirun (Open MPI)"}, {"PMI_SIZE", "PMI (MPICH, srun)"},
                                    {"PMIX_SIZE", "PMIx (srun --mpi=pmix)"}};
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++) {
        const char *v = getenv(vars[i][0]);
        if (v && atoi(v) > 0) {
            *name = vars[i][1];
            return atoi(v);
        }
    }
    /* PMIx does not always export the size; a rank alone says a launcher is there. */
    if (getenv("PMIX_RANK")) {
        *name = "PMIx (srun --mpi=pmix)";
        return -1;
    }
    return 0;
}

#ifdef LUTHIER_HAVE_MPI
static lu_status mpi_fail(int code, const char *what)
{
    char msg[MPI_MAX_ERROR_STRING] = "";
    int len = 0;
    MPI_Error_string(code, msg, &len);
    return lu_errorf(LU_ERR_DEVICE, "dist: %s failed on rank %d of %d: %s", what, dist.rank, dist.size, msg);
}
#define LU_MPI_CHECK(expr, what)                       \
    do {                                               \
        int lu_mpi_rc_ = (expr);                       \
        if (lu_mpi_rc_ != MPI_SUCCESS) return mpi_fail(lu_mpi_rc_, what); \
    } while (0)

static lu_status mpi_start(void)
{
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
        int provided = 0;
        if (MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
            return lu_errorf(LU_ERR_DEVICE, "dist: MPI_Init failed");
        dist.mpi = true;
    }
    /* Errors come back as codes (reported with the rank) instead of aborting inside MPI. */
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    LU_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &dist.rank), "MPI_Comm_rank");
    LU_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &dist.size), "MPI_Comm_size");
    MPI_Comm node;
    LU_MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, dist.rank, MPI_INFO_NULL, &node),
                 "MPI_Comm_split_type");
    MPI_Comm_rank(node, &dist.local_rank);
    MPI_Comm_free(&node);
    return LU_OK;
}
#endif

/* Several processes started without a way to join them would each train alone and write the
 * same run directory: srun without an MPI plugin (--mpi=none), or torchrun's environment. */
static lu_status check_unjoinable(void)
{
    if (getenv("LUTHIER_INDEPENDENT_RANKS")) return LU_OK; /* separate runs on purpose (a sweep) */
    const char *n = getenv("SLURM_STEP_NUM_TASKS");
    if (n && atoi(n) > 1)
        return lu_errorf(LU_ERR_CONFIG, "dist: srun started %d tasks without MPI process management: run "
                         "srun --mpi=pmix (or --mpi=pmi2), or mpirun, so that they train as one job (LUTHIER_INDEPENDENT_RANKS=1: "
                         "separate runs)", atoi(n));
    n = getenv("WORLD_SIZE");
    if (n && atoi(n) > 1)
        return lu_errorf(LU_ERR_CONFIG, "dist: WORLD_SIZE=%d (torchrun?) but no MPI launcher: start the ranks with "
                         "mpirun or srun --mpi=pmix", atoi(n));
    return LU_OK;
}

lu_status lu_dist_init(void)
{
    if (dist.done) return dist.status ? lu_errorf(dist.status, "%s", dist.error) : LU_OK;
    dist.done = true;
    const char *launcher = NULL;
    int size = launcher_size(&launcher);
    lu_status s = size == 0 ? check_unjoinable() : LU_OK;
    if (size != 0 && size != 1) {
#ifdef LUTHIER_HAVE_MPI
        s = mpi_start();
#else
        s = lu_errorf(LU_ERR_CONFIG, "dist: started by %s as one of several ranks, but luthier was built without MPI "
                      "(install libopenmpi-dev and reconfigure)", launcher);
#endif
    }
    dist.status = s;
    if (s) snprintf(dist.error, sizeof dist.error, "%s", lu_error_message());
    return s;
}

int lu_dist_launcher_local_rank(void)
{
    static const char *vars[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"};
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v) return atoi(v);
    }
    return -1;
}

int lu_dist_rank(void) { return dist.rank; }
int lu_dist_size(void) { return dist.size; }
int lu_dist_local_rank(void) { return dist.local_rank; }
const char *lu_dist_backend_name(void) { return dist.size > 1 ? "mpi" : "none"; }

#ifdef LUTHIER_HAVE_MPI
static lu_status host_all_reduce(void *buf, lu_dtype dt, size_t n)
{
    MPI_Datatype type = dt == LU_F32 ? MPI_FLOAT : MPI_DOUBLE;
    /* MPI counts are int: long buffers go in pieces. */
    const size_t chunk = (size_t)1 << 30;
    for (size_t at = 0; at < n; at += chunk) {
        int count = (int)(n - at < chunk ? n - at : chunk);
        LU_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, (char *)buf + at * lu_dtype_size(dt), count, type, MPI_SUM, MPI_COMM_WORLD),
                     "MPI_Allreduce");
    }
    return LU_OK;
}

/* The device communicator of dev, joined on first use: rank 0's id reaches the others by MPI. */
static lu_status device_comm(lu_backend *b, void **out)
{
    lu_device dev = b->device;
    if (!dist.comm[dev]) {
        if (!b->comm_init || !b->comm_id || b->comm_id_size == 0)
            return lu_errorf(LU_ERR_DEVICE, "dist: the %s backend has no communicator (built without NCCL?)", b->name);
        unsigned char id[512];
        if (b->comm_id_size > sizeof id) return lu_errorf(LU_ERR_DEVICE, "dist: %s communicator id too long", b->name);
        /* Every rank takes part in the broadcast, also when rank 0 failed to make the id: the
         * status travels with it so that all ranks fail together instead of waiting. */
        int ok = 1;
        if (dist.rank == 0 && b->comm_id(id)) ok = 0;
        LU_MPI_CHECK(MPI_Bcast(&ok, 1, MPI_INT, 0, MPI_COMM_WORLD), "MPI_Bcast");
        if (!ok) return dist.rank == 0 ? lu_error_code() : lu_errorf(LU_ERR_DEVICE, "dist: rank 0 could not make the %s id", b->name);
        LU_MPI_CHECK(MPI_Bcast(id, (int)b->comm_id_size, MPI_BYTE, 0, MPI_COMM_WORLD), "MPI_Bcast");
        LU_TRY(b->comm_init(&dist.comm[dev], id, dist.rank, dist.size));
    }
    *out = dist.comm[dev];
    return LU_OK;
}
#endif

lu_status lu_dist_all_reduce_sum(lu_tensor *t)
{
    if (!t) return lu_error_code();
    if (!lu_tensor_is_contiguous(t) || !lu_dtype_is_float(t->dtype))
        return lu_errorf(LU_ERR_INVALID, "dist: all-reduce needs a contiguous floating-point tensor, got %s%s",
                         lu_dtype_name(t->dtype), lu_tensor_is_contiguous(t) ? "" : " (strided)");
    if (dist.size == 1) return LU_OK;
#ifdef LUTHIER_HAVE_MPI
    size_t n = (size_t)lu_tensor_numel(t);
    lu_device dev = lu_tensor_device(t);
    if (dev == LU_CPU) {
        if (t->dtype != LU_F32 && t->dtype != LU_F64)
            return lu_errorf(LU_ERR_DTYPE, "dist: host all-reduce of %s (f32 or f64 only)", lu_dtype_name(t->dtype));
        return host_all_reduce(lu_tensor_data(t), t->dtype, n);
    }
    lu_backend *b = lu_backend_get(dev);
    if (!b) return lu_error_code();
    void *comm = NULL;
    LU_TRY(device_comm(b, &comm));
    return b->comm_all_reduce_sum(comm, lu_tensor_data(t), t->dtype, n);
#else
    return lu_errorf(LU_ERR_STATE, "dist: %d ranks without MPI", dist.size);
#endif
}

lu_status lu_dist_all_reduce_doubles(double *v, int n, lu_dist_op op)
{
    if (dist.size == 1 || n == 0) return LU_OK;
#ifdef LUTHIER_HAVE_MPI
    MPI_Op mop = op == LU_DIST_MIN ? MPI_MIN : op == LU_DIST_MAX ? MPI_MAX : MPI_SUM;
    LU_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, mop, MPI_COMM_WORLD), "MPI_Allreduce");
    return LU_OK;
#else
    (void)v;
    (void)op;
    return lu_errorf(LU_ERR_STATE, "dist: %d ranks without MPI", dist.size);
#endif
}

lu_status lu_dist_broadcast_string(char **s, int root)
{
    if (dist.size == 1) return LU_OK;
    if (root < 0 || root >= dist.size) return lu_errorf(LU_ERR_INVALID, "dist: broadcast from rank %d of %d", root, dist.size);
#ifdef LUTHIER_HAVE_MPI
    /* The length first (-1: NULL), then the bytes. */
    long long len = dist.rank == root ? (*s ? (long long)strlen(*s) : -1) : 0;
    LU_MPI_CHECK(MPI_Bcast(&len, 1, MPI_LONG_LONG, root, MPI_COMM_WORLD), "MPI_Bcast");
    if (len > INT_MAX) return lu_errorf(LU_ERR_INVALID, "dist: a %lld-byte string is too long to broadcast", len);
    char *buf = NULL;
    if (dist.rank != root && len >= 0 && !(buf = malloc((size_t)len + 1)))
        return lu_errorf(LU_ERR_NOMEM, "dist: out of memory for a %lld-byte string", len);
    if (len > 0) LU_MPI_CHECK(MPI_Bcast(dist.rank == root ? *s : buf, (int)len, MPI_CHAR, root, MPI_COMM_WORLD), "MPI_Bcast");
    if (dist.rank != root) {
        if (buf) buf[len] = 0;
        free(*s);
        *s = buf;
    }
    return LU_OK;
#else
    (void)s;
    return lu_errorf(LU_ERR_STATE, "dist: %d ranks without MPI", dist.size);
#endif
}

lu_status lu_dist_sum_gradients(lu_params *p)
{
    if (dist.size == 1) return LU_OK;
    for (int d = 0; d < LU_DTYPE_COUNT; d++)
        if (p->flat_grad[d]) LU_TRY(lu_dist_all_reduce_sum(p->flat_grad[d]));
    return LU_OK;
}

lu_status lu_dist_average_buffers(lu_params *p)
{
    if (dist.size == 1) return LU_OK;
    double inv = 1.0 / dist.size;
    for (int i = 0; i < p->n; i++) {
        lu_tensor *t = p->items[i].t;
        if (p->items[i].trainable || !lu_dtype_is_float(t->dtype)) continue;
        LU_TRY(lu_dist_all_reduce_sum(t));
        lu_tensor *mean = lu_scale(t, inv);
        lu_status s = mean ? lu_tensor_copy(t, mean) : lu_error_code();
        lu_tensor_release(mean);
        LU_TRY(s);
    }
    return LU_OK;
}

lu_status lu_dist_agree(lu_status s, const char *what)
{
    if (dist.size == 1) return s;
    double failed = s != LU_OK;
    lu_status r = lu_dist_all_reduce_doubles(&failed, 1, LU_DIST_MAX);
    if (s) return s;
    LU_TRY(r);
    if (failed > 0) return lu_errorf(LU_ERR_STATE, "%s failed on another rank (its log says why)", what);
    return LU_OK;
}

lu_status lu_dist_check_replicas(const double sums[LU_DTYPE_COUNT], int64_t step)
{
    if (dist.size == 1) return LU_OK;
    double lo[LU_DTYPE_COUNT], hi[LU_DTYPE_COUNT];
    for (int d = 0; d < LU_DTYPE_COUNT; d++) {
        lo[d] = isfinite(sums[d]) ? sums[d] : 0; /* not a fingerprint: the finiteness check reports it */
        hi[d] = lo[d];
    }
    LU_TRY(lu_dist_all_reduce_doubles(lo, LU_DTYPE_COUNT, LU_DIST_MIN));
    LU_TRY(lu_dist_all_reduce_doubles(hi, LU_DTYPE_COUNT, LU_DIST_MAX));
    for (int d = 0; d < LU_DTYPE_COUNT; d++)
        if (lo[d] != hi[d])
            return lu_errorf(LU_ERR_STATE, "data parallel: the ranks' %s parameters differ at step %lld (sums from %.17g to "
                             "%.17g): the replicas diverged", lu_dtype_name((lu_dtype)d), (long long)step, lo[d], hi[d]);
    return LU_OK;
}

_Noreturn void lu_dist_abort(int code)
{
#ifdef LUTHIER_HAVE_MPI
    if (dist.size > 1) {
        fflush(stdout);
        fflush(stderr);
        MPI_Abort(MPI_COMM_WORLD, code);
    }
#endif
    exit(code);
}

void lu_dist_finalize(void)
{
    for (int d = 0; d < LU_DEVICE_COUNT; d++) {
        if (!dist.comm[d]) continue;
        lu_backend *b = lu_backend_get((lu_device)d);
        if (b && b->comm_free) b->comm_free(dist.comm[d]);
        dist.comm[d] = NULL;
    }
#ifdef LUTHIER_HAVE_MPI
    if (dist.mpi) {
        int finalized = 0;
        MPI_Finalized(&finalized);
        if (!finalized) MPI_Finalize();
        dist.mpi = false;
    }
#endif
}
