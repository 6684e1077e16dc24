/* config.c - the typed experiment-config reader (see config.h).
 *
 * The YAML text is read as a libyaml event stream, which keeps the line of every key and value
 * for error messages. Values (from the file, from a default's text or from an override) all go
 * through read_value(), so a default or an override is parsed exactly like a file value. */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

#define CFG_MSG_MAX 512

/* Where values come from: a file (errors say "FILE:LINE") or one text such as an override
 * (errors say `origin` verbatim, e.g. "command line 'optim.lr=x'"). */
typedef struct cfg_source {
    const char *origin;
    bool is_file;
} cfg_source;

typedef struct cfg_ctx {
    const lu_cfg_field *schema;
    void *target;
    int *file_line; /* per field: line where the file set it, 0 if it did not */
    bool *given;    /* per field: set by the file or an override (for `required`) */
} cfg_ctx;

/* One parsed value before it replaces the member. */
typedef struct cfg_value {
    int64_t i;
    double f;
    bool b;
    int e;
    char *s;
    lu_cfg_list list;
} cfg_value;

static const char *section_of(const lu_cfg_field *f) { return f->section ? f->section : ""; }

static void full_key(const lu_cfg_field *f, char *buf, size_t n)
{
    if (section_of(f)[0])
        snprintf(buf, n, "%s.%s", f->section, f->key);
    else
        snprintf(buf, n, "%s", f->key);
}

static void where(const cfg_source *src, int line, char *buf, size_t n)
{
    if (src->is_file)
        snprintf(buf, n, "%s:%d", src->origin, line);
    else
        snprintf(buf, n, "%s", src->origin);
}

