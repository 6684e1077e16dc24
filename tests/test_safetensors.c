/* test_safetensors.c - safetensors I/O: bit-exact round trips of every supported dtype, the
 * reference writer's layout, a file written by Python's `safetensors` library
 * (tests/fixtures/hf/py_written.safetensors, from scripts/make_hf_fixtures.py), and one test per
 * malformation, each written byte by byte and expected to fail with a message naming the file
 * and the tensor at fault. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/safetensors.h"
#include "testutil.h"

#define PY_FIXTURE "tests/fixtures/hf/py_written.safetensors"

/* ---- helpers -------------------------------------------------------------------------------- */

static char path[64];

static void make_path(void)
{
    strcpy(path, "/tmp/lu_st_XXXXXX");
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    close(fd);
}

static void remove_path(void) { unlink(path); }

TestSuite(safetensors, .init = make_path, .fini = remove_path);

static void write_bytes(const void *data, size_t n)
{
    FILE *fp = fopen(path, "wb");
    cr_assert_not_null(fp);
    cr_assert_eq(fwrite(data, 1, n, fp), n);
    fclose(fp);
}

static size_t read_bytes(void *data, size_t cap)
{
    FILE *fp = fopen(path, "rb");
    cr_assert_not_null(fp);
    size_t n = fread(data, 1, cap, fp);
    fclose(fp);
    return n;
}

/* A file with header length `hlen` (the header's own length when UINT64_MAX), the header text,
 * then `data_len` zero bytes. */
static void write_file(uint64_t hlen, const char *header, size_t data_len)
{
    size_t h = strlen(header);
    if (hlen == UINT64_MAX) hlen = h;
    size_t n = 8 + h + data_len;
    unsigned char *buf = calloc(n, 1);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(hlen >> (8 * i));
    memcpy(buf + 8, header, h);
    write_bytes(buf, n);
    free(buf);
}

/* Opening must fail with a message naming the file and containing `needle`. */
static void expect_open_error(const char *needle)
{
    lu_st_file *f = lu_st_open(path);
    cr_assert_null(f, "malformed file opened");
    tu_assert_error_contains(path);
    tu_assert_error_contains(needle);
}

static void save_ok(int n, const char *const *names, lu_tensor *const *ts, int n_meta, const char *const *keys,
                    const char *const *values)
{
    cr_assert_eq(lu_st_save(path, n, names, ts, n_meta, keys, values), LU_OK, "%s", lu_error_message());
}

static lu_st_file *open_ok(const char *p)
{
    lu_st_file *f = lu_st_open(p);
    cr_assert_not_null(f, "%s", lu_error_message());
    return f;
}

static void assert_same_bytes(const lu_tensor *a, const lu_tensor *b, const char *what)
{
    cr_assert_eq(a->dtype, b->dtype, "%s: dtype", what);
    cr_assert(lu_tensor_same_shape(a, b), "%s: shape", what);
    cr_assert(!memcmp(lu_tensor_data(a), lu_tensor_data(b), lu_tensor_nbytes(a)), "%s: bytes differ", what);
}

/* ---- round trips ---------------------------------------------------------------------------- */

