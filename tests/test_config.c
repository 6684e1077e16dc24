/* test_config.c - the typed YAML config reader: every member type, defaults, overrides, the
 * write -> parse round trip, and one test per error kind checking that the message names the
 * file, the line and the full key. */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/config.h"
#include "testutil.h"

typedef struct test_cfg {
    char *name;
    int64_t seed;
    int64_t max_steps;
    bool shuffle;
    char *out_dir;
    int optim;
    double lr;
    lu_cfg_list betas;
    lu_cfg_list dims;
} test_cfg;

enum { OPTIM_ADAMW, OPTIM_SCALED_ADAM };

static const lu_cfg_field schema[] = {
    {NULL, "name", LU_CFG_STRING, offsetof(test_cfg, name), false, "run", NULL, "run name"},
    {NULL, "seed", LU_CFG_INT, offsetof(test_cfg, seed), false, "1234", NULL, "random seed"},
    {"train", "max_steps", LU_CFG_INT, offsetof(test_cfg, max_steps), true, NULL, NULL, "optimiser steps"},
    {"train", "shuffle", LU_CFG_BOOL, offsetof(test_cfg, shuffle), false, "yes", NULL, "shuffle each epoch"},
    {"train", "out_dir", LU_CFG_STRING, offsetof(test_cfg, out_dir), false, NULL, NULL, "run directory"},
    {"optim", "name", LU_CFG_ENUM, offsetof(test_cfg, optim), false, "adamw", "adamw|scaled_adam", "optimiser"},
    {"optim", "lr", LU_CFG_FLOAT, offsetof(test_cfg, lr), false, "3e-4", NULL, "peak learning rate"},
    {"optim", "betas", LU_CFG_FLOAT_LIST, offsetof(test_cfg, betas), false, "[0.9, 0.95]", NULL, "Adam betas"},
    {"model", "dims", LU_CFG_INT_LIST, offsetof(test_cfg, dims), false, NULL, NULL, "block widths"},
    {NULL, NULL, 0, 0, false, NULL, NULL, NULL},
};

/* A file with every type set; max_steps on line 4, lr on line 8. */
static const char *full_text = "name: \"luth 1.7b\"\n"
                               "seed: -7\n"
                               "train:\n"
                               "  max_steps: 1000\n"
                               "  shuffle: off\n"
                               "  out_dir: runs/a\n"
                               "optim:\n"
                               "  lr: 3.0e-5\n"
                               "  name: scaled_adam\n"
                               "  betas: [0.8, 0.99]\n"
                               "model:\n"
                               "  dims:\n"
                               "    - 192\n"
                               "    - 256\n"
                               "    - 384\n";

/* Parses text (named cfg.yaml) expecting failure; the message is then checked by the caller. */
static void parse_fails(const char *text, int n_overrides, char *const *overrides)
{
    test_cfg c;
    lu_status s = lu_config_parse(text, "cfg.yaml", schema, &c, n_overrides, overrides);
    cr_assert_eq(s, LU_ERR_CONFIG, "expected a config error, got %d (%s)", s, lu_error_message());
    cr_assert_null(c.name, "members are released on failure");
    cr_assert_null(c.betas.f);
}

Test(config, parses_every_member_type)
{
    test_cfg c;
    cr_assert_eq(lu_config_parse(full_text, "cfg.yaml", schema, &c, 0, NULL), LU_OK, "%s", lu_error_message());
    cr_assert_str_eq(c.name, "luth 1.7b");
    cr_assert_eq(c.seed, -7);
    cr_assert_eq(c.max_steps, 1000);
    cr_assert_eq(c.shuffle, false);
    cr_assert_str_eq(c.out_dir, "runs/a");
    cr_assert_eq(c.optim, OPTIM_SCALED_ADAM);
    cr_assert_eq(c.lr, 3.0e-5);
    cr_assert_eq(c.betas.n, 2);
    cr_assert_eq(c.betas.f[0], 0.8);
    cr_assert_eq(c.betas.f[1], 0.99);
    cr_assert_eq(c.dims.n, 3);
    cr_assert_eq(c.dims.i[0], 192);
    cr_assert_eq(c.dims.i[2], 384);
    lu_config_free(schema, &c);
    cr_assert_null(c.name);
    cr_assert_eq(c.dims.n, 0);
}

