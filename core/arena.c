/* arena.c - block-list bump allocator (see arena.h). Host structs and device data are kept in
 * separate block lists so that an arena for a GPU still hands out host memory for tensor
 * structs. */
#include "arena.h"

#include <stdlib.h>
#include <string.h>

#include "backend.h"

typedef struct block {
    struct block *next;
    char *base;
    size_t size, used;
} block;

/* A piece of device data given back during the step, free for reuse until the reset. */
typedef struct span {
    char *p;
    size_t size;
} span;

struct lu_arena {
    lu_device dev;
    size_t block_bytes;
    block *lists[2]; /* 0: host structs, 1: device data */
    size_t used, peak;
    bool recycling, poison;
    span *spare;
    size_t n_spare, cap_spare;
    lu_arena *scratch;
};

static _Thread_local lu_arena *current;

lu_arena *lu_arena_new(lu_device dev, size_t block_bytes)
{
    lu_arena *a = calloc(1, sizeof *a);
    if (!a) {
        lu_errorf(LU_ERR_NOMEM, "arena: out of memory");
        return NULL;
    }
    a->dev = dev;
    a->block_bytes = block_bytes ? block_bytes : (size_t)64 << 20;
    const char *poison = getenv("LUTHIER_ARENA_POISON");
    a->poison = poison && *poison && strcmp(poison, "0") != 0;
    return a;
}

static void free_blocks(lu_arena *a, int which)
{
    lu_backend *b = lu_backend_get(which ? a->dev : LU_CPU);
    for (block *k = a->lists[which], *next; k; k = next) {
        next = k->next;
        if (which && b) b->free(k->base);
        else if (!which) free(k->base);
        free(k);
    }
    a->lists[which] = NULL;
}

void lu_arena_free(lu_arena *a)
{
    if (!a) return;
    if (current == a) current = NULL;
    lu_arena_free(a->scratch);
    free_blocks(a, 0);
    free_blocks(a, 1);
    free(a->spare);
    free(a);
}

lu_arena *lu_arena_activate(lu_arena *a)
{
    lu_arena *prev = current;
    current = a;
    return prev;
}

lu_arena *lu_arena_current(void) { return current; }
lu_device lu_arena_device(const lu_arena *a) { return a->dev; }
size_t lu_arena_used(const lu_arena *a) { return a->used; }
size_t lu_arena_peak(const lu_arena *a) { return a->peak; }

void lu_arena_reset(lu_arena *a)
{
    lu_backend *b = a->poison ? lu_backend_get(a->dev) : NULL;
    for (int w = 0; w < 2; w++) {
        /* Blocks are kept and rewound: the next step reuses them without allocating. */
        for (block *k = a->lists[w]; k; k = k->next) {
            if (b && w == 1 && k->used) b->fill(k->base, LU_U8, k->used, 255.0);
            k->used = 0;
        }
    }
    a->used = 0;
    a->n_spare = 0;
}

lu_arena *lu_arena_scratch(lu_arena *a)
{
    if (!a->scratch) a->scratch = lu_arena_new(a->dev, a->block_bytes);
    return a->scratch;
}

bool lu_arena_set_recycling(lu_arena *a, bool on)
{
    bool prev = a->recycling;
    a->recycling = on;
    return prev;
}

bool lu_arena_recycling(const lu_arena *a) { return a->recycling; }

static size_t rounded(size_t nbytes) { return ((nbytes ? nbytes : 1) + 63) & ~(size_t)63; }

void lu_arena_recycle(lu_arena *a, void *data, size_t nbytes)
{
    size_t size = rounded(nbytes);
    if (a->poison) {
        lu_backend *b = lu_backend_get(a->dev);
        if (b) b->fill(data, LU_U8, size, 255.0);
    }
    a->used -= size;
    if (a->n_spare == a->cap_spare) {
        size_t cap = a->cap_spare ? 2 * a->cap_spare : 64;
        span *grown = realloc(a->spare, cap * sizeof *grown);
        if (!grown) return; /* kept out of reuse until the reset: correct, only less frugal */
        a->spare = grown;
        a->cap_spare = cap;
    }
    a->spare[a->n_spare++] = (span){data, size};
}

/* The smallest given-back span that holds need bytes, cut to size (the rest stays spare). */
static void *reuse(lu_arena *a, size_t need)
{
    size_t best = a->n_spare;
    for (size_t i = 0; i < a->n_spare; i++)
        if (a->spare[i].size >= need && (best == a->n_spare || a->spare[i].size < a->spare[best].size)) best = i;
    if (best == a->n_spare) return NULL;
    span *s = &a->spare[best];
    char *p = s->p;
    if (s->size > need) {
        s->p += need;
        s->size -= need;
    } else {
        *s = a->spare[--a->n_spare];
    }
    return p;
}

void *lu_arena_alloc(lu_arena *a, size_t nbytes, int device_memory)
{
    int w = device_memory ? 1 : 0;
    size_t need = (nbytes + 63) & ~(size_t)63;
    void *again = w && a->n_spare ? reuse(a, need) : NULL;
    if (again) {
        a->used += need;
        if (a->used > a->peak) a->peak = a->used;
        return again;
    }
    for (block *k = a->lists[w]; k; k = k->next) {
        if (k->size - k->used >= need) {
            void *p = k->base + k->used;
            k->used += need;
            a->used += need;
            if (a->used > a->peak) a->peak = a->used;
            return p;
        }
    }
    size_t size = need > a->block_bytes ? need : a->block_bytes;
    if (!w) size = need > ((size_t)1 << 20) ? need : ((size_t)1 << 20);
    block *k = calloc(1, sizeof *k);
    if (!k) return NULL;
    if (w) {
        lu_backend *b = lu_backend_get(a->dev);
        k->base = b ? b->alloc(size) : NULL;
    } else {
        k->base = aligned_alloc(64, size);
    }
    if (!k->base) {
        free(k);
        lu_errorf(LU_ERR_NOMEM, "arena: cannot allocate a block of %zu bytes on %s", size,
                  lu_device_name(w ? a->dev : LU_CPU));
        return NULL;
    }
    k->size = size;
    k->used = need;
    k->next = a->lists[w];
    a->lists[w] = k;
    a->used += need;
    if (a->used > a->peak) a->peak = a->used;
    return k->base;
}
