/* tasks.c - the registry of training tasks. */
#include <string.h>

#include "experiments/runner/task.h"

extern const lu_task lu_task_bytelm;
extern const lu_task lu_task_sft;
extern const lu_task lu_task_asr;

const lu_task *const lu_tasks[] = {&lu_task_bytelm, &lu_task_sft, &lu_task_asr, NULL};

const lu_task *lu_task_find(const char *name)
{
    for (int i = 0; lu_tasks[i]; i++)
        if (!strcmp(lu_tasks[i]->name, name)) return lu_tasks[i];
    return NULL;
}