Test(config, applies_defaults_for_missing_keys)
{
    test_cfg c;
    cr_assert_eq(lu_config_parse("train:\n  max_steps: 5\n", "cfg.yaml", schema, &c, 0, NULL), LU_OK, "%s",
                 lu_error_message());
    cr_assert_str_eq(c.name, "run");
    cr_assert_eq(c.seed, 1234);
    cr_assert_eq(c.shuffle, true);
    cr_assert_null(c.out_dir, "no default: NULL");
    cr_assert_eq(c.optim, OPTIM_ADAMW);
    cr_assert_eq(c.lr, 3e-4);
    cr_assert_eq(c.betas.n, 2);
    cr_assert_eq(c.betas.f[1], 0.95);
    cr_assert_eq(c.dims.n, 0, "no default: empty list");
    lu_config_free(schema, &c);
}

Test(config, integer_floats_and_quoted_numbers_are_numbers)
{
    test_cfg c;
    const char *text = "train:\n  max_steps: '12'\noptim:\n  lr: 2\n  betas: [1, 1e-3]\n";
    cr_assert_eq(lu_config_parse(text, "cfg.yaml", schema, &c, 0, NULL), LU_OK, "%s", lu_error_message());
    cr_assert_eq(c.max_steps, 12);
    cr_assert_eq(c.lr, 2.0);
    cr_assert_eq(c.betas.f[1], 1e-3);
    lu_config_free(schema, &c);
}

Test(config, overrides_apply_in_order_after_the_file)
{
    char *ov[] = {"optim.lr=1e-3", "model.dims=[1, 2]", "optim.lr=5e-4", "name=other", "train.out_dir='a b'",
                  "seed=+3"};
    test_cfg c;
    cr_assert_eq(lu_config_parse(full_text, "cfg.yaml", schema, &c, 6, ov), LU_OK, "%s", lu_error_message());
    cr_assert_eq(c.lr, 5e-4, "the later override wins");
    cr_assert_eq(c.dims.n, 2);
    cr_assert_eq(c.dims.i[1], 2);
    cr_assert_str_eq(c.name, "other");
    cr_assert_str_eq(c.out_dir, "a b");
    cr_assert_eq(c.seed, 3);
    cr_assert_eq(c.max_steps, 1000, "untouched keys keep the file's value");
    lu_config_free(schema, &c);
}

Test(config, override_satisfies_a_required_key)
{
    char *ov[] = {"train.max_steps=9"};
    test_cfg c;
    cr_assert_eq(lu_config_parse("", "cfg.yaml", schema, &c, 1, ov), LU_OK, "%s", lu_error_message());
    cr_assert_eq(c.max_steps, 9);
    lu_config_free(schema, &c);
}

Test(config, set_replaces_strings_and_lists)
{
    test_cfg c;
    cr_assert_eq(lu_config_parse(full_text, "cfg.yaml", schema, &c, 0, NULL), LU_OK);
    cr_assert_eq(lu_config_set(schema, &c, "train.out_dir=runs/b"), LU_OK, "%s", lu_error_message());
    cr_assert_eq(lu_config_set(schema, &c, "model.dims=[]"), LU_OK, "%s", lu_error_message());
    cr_assert_eq(lu_config_set(schema, &c, "train.out_dir="), LU_OK, "%s", lu_error_message());
    cr_assert_eq(lu_config_set(schema, &c, "optim.name=adamw"), LU_OK, "%s", lu_error_message());
    cr_assert_null(c.out_dir, "an empty value is YAML's null");
    cr_assert_eq(c.dims.n, 0);
    cr_assert_eq(c.optim, OPTIM_ADAMW);
    lu_config_free(schema, &c);
}

