/* tasks.c - the registry of training tasks. */
#include <string.h>

#include "experiments/runner/task.h"

extern const lu_task lu_task_bytelm;

const lu_task *const lu_tasks[] = {&lu_task_bytelm, NULL};

const lu_task *lu_task_find(const char *name)
{
    for (int i = 0; lu_tasks[i]; i++)
        if (!strcmp(lu_tasks[i]->name, name)) return lu_tasks[i];
    return NULL;
}