static lu_status cfg_error(const cfg_source *src, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static lu_status cfg_error(const cfg_source *src, int line, const char *fmt, ...)
{
    char at[CFG_MSG_MAX], msg[CFG_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    where(src, line, at, sizeof at);
    return lu_errorf(LU_ERR_CONFIG, "%s: %s", at, msg);
}

static int field_count(const lu_cfg_field *schema)
{
    int n = 0;
    while (schema[n].key) n++;
    return n;
}

static const lu_cfg_field *find_field(const lu_cfg_field *schema, const char *section, const char *key)
{
    for (const lu_cfg_field *f = schema; f->key; f++)
        if (!strcmp(section_of(f), section) && !strcmp(f->key, key)) return f;
    return NULL;
}

static bool is_section(const lu_cfg_field *schema, const char *name)
{
    if (!name[0]) return false;
    for (const lu_cfg_field *f = schema; f->key; f++)
        if (!strcmp(section_of(f), name)) return true;
    return false;
}

/* Levenshtein distance, capped: anything above `cap` returns cap + 1. */
static int edit_distance(const char *a, const char *b, int cap)
{
    enum { MAXLEN = 64 };
    int la = (int)strlen(a), lb = (int)strlen(b);
    if (la > MAXLEN || lb > MAXLEN || abs(la - lb) > cap) return cap + 1;
    int row[MAXLEN + 1];
    for (int j = 0; j <= lb; j++) row[j] = j;
    for (int i = 1; i <= la; i++) {
        int diag = row[0];
        row[0] = i;
        for (int j = 1; j <= lb; j++) {
            int up = row[j];
            int best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb] > cap ? cap + 1 : row[lb];
}

/* The closest key of `section` (and, at the top level, the closest section name) within edit
 * distance 2 of `name`; NULL if none. */
static const char *closest_name(const lu_cfg_field *schema, const char *section, const char *name)
{
    const char *best = NULL;
    int best_d = 3;
    for (const lu_cfg_field *f = schema; f->key; f++) {
        const char *cand[2] = {NULL, NULL};
        if (!strcmp(section_of(f), section)) cand[0] = f->key;
        if (!section[0]) cand[1] = section_of(f);
        for (int c = 0; c < 2; c++) {
            if (!cand[c] || !cand[c][0]) continue;
            int d = edit_distance(name, cand[c], 2);
            if (d < best_d) {
                best_d = d;
                best = cand[c];
            }
        }
    }
    return best;
}

static void suggestion(const char *best, char *buf, size_t n)
{
    if (best)
        snprintf(buf, n, " (did you mean '%s'?)", best);
    else
        buf[0] = 0;
}

/* ---- enum choices ("a|b|c") ------------------------------------------------------------------- */

static int choice_index(const char *choices, const char *value)
{
    size_t len = strlen(value);
    int idx = 0;
    for (const char *p = choices;; idx++) {
        const char *bar = strchr(p, '|');
        size_t n = bar ? (size_t)(bar - p) : strlen(p);
        if (n == len && !strncmp(p, value, n)) return idx;
        if (!bar) return -1;
        p = bar + 1;
    }
}

/* Copies choice `idx` into buf; false if there is no such choice. */
static bool choice_name(const char *choices, int idx, char *buf, size_t n)
{
    if (idx < 0) return false;
    const char *p = choices;
    for (int i = 0; i < idx; i++) {
        p = strchr(p, '|');
        if (!p) return false;
        p++;
    }
    const char *bar = strchr(p, '|');
    size_t len = bar ? (size_t)(bar - p) : strlen(p);
    snprintf(buf, n, "%.*s", (int)len, p);
    return true;
}

/* ---- scalar parsing ------------------------------------------------------------------------- */

static bool is_null_text(const char *s, bool plain)
{
    return plain && (!s[0] || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") || !strcmp(s, "NULL"));
}

typedef enum num_result { NUM_OK, NUM_BAD, NUM_RANGE } num_result;

/* Decimal integers only: "1.5", "1e3" and "0x10" are not integers. */
static num_result parse_int(const char *s, int64_t *out)
{
    const char *p = s + (*s == '+' || *s == '-');
    if (!*p) return NUM_BAD;
    for (; *p; p++)
        if (*p < '0' || *p > '9') return NUM_BAD;
    errno = 0;
    long long v = strtoll(s, NULL, 10);
    if (errno == ERANGE) return NUM_RANGE;
    *out = v;
    return NUM_OK;
}

/* Decimal or exponent notation ("1e-4", "3.0e-5", "2"), plus YAML's .inf/-.inf/.nan; strtod's
 * other spellings (hex, "inf", "nan") are refused so that YAML and C agree on what a number is. */
static num_result parse_float(const char *s, double *out)
{
    const char *body = s + (*s == '+' || *s == '-');
    if (!strcmp(body, ".inf") || !strcmp(body, ".Inf") || !strcmp(body, ".INF")) {
        *out = *s == '-' ? -INFINITY : INFINITY;
        return NUM_OK;
    }
    if (body == s && (!strcmp(s, ".nan") || !strcmp(s, ".NaN") || !strcmp(s, ".NAN"))) {
        *out = NAN;
        return NUM_OK;
    }
    bool digit = false;
    for (const char *p = body; *p; p++) {
        if (*p >= '0' && *p <= '9')
            digit = true;
        else if (!strchr(".eE+-", *p))
            return NUM_BAD;
    }
    if (!digit) return NUM_BAD;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (*end) return NUM_BAD;
    if (errno == ERANGE && isinf(v)) return NUM_RANGE;
    *out = v;
    return NUM_OK;
}

static bool parse_bool(const char *s, bool *out)
{
    static const char *yes[] = {"true", "yes", "on"}, *no[] = {"false", "no", "off"};
    for (int i = 0; i < 3; i++) {
        if (!strcasecmp(s, yes[i])) return (*out = true);
        if (!strcasecmp(s, no[i])) return !(*out = false);
    }
    return false;
}

/* What a value of f's type looks like, for "expected ..., got ..." messages. */
static const char *expected_text(const lu_cfg_field *f)
{
    switch (f->type) {
    case LU_CFG_INT: return "an integer";
    case LU_CFG_FLOAT: return "a number";
    case LU_CFG_BOOL: return "a boolean (true/false/yes/no/on/off)";
    case LU_CFG_STRING: return "a string";
    case LU_CFG_ENUM: return f->choices ? f->choices : "an enum choice";
    case LU_CFG_INT_LIST: return "a list of integers";
    case LU_CFG_FLOAT_LIST: return "a list of numbers";
    }
    return "a value";
}

/* Parses one scalar for field f (for a list: one element, numbered `index`). */
static lu_status parse_scalar(const lu_cfg_field *f, const char *s, bool plain, const cfg_source *src, int line,
                              int index, cfg_value *out)
{
    char key[CFG_MSG_MAX];
    full_key(f, key, sizeof key);
    if (index >= 0) snprintf(key + strlen(key), sizeof key - strlen(key), "[%d]", index);
    bool elem_int = f->type == LU_CFG_INT || f->type == LU_CFG_INT_LIST;
    bool elem_float = f->type == LU_CFG_FLOAT || f->type == LU_CFG_FLOAT_LIST;
    if (elem_int) {
        num_result r = parse_int(s, &out->i);
        if (r == NUM_RANGE) return cfg_error(src, line, "%s: integer '%s' is out of range", key, s);
        if (r == NUM_BAD) return cfg_error(src, line, "%s: expected an integer, got '%s'", key, s);
    } else if (elem_float) {
        num_result r = parse_float(s, &out->f);
        if (r == NUM_RANGE) return cfg_error(src, line, "%s: number '%s' is out of range", key, s);
        if (r == NUM_BAD) return cfg_error(src, line, "%s: expected a number, got '%s'", key, s);
    } else if (f->type == LU_CFG_BOOL) {
        if (!parse_bool(s, &out->b)) return cfg_error(src, line, "%s: expected %s, got '%s'", key, expected_text(f), s);
    } else if (f->type == LU_CFG_ENUM) {
        if (!f->choices) return cfg_error(src, line, "%s: schema gives the enum no choices", key);
        out->e = choice_index(f->choices, s);
        if (out->e < 0) return cfg_error(src, line, "%s: '%s' is not one of %s", key, s, f->choices);
    } else if (!is_null_text(s, plain)) {
        out->s = strdup(s);
        if (!out->s) return lu_errorf(LU_ERR_NOMEM, "config: out of memory copying %s", key);
    }
    return LU_OK;
}

/* ---- libyaml events ------------------------------------------------------------------------- */

static const char *event_kind(const yaml_event_t *ev)
{
    switch (ev->type) {
    case YAML_MAPPING_START_EVENT: return "a mapping";
    case YAML_SEQUENCE_START_EVENT: return "a sequence";
    case YAML_SCALAR_EVENT: return "a scalar";
    default: return "nothing";
    }
}

static int event_line(const yaml_event_t *ev) { return (int)ev->start_mark.line + 1; }

/* The next event; syntax errors, anchors and aliases become errors (ev is then not to be deleted). */
static lu_status next_event(yaml_parser_t *parser, const cfg_source *src, yaml_event_t *ev)
{
    if (!yaml_parser_parse(parser, ev)) {
        int line = (int)parser->problem_mark.line + 1;
        if (parser->context)
            return cfg_error(src, line, "YAML syntax error: %s %s (column %d)", parser->problem, parser->context,
                             (int)parser->problem_mark.column + 1);
        return cfg_error(src, line, "YAML syntax error: %s (column %d)",
                         parser->problem ? parser->problem : "unreadable input", (int)parser->problem_mark.column + 1);
    }
    const yaml_char_t *anchor = NULL;
    if (ev->type == YAML_SCALAR_EVENT) anchor = ev->data.scalar.anchor;
    if (ev->type == YAML_SEQUENCE_START_EVENT) anchor = ev->data.sequence_start.anchor;
    if (ev->type == YAML_MAPPING_START_EVENT) anchor = ev->data.mapping_start.anchor;
    if (ev->type == YAML_ALIAS_EVENT) anchor = ev->data.alias.anchor;
    if (anchor) {
        lu_status s = cfg_error(src, event_line(ev), "YAML anchors and aliases are not supported (found '%s')",
                                (const char *)anchor);
        yaml_event_delete(ev);
        return s;
    }
    if (ev->type == YAML_SCALAR_EVENT && strlen((const char *)ev->data.scalar.value) != ev->data.scalar.length) {
        int line = event_line(ev);
        yaml_event_delete(ev);
        return cfg_error(src, line, "a value contains a NUL character");
    }
    return LU_OK;
}

static const char *scalar_text(const yaml_event_t *ev) { return (const char *)ev->data.scalar.value; }
static bool scalar_plain(const yaml_event_t *ev) { return ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE; }

static void value_free(const lu_cfg_field *f, cfg_value *v)
{
    if (f->type == LU_CFG_STRING) free(v->s);
    free(v->list.i);
    free(v->list.f);
    memset(v, 0, sizeof *v);
}

static lu_status list_append(const lu_cfg_field *f, lu_cfg_list *l, const cfg_value *elem)
{
    if ((l->n & (l->n - 1)) == 0) { /* capacity doubles at powers of two */
        size_t cap = l->n ? 2 * (size_t)l->n : 1;
        if (f->type == LU_CFG_INT_LIST) {
            int64_t *p = realloc(l->i, cap * sizeof *p);
            if (!p) return lu_errorf(LU_ERR_NOMEM, "config: out of memory growing list %s", f->key);
            l->i = p;
        } else {
            double *p = realloc(l->f, cap * sizeof *p);
            if (!p) return lu_errorf(LU_ERR_NOMEM, "config: out of memory growing list %s", f->key);
            l->f = p;
        }
    }
    if (f->type == LU_CFG_INT_LIST)
        l->i[l->n] = elem->i;
    else
        l->f[l->n] = elem->f;
    l->n++;
    return LU_OK;
}

/* Reads the value for f that starts with event `first` (consumed here). */
static lu_status read_value(yaml_parser_t *parser, const cfg_source *src, const lu_cfg_field *f, yaml_event_t *first,
                            cfg_value *out)
{
    char key[CFG_MSG_MAX];
    full_key(f, key, sizeof key);
    bool is_list = f->type == LU_CFG_INT_LIST || f->type == LU_CFG_FLOAT_LIST;
    int line = event_line(first);
    memset(out, 0, sizeof *out);
    if (first->type == YAML_SCALAR_EVENT) {
        lu_status s = LU_OK;
        if (!is_list)
            s = parse_scalar(f, scalar_text(first), scalar_plain(first), src, line, -1, out);
        else if (!is_null_text(scalar_text(first), scalar_plain(first)))
            s = cfg_error(src, line, "%s: expected %s such as [1, 2], got '%s'", key, expected_text(f),
                          scalar_text(first));
        yaml_event_delete(first);
        return s;
    }
    if (first->type != YAML_SEQUENCE_START_EVENT || !is_list) {
        lu_status s = cfg_error(src, line, "%s: expected %s, got %s", key, expected_text(f), event_kind(first));
        yaml_event_delete(first);
        return s;
    }
    yaml_event_delete(first);
    for (;;) {
        yaml_event_t ev;
        lu_status s = next_event(parser, src, &ev);
        if (s == LU_OK && ev.type == YAML_SEQUENCE_END_EVENT) {
            yaml_event_delete(&ev);
            return LU_OK;
        }
        if (s == LU_OK) {
            cfg_value elem = {0};
            if (ev.type == YAML_SCALAR_EVENT)
                s = parse_scalar(f, scalar_text(&ev), scalar_plain(&ev), src, event_line(&ev), out->list.n, &elem);
            else
                s = cfg_error(src, event_line(&ev), "%s[%d]: expected %s, got %s", key, out->list.n,
                              f->type == LU_CFG_INT_LIST ? "an integer" : "a number", event_kind(&ev));
            if (s == LU_OK) s = list_append(f, &out->list, &elem);
            yaml_event_delete(&ev);
        }
        if (s != LU_OK) {
            value_free(f, out);
            return s;
        }
    }
}

/* Replaces the member of f in target with v (taking ownership of its heap parts). */
static void commit(const lu_cfg_field *f, void *target, cfg_value *v)
{
    char *m = (char *)target + f->offset;
    switch (f->type) {
    case LU_CFG_INT: *(int64_t *)m = v->i; break;
    case LU_CFG_FLOAT: *(double *)m = v->f; break;
    case LU_CFG_BOOL: *(bool *)m = v->b; break;
    case LU_CFG_ENUM: *(int *)m = v->e; break;
    case LU_CFG_STRING:
        free(*(char **)m);
        *(char **)m = v->s;
        break;
    case LU_CFG_INT_LIST:
    case LU_CFG_FLOAT_LIST: {
        lu_cfg_list *l = (lu_cfg_list *)m;
        free(l->i);
        free(l->f);
        *l = v->list;
        break;
    }
    }
    memset(v, 0, sizeof *v);
}

/* Parses `text` (one YAML value: a default or the right side of an override) into f's member. */
static lu_status apply_text(const lu_cfg_field *f, void *target, const char *text, const cfg_source *src)
{
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser)) return lu_errorf(LU_ERR_NOMEM, "config: cannot create a YAML parser");
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, strlen(text));
    cfg_value v = {0};
    yaml_event_t ev;
    lu_status s = next_event(&parser, src, &ev); /* stream start */
    if (s == LU_OK) {
        yaml_event_delete(&ev);
        s = next_event(&parser, src, &ev);
    }
    if (s == LU_OK && ev.type == YAML_STREAM_END_EVENT) { /* empty text: YAML's null */
        yaml_event_delete(&ev);
        yaml_event_t null_scalar;
        if (yaml_scalar_event_initialize(&null_scalar, NULL, NULL, (yaml_char_t *)"", 0, 1, 0, YAML_PLAIN_SCALAR_STYLE))
            s = read_value(&parser, src, f, &null_scalar, &v);
        else
            s = lu_errorf(LU_ERR_NOMEM, "config: out of memory");
    } else if (s == LU_OK) {
        yaml_event_delete(&ev); /* document start */
        s = next_event(&parser, src, &ev);
        if (s == LU_OK) s = read_value(&parser, src, f, &ev, &v);
        if (s == LU_OK) s = next_event(&parser, src, &ev); /* document end */
        if (s == LU_OK) {
            yaml_event_delete(&ev);
            s = next_event(&parser, src, &ev);
        }
        if (s == LU_OK) {
            bool more = ev.type != YAML_STREAM_END_EVENT;
            yaml_event_delete(&ev);
            if (more) s = cfg_error(src, 1, "expected one value, got several YAML documents");
        }
    }
    yaml_parser_delete(&parser);
    if (s == LU_OK)
        commit(f, target, &v);
    else
        value_free(f, &v);
    return s;
}

/* ---- the file ------------------------------------------------------------------------------- */

/* Reads the value of field f from the file (its key at key_line). */
static lu_status file_value(cfg_ctx *c, yaml_parser_t *parser, const cfg_source *src, const lu_cfg_field *f,
                            int key_line)
{
    int idx = (int)(f - c->schema);
    if (c->file_line[idx]) {
        char key[CFG_MSG_MAX];
        full_key(f, key, sizeof key);
        return cfg_error(src, key_line, "duplicate key '%s' (first set at line %d)", key, c->file_line[idx]);
    }
    yaml_event_t ev;
    LU_TRY(next_event(parser, src, &ev));
    cfg_value v;
    LU_TRY(read_value(parser, src, f, &ev, &v));
    commit(f, c->target, &v);
    c->file_line[idx] = key_line;
    c->given[idx] = true;
    return LU_OK;
}

static lu_status read_section(cfg_ctx *c, yaml_parser_t *parser, const cfg_source *src, const char *section)
{
    for (;;) {
        yaml_event_t ev;
        LU_TRY(next_event(parser, src, &ev));
        if (ev.type == YAML_MAPPING_END_EVENT) {
            yaml_event_delete(&ev);
            return LU_OK;
        }
        int line = event_line(&ev);
        lu_status s;
        if (ev.type != YAML_SCALAR_EVENT) {
            s = cfg_error(src, line, "section '%s': expected a key, got %s", section, event_kind(&ev));
        } else {
            const lu_cfg_field *f = find_field(c->schema, section, scalar_text(&ev));
            if (f) {
                s = file_value(c, parser, src, f, line);
            } else {
                char hint[CFG_MSG_MAX];
                suggestion(closest_name(c->schema, section, scalar_text(&ev)), hint, sizeof hint);
                s = cfg_error(src, line, "unknown key '%s.%s'%s", section, scalar_text(&ev), hint);
            }
        }
        yaml_event_delete(&ev);
        if (s != LU_OK) return s;
    }
}

/* The top-level mapping: sections and top-level keys. */
static lu_status read_top(cfg_ctx *c, yaml_parser_t *parser, const cfg_source *src, const char **sec_names,
                          int *sec_lines)
{
    int n_sec = 0;
    for (;;) {
        yaml_event_t ev;
        LU_TRY(next_event(parser, src, &ev));
        if (ev.type == YAML_MAPPING_END_EVENT) {
            yaml_event_delete(&ev);
            return LU_OK;
        }
        int line = event_line(&ev);
        lu_status s = LU_OK;
        const char *name = ev.type == YAML_SCALAR_EVENT ? scalar_text(&ev) : NULL;
        const lu_cfg_field *f = name ? find_field(c->schema, "", name) : NULL;
        if (!name) {
            s = cfg_error(src, line, "expected a section name, got %s", event_kind(&ev));
        } else if (f) {
            s = file_value(c, parser, src, f, line);
        } else if (is_section(c->schema, name)) {
            /* sec_names points into the schema, which outlives this parse */
            const char *canon = NULL;
            for (const lu_cfg_field *g = c->schema; g->key && !canon; g++)
                if (!strcmp(section_of(g), name)) canon = g->section;
            for (int i = 0; i < n_sec && s == LU_OK; i++)
                if (!strcmp(sec_names[i], name))
                    s = cfg_error(src, line, "duplicate section '%s' (first at line %d)", name, sec_lines[i]);
            yaml_event_t body;
            if (s == LU_OK) s = next_event(parser, src, &body);
            if (s == LU_OK) {
                sec_names[n_sec] = canon;
                sec_lines[n_sec++] = line;
                if (body.type == YAML_MAPPING_START_EVENT)
                    s = read_section(c, parser, src, canon);
                else if (!(body.type == YAML_SCALAR_EVENT && is_null_text(scalar_text(&body), scalar_plain(&body))))
                    s = cfg_error(src, event_line(&body), "section '%s' must be a mapping of keys, got %s", name,
                                  event_kind(&body));
                yaml_event_delete(&body);
            }
        } else {
            char hint[CFG_MSG_MAX];
            suggestion(closest_name(c->schema, "", name), hint, sizeof hint);
            s = cfg_error(src, line, "unknown section '%s'%s", name, hint);
        }
        yaml_event_delete(&ev);
        if (s != LU_OK) return s;
    }
}

static lu_status read_file_text(cfg_ctx *c, const char *text, const cfg_source *src)
{
    int n = field_count(c->schema);
    const char **sec_names = calloc((size_t)n + 1, sizeof *sec_names);
    int *sec_lines = calloc((size_t)n + 1, sizeof *sec_lines);
    yaml_parser_t parser;
    if (!sec_names || !sec_lines || !yaml_parser_initialize(&parser)) {
        free(sec_names);
        free(sec_lines);
        return lu_errorf(LU_ERR_NOMEM, "config: out of memory reading %s", src->origin);
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, strlen(text));
    yaml_event_t ev;
    lu_status s = next_event(&parser, src, &ev); /* stream start */
    if (s == LU_OK) {
        yaml_event_delete(&ev);
        s = next_event(&parser, src, &ev);
    }
    if (s == LU_OK && ev.type == YAML_DOCUMENT_START_EVENT) {
        yaml_event_delete(&ev);
        s = next_event(&parser, src, &ev);
        if (s == LU_OK) {
            if (ev.type == YAML_MAPPING_START_EVENT)
                s = read_top(c, &parser, src, sec_names, sec_lines);
            else if (!(ev.type == YAML_SCALAR_EVENT && is_null_text(scalar_text(&ev), scalar_plain(&ev))))
                s = cfg_error(src, event_line(&ev), "expected a mapping of sections at the top level, got %s",
                              event_kind(&ev));
            yaml_event_delete(&ev);
        }
        if (s == LU_OK) s = next_event(&parser, src, &ev); /* document end */
        if (s == LU_OK) {
            yaml_event_delete(&ev);
            s = next_event(&parser, src, &ev);
        }
        if (s == LU_OK && ev.type != YAML_STREAM_END_EVENT) {
            s = cfg_error(src, event_line(&ev), "a config holds one YAML document, found a second");
            yaml_event_delete(&ev);
        } else if (s == LU_OK) {
            yaml_event_delete(&ev);
        }
    } else if (s == LU_OK) {
        yaml_event_delete(&ev); /* stream end: an empty file */
    }
    yaml_parser_delete(&parser);
    free(sec_names);
    free(sec_lines);
    return s;
}

/* ---- overrides ------------------------------------------------------------------------------ */

static lu_status assign(cfg_ctx *c, const char *assignment)
{
    char origin[CFG_MSG_MAX];
    snprintf(origin, sizeof origin, "command line '%s'", assignment);
    cfg_source src = {origin, false};
    const char *eq = strchr(assignment, '=');
    if (!eq) return cfg_error(&src, 0, "expected section.key=value");
    size_t klen = (size_t)(eq - assignment);
    char *name = strndup(assignment, klen);
    if (!name) return lu_errorf(LU_ERR_NOMEM, "config: out of memory");
    char *dot = strchr(name, '.');
    const char *section = "", *key = name;
    if (dot) {
        *dot = 0;
        section = name;
        key = dot + 1;
    }
    const lu_cfg_field *f = NULL;
    lu_status s = LU_OK;
    char hint[CFG_MSG_MAX];
    if (dot && !is_section(c->schema, section)) {
        suggestion(closest_name(c->schema, "", section), hint, sizeof hint);
        s = cfg_error(&src, 0, "unknown section '%s'%s", section, hint);
    } else if (!(f = find_field(c->schema, section, key))) {
        suggestion(closest_name(c->schema, section, key), hint, sizeof hint);
        if (!dot && is_section(c->schema, key))
            s = cfg_error(&src, 0, "'%s' is a section; give section.key=value", key);
        else if (dot)
            s = cfg_error(&src, 0, "unknown key '%s.%s'%s", section, key, hint);
        else
            s = cfg_error(&src, 0, "unknown key '%s'%s", key, hint);
    }
    free(name);
    if (s != LU_OK) return s;
    LU_TRY(apply_text(f, c->target, eq + 1, &src));
    c->given[f - c->schema] = true;
    return LU_OK;
}

/* ---- public API ----------------------------------------------------------------------------- */

void lu_config_free(const lu_cfg_field *schema, void *target)
{
    for (const lu_cfg_field *f = schema; f->key; f++) {
        char *m = (char *)target + f->offset;
        if (f->type == LU_CFG_STRING) {
            free(*(char **)m);
            *(char **)m = NULL;
        } else if (f->type == LU_CFG_INT_LIST || f->type == LU_CFG_FLOAT_LIST) {
            lu_cfg_list *l = (lu_cfg_list *)m;
            free(l->i);
            free(l->f);
            memset(l, 0, sizeof *l);
        }
    }
}

static size_t member_size(lu_cfg_type t)
{
    switch (t) {
    case LU_CFG_INT: return sizeof(int64_t);
    case LU_CFG_FLOAT: return sizeof(double);
    case LU_CFG_BOOL: return sizeof(bool);
    case LU_CFG_STRING: return sizeof(char *);
    case LU_CFG_ENUM: return sizeof(int);
    case LU_CFG_INT_LIST:
    case LU_CFG_FLOAT_LIST: return sizeof(lu_cfg_list);
    }
    return 0;
}

static void zero_members(const lu_cfg_field *schema, void *target)
{
    for (const lu_cfg_field *f = schema; f->key; f++) memset((char *)target + f->offset, 0, member_size(f->type));
}

lu_status lu_config_parse(const char *text, const char *name, const lu_cfg_field *schema, void *target,
                          int n_overrides, char *const *overrides)
{
    if (!name) name = "<config>";
    int n = field_count(schema);
    zero_members(schema, target);
    cfg_ctx c = {schema, target, calloc((size_t)n + 1, sizeof(int)), calloc((size_t)n + 1, sizeof(bool))};
    lu_status s = LU_OK;
    if (!c.file_line || !c.given) s = lu_errorf(LU_ERR_NOMEM, "config: out of memory reading %s", name);
    for (int i = 0; i < n && s == LU_OK; i++) {
        if (!schema[i].default_value) continue;
        char key[CFG_MSG_MAX / 2], origin[CFG_MSG_MAX];
        full_key(&schema[i], key, sizeof key);
        snprintf(origin, sizeof origin, "schema default of '%s'", key);
        cfg_source src = {origin, false};
        s = apply_text(&schema[i], target, schema[i].default_value, &src);
    }
    cfg_source file = {name, true};
    if (s == LU_OK) s = read_file_text(&c, text, &file);
    for (int i = 0; i < n_overrides && s == LU_OK; i++) s = assign(&c, overrides[i]);
    for (int i = 0; i < n && s == LU_OK; i++) {
        if (!schema[i].required || c.given[i]) continue;
        char key[CFG_MSG_MAX];
        full_key(&schema[i], key, sizeof key);
        s = lu_errorf(LU_ERR_CONFIG, "missing required key '%s' in %s", key, name);
    }
    free(c.file_line);
    free(c.given);
    if (s != LU_OK) lu_config_free(schema, target);
    return s;
}

lu_status lu_config_load(const char *path, const lu_cfg_field *schema, void *target, int n_overrides,
                         char *const *overrides)
{
    zero_members(schema, target);
    FILE *fp = fopen(path, "rb");
    if (!fp) return lu_errorf(LU_ERR_IO, "config: cannot open '%s': %s", path, strerror(errno));
    char *text = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&text, &len);
    char buf[1 << 14];
    size_t got;
    bool ok = mem != NULL;
    while (ok && (got = fread(buf, 1, sizeof buf, fp)) > 0) ok = fwrite(buf, 1, got, mem) == got;
    int read_errno = ferror(fp) ? errno : 0;
    fclose(fp);
    if (mem) ok = (fclose(mem) == 0) && ok;
    if (!ok || read_errno) {
        free(text);
        return lu_errorf(LU_ERR_IO, "config: cannot read '%s': %s", path, strerror(read_errno ? read_errno : ENOMEM));
    }
    lu_status s = lu_config_parse(text, path, schema, target, n_overrides, overrides);
    free(text);
    return s;
}