Test(config, write_then_parse_round_trips)
{
    test_cfg a;
    char *ov[] = {"name=\"quote \\\" backslash \\\\ tab \\t newline \\n é\"", "optim.lr=0.30000000000000004",
                  "optim.betas=[0.1, -2.5e-300, 1e300]", "model.dims=[-9223372036854775808, 0, 7]"};
    cr_assert_eq(lu_config_parse(full_text, "cfg.yaml", schema, &a, 4, ov), LU_OK, "%s", lu_error_message());
    cr_assert_str_eq(a.name, "quote \" backslash \\ tab \t newline \n é");
    char *text = lu_config_to_string(schema, &a);
    cr_assert_not_null(text);
    test_cfg b;
    cr_assert_eq(lu_config_parse(text, "resolved.yaml", schema, &b, 0, NULL), LU_OK, "%s\n%s", lu_error_message(),
                 text);
    cr_assert_str_eq(b.name, a.name);
    cr_assert_eq(b.seed, a.seed);
    cr_assert_eq(b.max_steps, a.max_steps);
    cr_assert_eq(b.shuffle, a.shuffle);
    cr_assert_str_eq(b.out_dir, a.out_dir);
    cr_assert_eq(b.optim, a.optim);
    cr_assert_eq(b.lr, a.lr, "floats read back bit-exactly");
    cr_assert_eq(b.betas.n, 3);
    for (int i = 0; i < 3; i++) cr_assert_eq(b.betas.f[i], a.betas.f[i], "betas[%d]", i);
    cr_assert_eq(b.dims.n, 3);
    cr_assert_eq(b.dims.i[0], INT64_MIN);
    char *again = lu_config_to_string(schema, &b);
    cr_assert_str_eq(again, text, "writing is a fixed point");
    free(again);
    free(text);
    lu_config_free(schema, &a);
    lu_config_free(schema, &b);
}

Test(config, write_keeps_null_strings_and_empty_lists)
{
    test_cfg a;
    cr_assert_eq(lu_config_parse("train: {max_steps: 1}\n", "cfg.yaml", schema, &a, 0, NULL), LU_OK);
    char *text = lu_config_to_string(schema, &a);
    cr_assert(strstr(text, "out_dir: null\n"), "%s", text);
    cr_assert(strstr(text, "dims: []\n"), "%s", text);
    cr_assert(strstr(text, "lr: 0.0003\n"), "shortest exact float text: %s", text);
    test_cfg b;
    cr_assert_eq(lu_config_parse(text, "resolved.yaml", schema, &b, 0, NULL), LU_OK, "%s", lu_error_message());
    cr_assert_null(b.out_dir);
    cr_assert_eq(b.dims.n, 0);
    free(text);
    lu_config_free(schema, &a);
    lu_config_free(schema, &b);
}

/* Writes text to a fresh temporary file; returns its malloc'd path. */
static char *temp_file(const char *text)
{
    char *path = strdup("/tmp/luthier_config_XXXXXX");
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    size_t n = strlen(text);
    cr_assert_eq(write(fd, text, n), (ssize_t)n);
    close(fd);
    return path;
}

Test(config, load_reads_a_file_and_overrides)
{
    char *path = temp_file(full_text);
    char *ov[] = {"train.max_steps=77"};
    test_cfg c;
    cr_assert_eq(lu_config_load(path, schema, &c, 1, ov), LU_OK, "%s", lu_error_message());
    cr_assert_eq(c.max_steps, 77);
    cr_assert_str_eq(c.name, "luth 1.7b");
    lu_config_free(schema, &c);
    unlink(path);
    free(path);
}

Test(config, load_error_names_the_file_path_and_line)
{
    char *path = temp_file("train:\n  max_steps: 10\n  shufle: true\n");
    test_cfg c;
    cr_assert_eq(lu_config_load(path, schema, &c, 0, NULL), LU_ERR_CONFIG);
    char expect[256];
    snprintf(expect, sizeof expect, "%s:3: unknown key 'train.shufle' (did you mean 'shuffle'?)", path);
    tu_assert_error_contains(expect);
    unlink(path);
    free(path);
}

Test(config, load_reports_an_unreadable_file)
{
    test_cfg c;
    cr_assert_eq(lu_config_load("/nonexistent/luthier.yaml", schema, &c, 0, NULL), LU_ERR_IO);
    tu_assert_error_contains("'/nonexistent/luthier.yaml': No such file or directory");
    cr_assert_null(c.name);
}

Test(config, unknown_section_suggests_the_closest)
{
    parse_fails("train:\n  max_steps: 1\noptm:\n  lr: 1\n", 0, NULL);
    tu_assert_error_contains("cfg.yaml:3: unknown section 'optm' (did you mean 'optim'?)");
}

Test(config, unknown_key_suggests_the_closest_in_its_section)
{
    parse_fails("train:\n  max_steps: 1\noptim:\n  lrr: 1\n", 0, NULL);
    tu_assert_error_contains("cfg.yaml:4: unknown key 'optim.lrr' (did you mean 'lr'?)");
}