Test(safetensors, round_trip_is_bit_exact_for_every_supported_dtype)
{
    const lu_dtype dts[] = {LU_F32, LU_F64, LU_BF16, LU_F16, LU_I32, LU_I64, LU_U8, LU_BOOL};
    enum { N = sizeof dts / sizeof dts[0] };
    lu_tensor *ts[N];
    const char *names[N];
    for (int i = 0; i < N; i++) {
        if (lu_dtype_is_float(dts[i])) {
            ts[i] = tu_rand(dts[i], LU_SHAPE(3, 7, 5), -3, 3, 100 + (uint64_t)i);
        } else { /* tu_randint makes i32/i64 only */
            lu_tensor *r = tu_randint(LU_I64, LU_SHAPE(3, 7, 5), dts[i] == LU_BOOL ? 2 : 200, 7 + (uint64_t)i);
            ts[i] = lu_tensor_convert(r, dts[i], LU_CPU);
            lu_tensor_release(r);
        }
        names[i] = lu_dtype_name(dts[i]);
    }
    save_ok(N, names, ts, 0, NULL, NULL);
    lu_st_file *f = open_ok(path);
    cr_assert_eq(lu_st_count(f), N);
    for (int i = 0; i < N; i++) {
        lu_dtype dt;
        int ndim;
        int64_t shape[LU_MAX_DIMS];
        cr_assert_eq(lu_st_info(f, lu_st_find(f, names[i]), &dt, &ndim, shape), LU_OK);
        cr_assert(dt == dts[i] && ndim == 3 && shape[0] == 3 && shape[1] == 7 && shape[2] == 5, "%s info", names[i]);
        lu_tensor *back = lu_st_load(f, names[i], dts[i]);
        cr_assert_not_null(back, "%s", lu_error_message());
        assert_same_bytes(back, ts[i], names[i]);
        lu_tensor_release(back);
        lu_tensor_release(ts[i]);
    }
    lu_st_close(f);
}

Test(safetensors, round_trip_keeps_scalar_and_empty_tensors)
{
    lu_tensor *scalar = lu_tensor_full(LU_F32, 0, (int64_t[]){1}, LU_CPU, -1.25);
    lu_tensor *empty = lu_tensor_empty(LU_BF16, LU_SHAPE(4, 0, 2), LU_CPU);
    lu_tensor *one = lu_tensor_full(LU_I64, LU_SHAPE(1), LU_CPU, 42);
    const char *names[] = {"scalar", "empty", "one"};
    save_ok(3, names, (lu_tensor *[]){scalar, empty, one}, 0, NULL, NULL);
    lu_st_file *f = open_ok(path);
    lu_tensor *s = lu_st_load(f, "scalar", LU_F32), *e = lu_st_load(f, "empty", LU_F32), *o = lu_st_load(f, "one", LU_I64);
    cr_assert(s && e && o, "%s", lu_error_message());
    cr_assert_eq(s->ndim, 0);
    cr_assert_eq(lu_tensor_item(s), -1.25);
    cr_assert(e->ndim == 3 && e->shape[0] == 4 && e->shape[1] == 0 && e->shape[2] == 2);
    cr_assert_eq(lu_tensor_numel(e), 0);
    cr_assert_eq(lu_tensor_item(o), 42);
    lu_tensor *ts[] = {scalar, empty, one, s, e, o};
    for (int i = 0; i < 6; i++) lu_tensor_release(ts[i]);
    lu_st_close(f);
}

Test(safetensors, round_trip_keeps_metadata)
{
    lu_tensor *t = tu_rand(LU_F32, LU_SHAPE(2), 0, 1, 1);
    const char *keys[] = {"format", "note \"quoted\""}, *values[] = {"pt", "é\nline"};
    save_ok(1, (const char *[]){"w"}, &t, 2, keys, values);
    lu_st_file *f = open_ok(path);
    cr_assert_str_eq(lu_st_metadata(f, "format"), "pt");
    cr_assert_str_eq(lu_st_metadata(f, "note \"quoted\""), "é\nline");
    cr_assert_null(lu_st_metadata(f, "absent"));
    lu_st_close(f);
    save_ok(1, (const char *[]){"w"}, &t, 0, NULL, NULL);
    f = open_ok(path);
    cr_assert_null(lu_st_metadata(f, "format"));
    lu_st_close(f);
    lu_tensor_release(t);
}

