/* verbs.c - the table of luthier's verbs. */
#include "experiments/runner/cli.h"

#include <stddef.h>

const lu_cli_verb lu_cli_verbs[] = {
    {"train", lu_cli_train},
    {"eval", lu_cli_eval},
    {"bench", lu_cli_bench},
    {"lm", lu_cli_lm},
    {"features", lu_cli_features},
    {"asr", lu_cli_asr},
    {"merge", lu_cli_merge},
    {"data", lu_cli_data},
    {"version", lu_cli_version},
    {NULL, NULL},
};