lu_status lu_config_set(const lu_cfg_field *schema, void *target, const char *assignment)
{
    int n = field_count(schema);
    cfg_ctx c = {schema, target, NULL, calloc((size_t)n + 1, sizeof(bool))};
    if (!c.given) return lu_errorf(LU_ERR_NOMEM, "config: out of memory");
    lu_status s = assign(&c, assignment);
    free(c.given);
    return s;
}

/* ---- writing -------------------------------------------------------------------------------- */

/* The shortest %.15g..%.17g text that reads back to exactly x. */
static void write_float(FILE *f, double x)
{
    if (isnan(x)) {
        fputs(".nan", f);
        return;
    }
    if (isinf(x)) {
        fputs(x < 0 ? "-.inf" : ".inf", f);
        return;
    }
    char buf[40];
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, x);
        if (strtod(buf, NULL) == x) break;
    }
    fputs(buf, f);
}

/* Double-quoted YAML string: escapes quote, backslash and control characters. */
static void write_string(FILE *f, const char *s)
{
    if (!s) {
        fputs("null", f);
        return;
    }
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p == '\n')
            fputs("\\n", f);
        else if (*p == '\t')
            fputs("\\t", f);
        else if (*p < 0x20 || *p == 0x7f)
            fprintf(f, "\\x%02x", *p);
        else
            fputc(*p, f);
    }
    fputc('"', f);
}