Test(safetensors, save_orders_by_descending_dtype_then_name_and_pads_header)
{
    lu_tensor *a = tu_rand(LU_BF16, LU_SHAPE(3), 0, 1, 1), *b = tu_rand(LU_F32, LU_SHAPE(5), 0, 1, 2);
    lu_tensor *c = tu_randint(LU_I64, LU_SHAPE(1), 9, 3), *d = tu_rand(LU_F32, LU_SHAPE(1), 0, 1, 4);
    save_ok(4, (const char *[]){"a", "zb", "c", "d"}, (lu_tensor *[]){a, b, c, d}, 0, NULL, NULL);
    lu_st_file *f = open_ok(path);
    const char *expect[] = {"c", "d", "zb", "a"}; /* I64 > F32 > BF16 in safetensors' Dtype order */
    for (int i = 0; i < 4; i++) cr_assert_str_eq(lu_st_name(f, i), expect[i]);
    lu_st_close(f);
    unsigned char buf[512];
    size_t n = read_bytes(buf, sizeof buf);
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)buf[i] << (8 * i);
    cr_assert_eq(hlen % 8, 0, "header length %llu is not a multiple of 8", (unsigned long long)hlen);
    cr_assert_eq(buf[8 + hlen - 1], ' ', "header is padded with spaces");
    cr_assert_eq(n, 8 + hlen + 8 + 4 * 6 + 2 * 3);
    lu_tensor *ts[] = {a, b, c, d};
    for (int i = 0; i < 4; i++) lu_tensor_release(ts[i]);
}

Test(safetensors, save_writes_non_contiguous_tensors_in_logical_order)
{
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(3, 4), -1, 1, 5);
    lu_tensor *xt = lu_transpose(x, 0, 1);
    cr_assert(!lu_tensor_is_contiguous(xt));
    save_ok(1, (const char *[]){"xt"}, &xt, 0, NULL, NULL);
    lu_st_file *f = open_ok(path);
    lu_tensor *back = lu_st_load(f, "xt", LU_F32);
    lu_tensor *ref = lu_tensor_convert(xt, LU_F32, LU_CPU);
    assert_same_bytes(back, ref, "transposed");
    lu_st_close(f);
    lu_tensor_release(back);
    lu_tensor_release(ref);
    lu_tensor_release(xt);
    lu_tensor_release(x);
}

Test(safetensors, load_converts_between_dtypes)
{
    lu_tensor *w = tu_rand(LU_F32, LU_SHAPE(5, 3), -2, 2, 9);
    save_ok(1, (const char *[]){"w"}, &w, 0, NULL, NULL);
    lu_st_file *f = open_ok(path);
    lu_tensor *as64 = lu_st_load(f, "w", LU_F64), *as_bf = lu_st_load(f, "w", LU_BF16);
    const float *src = lu_tensor_data(w);
    const double *d64 = lu_tensor_data(as64);
    const uint16_t *dbf = lu_tensor_data(as_bf);
    for (int i = 0; i < 15; i++) {
        cr_assert_eq(d64[i], (double)src[i]);
        cr_assert_eq(dbf[i], lu_f32_to_bf16(src[i]), "bf16 rounding of element %d", i);
    }
    lu_tensor *t[] = {w, as64, as_bf};
    for (int i = 0; i < 3; i++) lu_tensor_release(t[i]);
    lu_st_close(f);
}

Test(safetensors, read_into_fills_a_strided_destination_and_checks_shape)
{
    lu_tensor *w = tu_rand(LU_BF16, LU_SHAPE(4, 3), -2, 2, 11);
    save_ok(1, (const char *[]){"w"}, &w, 0, NULL, NULL);
    lu_st_file *f = open_ok(path);
    lu_tensor *base = lu_tensor_zeros(LU_F32, LU_SHAPE(3, 4), LU_CPU);
    lu_tensor *dst = lu_transpose(base, 0, 1); /* [4, 3], strided */
    cr_assert_eq(lu_st_read_into(f, "w", dst), LU_OK, "%s", lu_error_message());
    lu_tensor *ref = lu_tensor_convert(w, LU_F32, LU_CPU);
    tu_assert_tensors_close(dst, ref, 0, 0, "strided read_into");
    lu_tensor *wrong = lu_tensor_zeros(LU_F32, LU_SHAPE(3, 4), LU_CPU);
    cr_assert_eq(lu_st_read_into(f, "w", wrong), LU_ERR_SHAPE);
    tu_assert_error_contains("tensor 'w' has shape [4, 3] but the destination has shape [3, 4]");
    lu_tensor *t[] = {w, base, dst, ref, wrong};
    for (int i = 0; i < 5; i++) lu_tensor_release(t[i]);
    lu_st_close(f);
}