Test(config, unknown_key_far_from_any_has_no_suggestion)
{
    parse_fails("train:\n  max_steps: 1\n  warmup_ratio: 0.1\n", 0, NULL);
    cr_assert_str_eq(lu_error_message(), "cfg.yaml:3: unknown key 'train.warmup_ratio'");
}

Test(config, wrong_type_names_key_and_value)
{
    parse_fails("train:\n  max_steps: 1\noptim:\n  lr: fast\n", 0, NULL);
    tu_assert_error_contains("cfg.yaml:4: optim.lr: expected a number, got 'fast'");
}

Test(config, float_refuses_c_only_spellings)
{
    parse_fails("train:\n  max_steps: 1\noptim:\n  lr: 0x1p3\n", 0, NULL);
    tu_assert_error_contains("cfg.yaml:4: optim.lr: expected a number, got '0x1p3'");
}

Test(config, int_rejects_a_fraction)
{
    parse_fails("train:\n  max_steps: 1.5\n", 0, NULL);
    tu_assert_error_contains("cfg.yaml:2: train.max_steps: expected an integer, got '1.5'");
}

Test(config, int_rejects_overflow)
{
    parse_fails("train:\n  max_steps: 9223372036854775808\n", 0, NULL);
    tu_assert_error_contains("cfg.yaml:2: train.max_steps: integer '9223372036854775808' is out of range");
}

Test(config, bool_accepts_yaml11_spellings)
{
    const char *yes[] = {"true", "True", "yes", "on", "ON"}, *no[] = {"false", "no", "Off", "NO", "FALSE"};
    for (int i = 0; i < 10; i++) {
        const char *word = i < 5 ? yes[i] : no[i - 5];
        char text[96];
        snprintf(text, sizeof text, "train:\n  max_steps: 1\n  shuffle: %s\n", word);
        test_cfg c;
        cr_assert_eq(lu_config_parse(text, "cfg.yaml", schema, &c, 0, NULL), LU_OK, "%s", word);
        cr_assert_eq(c.shuffle, i < 5, "%s", word);
        lu_config_free(schema, &c);
    }
}

Test(config, bool_rejects_other_words)
{
    parse_fails("train:\n  max_steps: 1\n  shuffle: maybe\n", 0, NULL);
    tu_assert_error_contains("cfg.yaml:3: train.shuffle: expected a boolean (true/false/yes/no/on/off), got 'maybe'");
}

Test(config, enum_rejects_a_value_outside_the_choices)
{
    parse_fails("train:\n  max_steps: 1\noptim:\n  name: sgd\n", 0, NULL);
    tu_assert_error_contains("cfg.yaml:4: optim.name: 'sgd' is not one of adamw|scaled_adam");
}

Test(config, mapping_where_a_scalar_is_expected)
{
    parse_fails("train:\n  max_steps:\n    value: 3\n", 0, NULL);
    tu_assert_error_contains("cfg.yaml:3: train.max_steps: expected an integer, got a mapping");
    parse_fails("train:\n  max_steps: 1\noptim:\n  name: {kind: adamw}\n", 0, NULL);
    tu_assert_error_contains("cfg.yaml:4: optim.name: expected adamw|scaled_adam, got a mapping");
}

Test(config, sequence_where_a_scalar_is_expected)
{
    parse_fails("train:\n  max_steps: [1, 2]\n", 0, NULL);
    tu_assert_error_contains("cfg.yaml:2: train.max_steps: expected an integer, got a sequence");
    parse_fails("name: [a, b]\ntrain:\n  max_steps: 1\n", 0, NULL);
    tu_assert_error_contains("cfg.yaml:1: name: expected a string, got a sequence");
}

Test(config, list_errors_name_the_element)
{
    parse_fails("train:\n  max_steps: 1\nmodel:\n  dims:\n    - 4\n    - four\n", 0, NULL);
    tu_assert_error_contains("cfg.yaml:6: model.dims[1]: expected an integer, got 'four'");
    parse_fails("train:\n  max_steps: 1\nmodel:\n  dims: 4\n", 0, NULL);
    tu_assert_error_contains("cfg.yaml:4: model.dims: expected a list of integers such as [1, 2], got '4'");
}

Test(config, section_must_be_a_mapping)
{
    parse_fails("train: 5\n", 0, NULL);
    tu_assert_error_contains("cfg.yaml:1: section 'train' must be a mapping of keys, got a scalar");
}