static lu_status write_field(const lu_cfg_field *fd, const void *target, FILE *f, const char *indent)
{
    const char *m = (const char *)target + fd->offset;
    fprintf(f, "%s%s: ", indent, fd->key);
    switch (fd->type) {
    case LU_CFG_INT: fprintf(f, "%" PRId64, *(const int64_t *)m); break;
    case LU_CFG_FLOAT: write_float(f, *(const double *)m); break;
    case LU_CFG_BOOL: fputs(*(const bool *)m ? "true" : "false", f); break;
    case LU_CFG_STRING: write_string(f, *(char *const *)m); break;
    case LU_CFG_ENUM: {
        char name[CFG_MSG_MAX], key[CFG_MSG_MAX];
        if (!fd->choices || !choice_name(fd->choices, *(const int *)m, name, sizeof name)) {
            full_key(fd, key, sizeof key);
            return lu_errorf(LU_ERR_CONFIG, "config: %s holds enum index %d, which is not among its choices", key,
                             *(const int *)m);
        }
        fputs(name, f);
        break;
    }
    case LU_CFG_INT_LIST:
    case LU_CFG_FLOAT_LIST: {
        const lu_cfg_list *l = (const lu_cfg_list *)m;
        fputc('[', f);
        for (int i = 0; i < l->n; i++) {
            if (i) fputs(", ", f);
            if (fd->type == LU_CFG_INT_LIST)
                fprintf(f, "%" PRId64, l->i[i]);
            else
                write_float(f, l->f[i]);
        }
        fputc(']', f);
        break;
    }
    }
    fputc('\n', f);
    return LU_OK;
}