Test(safetensors, load_of_an_absent_name_is_an_error)
{
    lu_tensor *w = tu_rand(LU_F32, LU_SHAPE(2), 0, 1, 1);
    save_ok(1, (const char *[]){"w"}, &w, 0, NULL, NULL);
    lu_st_file *f = open_ok(path);
    cr_assert_eq(lu_st_find(f, "model.norm.weight"), -1);
    cr_assert_null(lu_st_load(f, "model.norm.weight", LU_F32));
    tu_assert_error_contains("no tensor named 'model.norm.weight'");
    cr_assert_null(lu_st_name(f, 1));
    cr_assert_eq(lu_st_info(f, 1, NULL, NULL, NULL), LU_ERR_INVALID);
    lu_st_close(f);
    lu_tensor_release(w);
}

Test(safetensors, save_rejects_duplicate_and_reserved_names)
{
    lu_tensor *w = tu_rand(LU_F32, LU_SHAPE(2), 0, 1, 1);
    cr_assert_eq(lu_st_save(path, 2, (const char *[]){"w", "w"}, (lu_tensor *[]){w, w}, 0, NULL, NULL), LU_ERR_INVALID);
    tu_assert_error_contains("tensor name 'w' given twice");
    cr_assert_eq(lu_st_save(path, 1, (const char *[]){"__metadata__"}, &w, 0, NULL, NULL), LU_ERR_INVALID);
    tu_assert_error_contains("reserved");
    cr_assert_eq(lu_st_save(path, 1, (const char *[]){"w"}, &w, 2, (const char *[]){"k", "k"},
                            (const char *[]){"1", "2"}), LU_ERR_INVALID);
    tu_assert_error_contains("metadata key 'k' given twice");
    lu_tensor_release(w);
}

Test(safetensors, save_replaces_the_file_atomically_and_leaves_no_temporary)
{
    lu_tensor *a = tu_rand(LU_F32, LU_SHAPE(2), 0, 1, 1), *b = tu_rand(LU_F32, LU_SHAPE(3), 0, 1, 2);
    save_ok(1, (const char *[]){"a"}, &a, 0, NULL, NULL);
    save_ok(1, (const char *[]){"b"}, &b, 0, NULL, NULL);
    lu_st_file *f = open_ok(path);
    cr_assert_eq(lu_st_count(f), 1);
    cr_assert_str_eq(lu_st_name(f, 0), "b");
    lu_st_close(f);
    char tmp[128];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    struct stat st;
    cr_assert_neq(stat(tmp, &st), 0, "temporary file left behind");
    cr_assert_eq(lu_st_save("/nonexistent_dir_lu/x.safetensors", 1, (const char *[]){"a"}, &a, 0, NULL, NULL), LU_ERR_IO);
    tu_assert_error_contains("/nonexistent_dir_lu/x.safetensors.tmp.");
    lu_tensor_release(a);
    lu_tensor_release(b);
}

/* ---- a file written by Python's safetensors ---------------------------------------------- */

static void assert_values(lu_st_file *f, const char *name, int64_t n, double (*value)(int64_t))
{
    lu_tensor *t = lu_st_load(f, name, LU_F64);
    cr_assert_not_null(t, "%s", lu_error_message());
    cr_assert_eq(lu_tensor_numel(t), n, "%s numel", name);
    const double *d = lu_tensor_data(t);
    for (int64_t i = 0; i < n; i++) cr_assert_eq(d[i], value(i), "%s[%lld] = %g", name, (long long)i, d[i]);
    lu_tensor_release(t);
}

