/* config.h - the typed experiment-config reader: a YAML file of sections (`optim:`, `train:`)
 * holding scalars and lists, mapped by a table-driven schema onto the members of a C struct.
 *
 * A schema is an array of lu_cfg_field ended by a field whose key is NULL. Loading applies, in
 * order: every field's default, the file, then each "section.key=value" override. Errors are
 * LU_ERR_CONFIG (LU_ERR_IO for an unreadable file) and name FILE:LINE (or "command line" and the
 * override text) and the full key "section.key".
 *
 * Member types: LU_CFG_INT int64_t, LU_CFG_FLOAT double, LU_CFG_BOOL bool, LU_CFG_STRING char *
 * (heap, NULL for a YAML null, freed by lu_config_free), LU_CFG_ENUM int (index into choices),
 * LU_CFG_INT_LIST / LU_CFG_FLOAT_LIST lu_cfg_list. */
#ifndef LU_CONFIG_H
#define LU_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "error.h"

typedef enum lu_cfg_type {
    LU_CFG_INT,
    LU_CFG_FLOAT,
    LU_CFG_BOOL,
    LU_CFG_STRING,
    LU_CFG_ENUM,
    LU_CFG_INT_LIST,
    LU_CFG_FLOAT_LIST
} lu_cfg_type;

typedef struct lu_cfg_list {
    int n;
    int64_t *i; /* LU_CFG_INT_LIST */
    double *f;  /* LU_CFG_FLOAT_LIST */
} lu_cfg_list;

typedef struct lu_cfg_field {
    const char *section;       /* "train", "optim", "model", ...; NULL or "" for a top-level key */
    const char *key;
    lu_cfg_type type;
    size_t offset;             /* offsetof() of the member in the target struct */
    bool required;             /* must be given by the file or an override */
    const char *default_value; /* YAML scalar text parsed like a file value; NULL: zero / NULL / empty */
    const char *choices;       /* LU_CFG_ENUM: "adamw|scaled_adam"; the member is an int index */
    const char *help;          /* one line, printed by lu_config_print_schema */
} lu_cfg_field;

/* Reads the YAML file at `path` into target (see lu_config_parse). */
lu_status lu_config_load(const char *path, const lu_cfg_field *schema, void *target, int n_overrides,
                         char *const *overrides);
/* Fills every schema member of target (whose previous contents are ignored) from defaults, the
 * YAML text and the overrides; `name` stands for the file in errors. On failure the members are
 * released and zeroed, so lu_config_free stays harmless. */
lu_status lu_config_parse(const char *text, const char *name, const lu_cfg_field *schema, void *target,
                          int n_overrides, char *const *overrides);
/* Applies one "section.key=value" assignment (value is a YAML scalar or a flow list "[1, 2]") to a
 * target filled by lu_config_parse/load; the old string or list is freed. */
lu_status lu_config_set(const lu_cfg_field *schema, void *target, const char *assignment);
/* Writes the resolved config as YAML that lu_config_parse reads back to the identical struct
 * (floats in the shortest of %.15g..%.17g that round-trips). */
lu_status lu_config_write(const lu_cfg_field *schema, const void *target, FILE *f);
/* The text of lu_config_write, malloc'd; NULL on failure. */
char *lu_config_to_string(const lu_cfg_field *schema, const void *target);
/* Frees the strings and lists of target and zeroes those members. */
void lu_config_free(const lu_cfg_field *schema, void *target);
/* One line per field: full key, type (or choices), required or default, help. */
void lu_config_print_schema(const lu_cfg_field *schema, FILE *f);

#endif