lu_status lu_config_write(const lu_cfg_field *schema, const void *target, FILE *f)
{
    for (const lu_cfg_field *fd = schema; fd->key; fd++)
        if (!section_of(fd)[0]) LU_TRY(write_field(fd, target, f, ""));
    /* Sections in the order they first appear in the schema. */
    for (const lu_cfg_field *first = schema; first->key; first++) {
        const char *sec = section_of(first);
        bool seen = !sec[0];
        for (const lu_cfg_field *g = schema; g < first && !seen; g++) seen = !strcmp(section_of(g), sec);
        if (seen) continue;
        fprintf(f, "%s:\n", sec);
        for (const lu_cfg_field *fd = first; fd->key; fd++)
            if (!strcmp(section_of(fd), sec)) LU_TRY(write_field(fd, target, f, "  "));
    }
    if (ferror(f)) return lu_errorf(LU_ERR_IO, "config: writing the resolved config failed: %s", strerror(errno));
    return LU_OK;
}

char *lu_config_to_string(const lu_cfg_field *schema, const void *target)
{
    char *text = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&text, &len);
    if (!mem) {
        lu_errorf(LU_ERR_NOMEM, "config: cannot open a memory stream");
        return NULL;
    }
    lu_status s = lu_config_write(schema, target, mem);
    if (fclose(mem) != 0 && s == LU_OK) s = lu_errorf(LU_ERR_NOMEM, "config: out of memory writing the config");
    if (s != LU_OK) {
        free(text);
        return NULL;
    }
    return text;
}