static double v_f32(int64_t i) { return (double)(i - 7) * 0.25; }
static double v_f64(int64_t i) { return (double)(i - 2) * 0.125; }
static double v_bf16(int64_t i) { return (double)(i - 6) * 0.5; }
static double v_f16(int64_t i) { return (double)(i - 3) * 0.75; }
static double v_i32(int64_t i) { return (double)(i * 1000 - 1500); }
static double v_i64(int64_t i) { return (double)(i * 4000000000LL - 4000000000LL); }
static double v_u8(int64_t i) { return (double)(i * 50); }
static double v_bool(int64_t i) { return (double)(i % 2 == 1); }

Test(safetensors, loads_a_file_written_by_python_safetensors)
{
    lu_st_file *f = open_ok(PY_FIXTURE);
    cr_assert_eq(lu_st_count(f), 10);
    cr_assert_str_eq(lu_st_metadata(f, "format"), "pt");
    cr_assert_str_eq(lu_st_metadata(f, "source"), "make_hf_fixtures.py");
    assert_values(f, "f32", 15, v_f32);
    assert_values(f, "f64", 6, v_f64);
    assert_values(f, "bf16", 12, v_bf16);
    assert_values(f, "f16", 7, v_f16);
    assert_values(f, "i32", 4, v_i32);
    assert_values(f, "i64", 3, v_i64);
    assert_values(f, "u8", 5, v_u8);
    assert_values(f, "bool", 4, v_bool);
    lu_tensor *s = lu_st_load(f, "scalar", LU_F32), *e = lu_st_load(f, "empty", LU_F32);
    cr_assert(s && e);
    cr_assert(s->ndim == 0 && lu_tensor_item(s) == 2.5);
    cr_assert(e->ndim == 2 && e->shape[0] == 0 && e->shape[1] == 3);
    lu_tensor_release(s);
    lu_tensor_release(e);
    lu_st_close(f);
}

/* Saving the fixture's tensors again must reproduce the reference writer's bytes exactly; its
 * metadata order comes from a hash map, so the keys are passed in the fixture's order. */
Test(safetensors, resave_of_python_file_is_byte_identical)
{
    lu_st_file *f = open_ok(PY_FIXTURE);
    int n = lu_st_count(f);
    const char *names[16];
    lu_tensor *ts[16];
    for (int i = 0; i < n; i++) {
        lu_dtype dt;
        names[i] = lu_st_name(f, i);
        cr_assert_eq(lu_st_info(f, i, &dt, NULL, NULL), LU_OK);
        ts[i] = lu_st_load(f, names[i], dt);
    }
    static char ref[4096];
    FILE *fp = fopen(PY_FIXTURE, "rb");
    cr_assert_not_null(fp);
    size_t nref = fread(ref, 1, sizeof ref, fp);
    fclose(fp);
    ref[nref < sizeof ref ? nref : sizeof ref - 1] = '\0';
    const char *fmt = strstr(ref + 8, "\"format\""), *src = strstr(ref + 8, "\"source\"");
    cr_assert(fmt && src);
    const char *keys[2] = {"format", "source"}, *values[2] = {"pt", "make_hf_fixtures.py"};
    if (src < fmt) {
        keys[0] = "source", keys[1] = "format";
        values[0] = "make_hf_fixtures.py", values[1] = "pt";
    }
    save_ok(n, names, ts, 2, keys, values);
    static char out[4096];
    size_t nout = read_bytes(out, sizeof out);
    cr_assert_eq(nout, nref);
    cr_assert(!memcmp(out, ref, nref), "bytes differ from the reference writer's");
    for (int i = 0; i < n; i++) lu_tensor_release(ts[i]);
    lu_st_close(f);
}

/* ---- unsupported but known dtypes ----------------------------------------------------------- */

