/* profile.h - opt-in per-op timer of the op dispatch (autograd.c).
 *
 * With LUTHIER_PROFILE=1 in the environment, every forward kernel, backward kernel and custom
 * backward node (views) is timed, and a table of calls and exclusive wall time per op and
 * direction is printed to stderr when the process exits. Times are exclusive: an op run inside
 * another (a view's backward calling lu_contiguous) counts under its own row only. Device work is
 * synchronised before a kernel's clock stops, so GPU rows are real kernel times. Without the
 * variable the cost is one predictable branch per op. */
#ifndef LU_PROFILE_H
#define LU_PROFILE_H

#include <stdbool.h>
#include <stdio.h>

#include "op.h"

typedef enum lu_profile_dir { LU_PROFILE_FORWARD = 0, LU_PROFILE_BACKWARD = 1 } lu_profile_dir;

/* True when LUTHIER_PROFILE is set to a value other than "" or "0" (read once). */
bool lu_profile_enabled(void);
/* Starts a timed region (nests); returns its start time in seconds. */
double lu_profile_begin(void);
/* Ends the innermost region begun at t0 and charges it to op (LU_OP_COUNT: custom node). */
void lu_profile_end(lu_op op, lu_profile_dir dir, double t0);
/* Prints the table so far to f and clears it (also done at exit). */
void lu_profile_report(FILE *f);
/* Clears the table (e.g. after a warm-up). */
void lu_profile_reset(void);

#endif