Test(config, duplicate_key_names_both_lines)
{
    parse_fails("train:\n  max_steps: 1\noptim:\n  lr: 1e-3\n  lr: 2e-3\n", 0, NULL);
    tu_assert_error_contains("cfg.yaml:5: duplicate key 'optim.lr' (first set at line 4)");
}

Test(config, duplicate_section_names_both_lines)
{
    parse_fails("train:\n  max_steps: 1\ntrain:\n  shuffle: no\n", 0, NULL);
    tu_assert_error_contains("cfg.yaml:3: duplicate section 'train' (first at line 1)");
}

Test(config, missing_required_key_names_the_file)
{
    parse_fails("optim:\n  lr: 1e-3\n", 0, NULL);
    cr_assert_str_eq(lu_error_message(), "missing required key 'train.max_steps' in cfg.yaml");
}

Test(config, syntax_error_gives_line_and_libyaml_problem)
{
    parse_fails("train:\n  max_steps: 1\n optim: [1, 2\n", 0, NULL);
    tu_assert_error_contains("cfg.yaml:");
    tu_assert_error_contains("YAML syntax error: ");
    parse_fails("train:\n  max_steps: 1\n  shuffle: \"open\n", 0, NULL);
    tu_assert_error_contains("cfg.yaml:4: YAML syntax error: found unexpected end of stream");
}

Test(config, anchors_and_aliases_are_rejected)
{
    parse_fails("train:\n  max_steps: &n 4\noptim:\n  lr: *n\n", 0, NULL);
    tu_assert_error_contains("cfg.yaml:2: YAML anchors and aliases are not supported (found 'n')");
}

Test(config, top_level_must_be_a_mapping)
{
    parse_fails("- train\n- optim\n", 0, NULL);
    tu_assert_error_contains("cfg.yaml:1: expected a mapping of sections at the top level, got a sequence");
}

Test(config, override_value_errors_name_the_command_line)
{
    char *ov[] = {"optim.lr=fast"};
    parse_fails(full_text, 1, ov);
    tu_assert_error_contains("command line 'optim.lr=fast': optim.lr: expected a number, got 'fast'");
}

Test(config, override_unknown_keys_and_sections)
{
    char *ov1[] = {"optim.lrr=1"};
    parse_fails(full_text, 1, ov1);
    tu_assert_error_contains("command line 'optim.lrr=1': unknown key 'optim.lrr' (did you mean 'lr'?)");
    char *ov2[] = {"optimm.lr=1"};
    parse_fails(full_text, 1, ov2);
    tu_assert_error_contains("command line 'optimm.lr=1': unknown section 'optimm' (did you mean 'optim'?)");
    char *ov3[] = {"optim=1"};
    parse_fails(full_text, 1, ov3);
    tu_assert_error_contains("command line 'optim=1': 'optim' is a section; give section.key=value");
}

Test(config, override_without_an_equals_sign)
{
    char *ov[] = {"optim.lr"};
    parse_fails(full_text, 1, ov);
    tu_assert_error_contains("command line 'optim.lr': expected section.key=value");
}

Test(config, bad_default_is_reported_as_a_schema_error)
{
    static const lu_cfg_field bad[] = {
        {"optim", "lr", LU_CFG_FLOAT, offsetof(test_cfg, lr), false, "fast", NULL, "broken default"},
        {NULL, NULL, 0, 0, false, NULL, NULL, NULL},
    };
    test_cfg c;
    cr_assert_eq(lu_config_parse("", "cfg.yaml", bad, &c, 0, NULL), LU_ERR_CONFIG);
    tu_assert_error_contains("schema default of 'optim.lr': optim.lr: expected a number, got 'fast'");
}

Test(config, print_schema_lists_every_field)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    lu_config_print_schema(schema, f);
    fclose(f);
    int lines = 0;
    for (char *p = text; *p; p++) lines += *p == '\n';
    cr_assert_eq(lines, 9, "%s", text);
    cr_assert(strstr(text, "train.max_steps"), "%s", text);
    cr_assert(strstr(text, "required"), "%s", text);
    cr_assert(strstr(text, "adamw|scaled_adam"), "%s", text);
    cr_assert(strstr(text, "default 3e-4"), "%s", text);
    cr_assert(strstr(text, "peak learning rate"), "%s", text);
    free(text);
}