Test(safetensors, known_unsupported_dtype_is_listed_but_not_loaded)
{
    write_file(UINT64_MAX, "{\"q\":{\"dtype\":\"I8\",\"shape\":[2,3],\"data_offsets\":[0,6]}}", 6);
    lu_st_file *f = open_ok(path);
    int ndim;
    int64_t shape[LU_MAX_DIMS];
    cr_assert_eq(lu_st_info(f, 0, NULL, &ndim, shape), LU_ERR_DTYPE);
    cr_assert(ndim == 2 && shape[0] == 2 && shape[1] == 3);
    tu_assert_error_contains("tensor 'q' has dtype I8, which luthier cannot load");
    cr_assert_null(lu_st_load(f, "q", LU_F32));
    tu_assert_error_contains("I8");
    lu_st_close(f);
}

/* ---- malformed files ------------------------------------------------------------------------ */

static const char *ok_tensor = "\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}";

static void write_with_tensors(const char *tensors_json, size_t data_len)
{
    char h[1024];
    snprintf(h, sizeof h, "{%s}", tensors_json);
    write_file(UINT64_MAX, h, data_len);
}

Test(safetensors, rejects_a_missing_file)
{
    cr_assert_null(lu_st_open("/nonexistent_lu/model.safetensors"));
    tu_assert_error_contains("/nonexistent_lu/model.safetensors: cannot open");
}

Test(safetensors, rejects_an_empty_file)
{
    write_bytes("", 0);
    expect_open_error("file has 0 bytes, too short for the 8-byte header length");
}

Test(safetensors, rejects_a_file_shorter_than_the_length_field)
{
    write_bytes("\x10\x00\x00", 3);
    expect_open_error("file has 3 bytes");
}

Test(safetensors, rejects_a_cut_header)
{
    char h[128];
    snprintf(h, sizeof h, "{%s}", ok_tensor);
    write_file(strlen(h) + 40, h, 0);
    expect_open_error("is larger than the");
}

Test(safetensors, rejects_a_header_length_over_the_100mb_limit)
{
    write_file(1ull << 40, "{}", 0);
    expect_open_error("header length 1099511627776 exceeds the format's limit of 100 MB");
}

Test(safetensors, rejects_bad_json)
{
    write_with_tensors("\"w\":{\"dtype\":\"F32\",\"shape\":[4],", 16);
    expect_open_error("header is not valid JSON");
}

Test(safetensors, rejects_a_non_object_header)
{
    write_file(UINT64_MAX, "[1, 2, 3]", 0);
    expect_open_error("header is not a JSON object");
}

Test(safetensors, rejects_bytes_after_the_json_value)
{
    write_file(UINT64_MAX, "{} x", 0);
    expect_open_error("header has bytes after its JSON value");
}

Test(safetensors, accepts_an_empty_header_object_with_space_padding)
{
    write_file(UINT64_MAX, "{}      ", 0);
    lu_st_file *f = open_ok(path);
    cr_assert_eq(lu_st_count(f), 0);
    lu_st_close(f);
}

Test(safetensors, rejects_an_unknown_dtype)
{
    write_with_tensors("\"w\":{\"dtype\":\"F33\",\"shape\":[4],\"data_offsets\":[0,16]}", 16);
    expect_open_error("tensor 'w': unknown dtype \"F33\"");
}

Test(safetensors, rejects_a_negative_shape)
{
    write_with_tensors("\"w\":{\"dtype\":\"F32\",\"shape\":[4,-1],\"data_offsets\":[0,16]}", 16);
    expect_open_error("tensor 'w': shape[1] is not a non-negative integer");
}

Test(safetensors, rejects_a_fractional_shape)
{
    write_with_tensors("\"w\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,10]}", 10);
    expect_open_error("tensor 'w': shape[0] is not a non-negative integer");
}

Test(safetensors, rejects_a_shape_whose_element_count_overflows)
{
    write_with_tensors("\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],\"data_offsets\":[0,16]}", 16);
    expect_open_error("tensor 'w': shape[1] = 4294967296 makes the element count overflow");
}