static const char *type_name(lu_cfg_type t)
{
    switch (t) {
    case LU_CFG_INT: return "int";
    case LU_CFG_FLOAT: return "float";
    case LU_CFG_BOOL: return "bool";
    case LU_CFG_STRING: return "string";
    case LU_CFG_ENUM: return "enum";
    case LU_CFG_INT_LIST: return "int list";
    case LU_CFG_FLOAT_LIST: return "float list";
    }
    return "?";
}

void lu_config_print_schema(const lu_cfg_field *schema, FILE *f)
{
    int wkey = 0, wtype = 0, wdef = 0;
    char key[CFG_MSG_MAX], def[CFG_MSG_MAX];
    for (int pass = 0; pass < 2; pass++) {
        for (const lu_cfg_field *fd = schema; fd->key; fd++) {
            full_key(fd, key, sizeof key);
            const char *type = fd->type == LU_CFG_ENUM && fd->choices ? fd->choices : type_name(fd->type);
            if (fd->required)
                snprintf(def, sizeof def, "required");
            else
                snprintf(def, sizeof def, "default %s", fd->default_value ? fd->default_value : "(none)");
            if (pass == 0) {
                if ((int)strlen(key) > wkey) wkey = (int)strlen(key);
                if ((int)strlen(type) > wtype) wtype = (int)strlen(type);
                if ((int)strlen(def) > wdef) wdef = (int)strlen(def);
            } else {
                fprintf(f, "  %-*s  %-*s  %-*s  %s\n", wkey, key, wtype, type, wdef, def, fd->help ? fd->help : "");
            }
        }
    }
}