Test(safetensors, rejects_more_than_eight_dims)
{
    write_with_tensors("\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}", 4);
    expect_open_error("tensor 'w': shape has 9 dims");
}

Test(safetensors, rejects_a_wrong_byte_size)
{
    write_with_tensors("\"model.norm.weight\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,10]}", 10);
    expect_open_error("tensor 'model.norm.weight': data_offsets [0, 10] hold 10 bytes, shape [4] F32 needs 16");
}

Test(safetensors, rejects_offsets_outside_the_file)
{
    write_with_tensors(ok_tensor, 12);
    expect_open_error("tensor 'w': data_offsets [0, 16] extend past the end of the file (the data buffer has 12 bytes)");
}

Test(safetensors, rejects_reversed_offsets)
{
    write_with_tensors("\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}", 8);
    expect_open_error("tensor 'w': data_offsets must be [begin, end]");
}

Test(safetensors, rejects_an_entry_without_data_offsets)
{
    write_with_tensors("\"w\":{\"dtype\":\"F32\",\"shape\":[4]}", 16);
    expect_open_error("tensor 'w': needs \"dtype\"");
}

Test(safetensors, rejects_overlapping_offsets)
{
    write_with_tensors("\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                       "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}", 24);
    expect_open_error("tensor 'b': data_offsets [8, 24] overlap tensor 'a' (ends at 16)");
}

Test(safetensors, rejects_a_gap_between_tensors)
{
    write_with_tensors("\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                       "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[20,28]}", 28);
    expect_open_error("tensor 'b': data_offsets [20, 28] leave a gap after byte 16");
}

Test(safetensors, rejects_a_buffer_not_starting_at_zero)
{
    write_with_tensors("\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}", 8);
    expect_open_error("tensor 'a': data_offsets [4, 8] leave a gap after byte 0");
}

Test(safetensors, rejects_a_duplicate_tensor_name)
{
    write_with_tensors("\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                       "\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[16,32]}", 32);
    expect_open_error("tensor 'w' appears twice in the header");
}

Test(safetensors, rejects_trailing_bytes_after_the_buffer)
{
    write_with_tensors(ok_tensor, 20);
    expect_open_error("the tensors end at byte 16 of the data buffer but the file holds 20 bytes");
}

Test(safetensors, rejects_non_string_metadata)
{
    char t[256];
    snprintf(t, sizeof t, "\"__metadata__\":{\"format\":1},%s", ok_tensor);
    write_with_tensors(t, 16);
    expect_open_error("\"__metadata__\" value of key 'format' is not a string");
}

Test(safetensors, reads_a_tensor_at_a_misaligned_offset)
{
    /* A header of odd length puts the buffer at an odd address; values must still read right. */
    const char *h = "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                    "\"w\":{\"dtype\":\"F32\",\"shape\":[600],\"data_offsets\":[1,2401]}}";
    size_t hl = strlen(h);
    cr_assert_eq(hl % 2, 1);
    size_t n = 8 + hl + 2401;
    unsigned char *buf = calloc(n, 1);
    buf[0] = (unsigned char)hl;
    memcpy(buf + 8, h, hl);
    buf[8 + hl] = 7;
    for (int i = 0; i < 600; i++) {
        float v = (float)i * 0.5f - 3.0f;
        memcpy(buf + 8 + hl + 1 + 4 * i, &v, 4);
    }
    write_bytes(buf, n);
    free(buf);
    lu_st_file *f = open_ok(path);
    lu_tensor *w = lu_st_load(f, "w", LU_F64);
    cr_assert_not_null(w);
    const double *d = lu_tensor_data(w);
    for (int i = 0; i < 600; i++) cr_assert_eq(d[i], i * 0.5 - 3.0, "element %d", i);
    lu_tensor_release(w);
    lu_st_close(f);
}
