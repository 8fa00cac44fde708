/* Model loading: a valid model file is written here in C (from the tensor
 * set the engine itself expects, with pseudo-random values), then corrupted
 * one way at a time; each corruption must be refused with GL_EFORMAT and a
 * message naming what is wrong. The valid file is also encoded end to end
 * (batch-norm folding checked against a float64 computation), so the engine
 * gets a smoke test that needs no Python. The same model stored as F16 must
 * load to the same floats and give the same descriptors, and the F16
 * conversion is checked on all 65536 inputs. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/err.h"
#include "nn/model.h"
#include "nn/nn.h"
#include "test.h"

/* Small but complete: resizer, three levels, GeM, a classifier, BN. */
static const char *const small_config =
    "{\"width_mult\": 0.25, \"input_size\": [64, 48], \"resizer\": true, "
    "\"resizer_channels\": 4, \"levels\": [6, 13, 18], \"osm_dim\": 16, \"osm_groups\": 2, "
    "\"descriptor_dim\": 8, \"pool\": \"gem\", \"num_classes\": 3}";

static char path[256];

/* One way to spoil the file; all fields optional. */
struct mut {
  const char *config;         /* __metadata__ config */
  const char *format_version; /* __metadata__ format_version */
  const char *skip;           /* leave this tensor out, bytes and all */
  const char *extra;          /* add a tensor [2] of this name */
  const char *dtype_of, *dtype;
  const char *shape_of; /* give this tensor shape `shape` (ndim entries) */
  uint32_t ndim;
  uint64_t shape[4];
  const char *offs_of; /* give this tensor data_offsets `offs` */
  double offs[2];
  bool overlap;                /* a tensor reuses the bytes of the one before it */
  const char *dirty_pad_after; /* a non-zero byte in this tensor's padding */
  bool half_values;            /* only values exactly representable as F16 */
  bool f16;                    /* store every tensor as F16 (implies half_values) */
};

static uint32_t rng = 12345;
static float frand(void) {
  rng = rng * 1664525u + 1013904223u;
  return (float)((rng >> 8) & 0xffff) / 65536.0f; /* [0, 1) */
}

static int spec_cmp(const void *a, const void *b) {
  return strcmp(((const struct gl__nn_tensor_spec *)a)->name,
                ((const struct gl__nn_tensor_spec *)b)->name);
}

static float value_for(const char *name, bool half_values) {
  size_t n = strlen(name);
  float v = (frand() - 0.5f) * 0.6f;
  if (n > 11 && strcmp(name + n - 11, "running_var") == 0)
    v = 0.5f + frand();
  else if (n > 9 && strcmp(name + n - 9, ".bn.weight") == 0)
    v = 0.7f + 0.6f * frand();
  /* Multiples of 2^-10 below 2 in magnitude have at most 11 significant
   * bits: exact F16 normals (or zero). */
  return half_values ? ldexpf(rintf(ldexpf(v, 10)), -10) : v;
}

/* The F16 bits of v, which must be zero or an exact F16 normal. */
static uint16_t half_bits(float v) {
  uint32_t b;
  memcpy(&b, &v, sizeof b);
  uint16_t sign = (uint16_t)((b >> 16) & 0x8000u);
  if (!(b & 0x7fffffffu))
    return sign;
  uint32_t e = ((b >> 23) & 0xffu) - 127 + 15;
  return (uint16_t)(sign | e << 10 | ((b >> 13) & 0x3ffu));
}

/* Serialises the model (as python/geoloc_train/safetensors.py dumps: names
 * in order, each tensor 8-aligned, header space-padded) into *out. */
static size_t build_file(const struct mut *mu, uint8_t **out) {
  struct gl__nn_config cfg;
  char err[256];
  if (gl__nn_config_parse(small_config, &cfg, err, sizeof err) != 0) {
    fprintf(stderr, "config: %s\n", err);
    abort();
  }
  struct gl__nn_tensor_spec *spec;
  size_t n;
  if (gl__nn_expected_tensors(&cfg, SIZE_MAX, &spec, &n))
    abort();
  spec = realloc(spec, (n + 1) * sizeof *spec);
  if (mu->extra) {
    memset(&spec[n], 0, sizeof spec[n]);
    snprintf(spec[n].name, sizeof spec[n].name, "%s", mu->extra);
    spec[n].ndim = 1;
    spec[n].shape[0] = 2;
    n++;
  }
  qsort(spec, n, sizeof *spec, spec_cmp);

  cJSON *hdr = cJSON_CreateObject();
  cJSON *meta = cJSON_AddObjectToObject(hdr, "__metadata__");
  cJSON_AddStringToObject(meta, "config", mu->config ? mu->config : small_config);
  cJSON_AddStringToObject(meta, "format", "geoloc-model");
  cJSON_AddStringToObject(meta, "format_version", mu->format_version ? mu->format_version : "1");
  size_t data_len = 0, cap = 1 << 16;
  uint8_t *data = calloc(1, cap);
  uint64_t prev_begin = 0, prev_end = 0;
  rng = 12345;
  for (size_t i = 0; i < n; i++) {
    const struct gl__nn_tensor_spec *s = &spec[i];
    if (mu->skip && strcmp(s->name, mu->skip) == 0)
      continue;
    uint64_t numel = 1;
    for (uint32_t k = 0; k < s->ndim; k++)
      numel *= s->shape[k];
    uint64_t esz = mu->f16 ? 2 : 4;
    uint64_t begin = (data_len + 7) / 8 * 8, end = begin + numel * esz;
    while (end > cap) {
      data = realloc(data, cap * 2);
      memset(data + cap, 0, cap);
      cap *= 2;
    }
    for (uint64_t k = 0; k < numel; k++) {
      float v = value_for(s->name, mu->half_values || mu->f16);
      if (mu->f16) {
        uint16_t h = half_bits(v);
        memcpy(data + begin + k * 2, &h, 2);
      } else {
        memcpy(data + begin + k * 4, &v, 4);
      }
    }
    data_len = end;
    if (mu->dirty_pad_after && strcmp(mu->dirty_pad_after, s->name) == 0 && end % 8)
      data[end] = 0x5a;
    cJSON *e = cJSON_AddObjectToObject(hdr, s->name);
    bool ovl =
        mu->overlap && strstr(s->name, ".bn.running_mean") && prev_end - prev_begin == end - begin;
    cJSON_AddStringToObject(e, "dtype",
                            mu->dtype_of && strcmp(mu->dtype_of, s->name) == 0 ? mu->dtype
                            : mu->f16                                          ? "F16"
                                                                               : "F32");
    cJSON *sh = cJSON_AddArrayToObject(e, "shape");
    bool reshape = mu->shape_of && strcmp(mu->shape_of, s->name) == 0;
    for (uint32_t k = 0; k < (reshape ? mu->ndim : s->ndim); k++)
      cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)(reshape ? mu->shape : s->shape)[k]));
    cJSON *of = cJSON_AddArrayToObject(e, "data_offsets");
    double ob = (double)begin, oe = (double)end;
    if (mu->offs_of && strcmp(mu->offs_of, s->name) == 0)
      ob = mu->offs[0], oe = mu->offs[1];
    if (ovl) /* point at the previous tensor's bytes; this tensor's stay as padding */
      ob = (double)prev_begin, oe = (double)prev_end;
    cJSON_AddItemToArray(of, cJSON_CreateNumber(ob));
    cJSON_AddItemToArray(of, cJSON_CreateNumber(oe));
    prev_begin = begin;
    prev_end = end;
  }
  data_len = (data_len + 7) / 8 * 8;
  char *json = cJSON_PrintUnformatted(hdr);
  size_t hl = strlen(json), padded = (8 + hl + 7) / 8 * 8 - 8;
  size_t total = 8 + padded + data_len;
  uint8_t *f = malloc(total);
  for (int k = 0; k < 8; k++)
    f[k] = (uint8_t)((uint64_t)padded >> (8 * k));
  memcpy(f + 8, json, hl);
  memset(f + 8 + hl, ' ', padded - hl);
  memcpy(f + 8 + padded, data, data_len);
  free(json);
  free(data);
  cJSON_Delete(hdr);
  free(spec);
  *out = f;
  return total;
}

static void write_file(const uint8_t *p, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(p, 1, n, f) != n)
    abort();
  fclose(f);
}

/* Loads the file at path; returns the code, the message in err. */
static int load(char *err, size_t errlen) {
  struct gl_nn_model *m = NULL;
  err[0] = 0;
  int rc = gl_nn_model_load(path, &m, err, errlen);
  gl_nn_model_destroy(m);
  return rc;
}

static void expect_mut(const struct mut *mu, const char *needle) {
  uint8_t *f;
  size_t n = build_file(mu, &f);
  write_file(f, n);
  free(f);
  char err[512];
  CHECK_EQ_INT(load(err, sizeof err), GL_EFORMAT);
  CHECK_CONTAINS(err, needle);
  CHECK_CONTAINS(err, path); /* messages name the file */
}

/* Valid bytes, then fn spoils them in place (and may shorten them). */
static void expect_raw(void (*fn)(uint8_t *f, size_t *n), const char *needle) {
  struct mut none = {0};
  uint8_t *f;
  size_t n = build_file(&none, &f);
  fn(f, &n);
  write_file(f, n);
  free(f);
  char err[512];
  CHECK_EQ_INT(load(err, sizeof err), GL_EFORMAT);
  CHECK_CONTAINS(err, needle);
}

static void set_hlen(uint8_t *f, uint64_t v) {
  for (int k = 0; k < 8; k++)
    f[k] = (uint8_t)(v >> (8 * k));
}
static void raw_hlen_huge(uint8_t *f, size_t *n) { (void)n, set_hlen(f, 1ull << 40); }
static void raw_hlen_past(uint8_t *f, size_t *n) { set_hlen(f, *n); }
static void raw_hlen_tiny(uint8_t *f, size_t *n) { (void)n, set_hlen(f, 1); }
static void raw_short(uint8_t *f, size_t *n) { (void)f, *n = 5; }
static void raw_bad_json(uint8_t *f, size_t *n) { (void)n, f[9] = '#'; }
static void raw_not_object(uint8_t *f, size_t *n) { (void)n, f[8] = '['; }
static void raw_truncated(uint8_t *f, size_t *n) { (void)f, *n -= 8; }
static void raw_bad_utf8(uint8_t *f, size_t *n) {
  /* Inside the metadata's config string, so only the UTF-8 check trips. */
  (void)n;
  uint8_t *p = (uint8_t *)strstr((char *)f + 8, "width_mult");
  p[0] = 0xc0;
  p[1] = 0x80; /* overlong NUL */
}

static void raw_dup_meta(uint8_t *f, size_t *n) {
  /* A second "format" in __metadata__, same length (found by fuzz_safetensors:
   * it replaced and leaked the first). */
  (void)n;
  char *p = strstr((char *)f + 8, "\"format_version\"");
  memcpy(p, "\"format\"        ", 16);
}

static void test_valid_and_fold(void) {
  struct mut none = {0};
  uint8_t *f;
  size_t n = build_file(&none, &f);
  write_file(f, n);
  free(f);
  struct gl_nn_model *m = NULL;
  char err[512] = "";
  int rc = gl_nn_model_load(path, &m, err, sizeof err);
  if (!CHECK_EQ_INT(rc, 0)) {
    fprintf(stderr, "  %s\n", err);
    return;
  }
  CHECK_EQ_U64(gl_nn_model_descriptor_dim(m), 8);
  CHECK_EQ_STR(gl_nn_model_config_json(m), small_config);
  CHECK_EQ_U64(strlen(gl_nn_model_sha256(m)), 64);
  CHECK(gl_nn_model_param_count(m) > 10000);

  /* Folding, recomputed here in float64 for one unit. */
  const struct gl__nn_unit *u = gl__nn_model_unit(m, "backbone.features.3.dw");
  const float *w = gl__nn_model_tensor(m, "backbone.features.3.dw.conv.weight");
  const float *gamma = gl__nn_model_tensor(m, "backbone.features.3.dw.bn.weight");
  const float *beta = gl__nn_model_tensor(m, "backbone.features.3.dw.bn.bias");
  const float *mean = gl__nn_model_tensor(m, "backbone.features.3.dw.bn.running_mean");
  const float *var = gl__nn_model_tensor(m, "backbone.features.3.dw.bn.running_var");
  if (CHECK(u && w && gamma && beta && mean && var)) {
    double s = (double)gamma[5] / sqrt((double)var[5] + 1e-5);
    CHECK(u->w[5 * 9 + 4] == (float)((double)w[5 * 9 + 4] * s));
    CHECK(u->b[5] == (float)((double)beta[5] - (double)mean[5] * s));
  }

  /* End to end on two images of other sizes than the input size. */
  struct gl_nn_engine *e = NULL;
  struct gl_nn_engine_opts o = {
      .backend = GL_NN_BACKEND_CPU, .max_batch = 2, .max_input_pixels = 100 * 77, .threads = 1};
  rc = gl_nn_engine_create(m, &o, &e, err, sizeof err);
  if (CHECK_EQ_INT(rc, 0)) {
    CHECK_EQ_STR(gl_nn_engine_backend_name(e), "cpu-onednn");
    uint8_t *px = malloc(100 * 77 * 3);
    for (size_t i = 0; i < 100 * 77 * 3; i++)
      px[i] = (uint8_t)(i * 7 + i / 300);
    struct gl_image imgs[2] = {{px, 50, 30}, {px, 100, 77}};
    float out[16], one[8];
    CHECK_EQ_INT(gl_nn_engine_encode(e, imgs, 2, out), 0);
    CHECK_EQ_INT(gl_nn_engine_encode(e, &imgs[1], 1, one), 0);
    for (int k = 0; k < 2; k++) {
      double ss = 0;
      for (int i = 0; i < 8; i++)
        ss += (double)out[k * 8 + i] * out[k * 8 + i];
      CHECK(fabs(ss - 1.0) < 1e-5);
    }
    for (int i = 0; i < 8; i++)
      CHECK(fabsf(one[i] - out[8 + i]) < 1e-5f);
    /* Refusals: no images, too many, too large, empty. */
    CHECK_EQ_INT(gl_nn_engine_encode(e, imgs, 0, out), GL_EINVAL);
    CHECK_EQ_INT(gl_nn_engine_encode(e, imgs, 3, out), GL_EINVAL);
    struct gl_image big = {px, 101, 77}, empty = {px, 0, 5};
    CHECK_EQ_INT(gl_nn_engine_encode(e, &big, 1, out), GL_EINVAL);
    CHECK_EQ_INT(gl_nn_engine_encode(e, &empty, 1, out), GL_EINVAL);
    free(px);
  } else {
    fprintf(stderr, "  %s\n", err);
  }
  gl_nn_engine_destroy(e);

  /* The CUDA backend is not in this build: the documented fallback signal. */
  o.backend = GL_NN_BACKEND_CUDA;
  e = NULL;
  CHECK_EQ_INT(gl_nn_engine_create(m, &o, &e, err, sizeof err), GL_ENOTSUP);
  CHECK(e == NULL);
  gl_nn_model_destroy(m);
}

/* Reference for gl__st_f16_to_f32, by arithmetic instead of bit moves. */
static float half_ref(uint16_t h) {
  int exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  float mag = exp == 0x1f ? (mant ? NAN : INFINITY)
              : exp == 0  ? ldexpf((float)mant, -24)
                          : ldexpf((float)(1024 + mant), exp - 25);
  return h & 0x8000 ? -mag : mag;
}

static void test_f16_conversion(void) {
  CHECK(gl__st_f16_to_f32(0x3c00) == 1.0f);
  CHECK(gl__st_f16_to_f32(0xc000) == -2.0f);
  CHECK(gl__st_f16_to_f32(0x7bff) == 65504.0f);        /* largest finite */
  CHECK(gl__st_f16_to_f32(0x0400) == 0x1p-14f);        /* smallest normal */
  CHECK(gl__st_f16_to_f32(0x03ff) == 1023 * 0x1p-24f); /* largest subnormal */
  CHECK(gl__st_f16_to_f32(0x0001) == 0x1p-24f);        /* smallest subnormal */
  CHECK(gl__st_f16_to_f32(0x8001) == -0x1p-24f);
  CHECK(gl__st_f16_to_f32(0x8000) == 0.0f && signbit(gl__st_f16_to_f32(0x8000)));
  CHECK(gl__st_f16_to_f32(0x7c00) == INFINITY);
  CHECK(gl__st_f16_to_f32(0xfc00) == -INFINITY);
  CHECK(isnan(gl__st_f16_to_f32(0x7e00)));
  CHECK(isnan(gl__st_f16_to_f32(0x7c01))); /* signalling NaN stays a NaN */
  CHECK(isnan(gl__st_f16_to_f32(0xfe00)) && signbit(gl__st_f16_to_f32(0xfe00)));
  int bad = 0;
  for (uint32_t h = 0; h < 65536; h++) {
    float got = gl__st_f16_to_f32((uint16_t)h), want = half_ref((uint16_t)h);
    uint32_t gb, wb;
    memcpy(&gb, &got, 4);
    memcpy(&wb, &want, 4);
    bool same = isnan(want) ? isnan(got) && signbit(got) == signbit(want) : gb == wb;
#ifdef __FLT16_MANT_DIG__
    /* The compiler's own conversion, where it has one (gcc on x86-64). */
    __extension__ _Float16 x;
    uint16_t h16 = (uint16_t)h;
    memcpy(&x, &h16, 2);
    float c = (float)x;
    uint32_t cb;
    memcpy(&cb, &c, 4);
    same = same && (isnan(want) ? cb == gb : cb == wb);
#endif
    if (!same && bad++ < 5)
      fprintf(stderr, "  F16 0x%04x -> %a (bits 0x%08x), expected %a\n", h, (double)got, gb,
              (double)want);
  }
  CHECK_EQ_INT(bad, 0);
}

/* Encodes two images of other sizes than the input size, on one thread. */
static int encode_two(struct gl_nn_model *m, float out[16]) {
  struct gl_nn_engine *e = NULL;
  struct gl_nn_engine_opts o = {
      .backend = GL_NN_BACKEND_CPU, .max_batch = 2, .max_input_pixels = 100 * 77, .threads = 1};
  char err[512] = "";
  int rc = gl_nn_engine_create(m, &o, &e, err, sizeof err);
  if (rc) {
    fprintf(stderr, "  %s\n", err);
    return rc;
  }
  uint8_t *px = malloc(100 * 77 * 3);
  for (size_t i = 0; i < 100 * 77 * 3; i++)
    px[i] = (uint8_t)(i * 7 + i / 300);
  struct gl_image imgs[2] = {{px, 50, 30}, {px, 100, 77}};
  rc = gl_nn_engine_encode(e, imgs, 2, out);
  free(px);
  gl_nn_engine_destroy(e);
  return rc;
}

/* The same values stored as F32 and as F16: the F16 file is about half the
 * size, loads to bit-identical floats (batch-norm folding included) and so
 * gives bit-identical descriptors. */
static void test_f16_model(void) {
  struct gl_nn_model *m[2] = {NULL, NULL};
  size_t size[2];
  float out[2][16];
  char sha[2][65];
  for (int k = 0; k < 2; k++) {
    uint8_t *f;
    size[k] = build_file(&(struct mut){.half_values = true, .f16 = k == 1}, &f);
    write_file(f, size[k]);
    free(f);
    char err[512] = "";
    int rc = gl_nn_model_load(path, &m[k], err, sizeof err);
    if (!CHECK_EQ_INT(rc, 0)) {
      fprintf(stderr, "  %s\n", err);
      goto out;
    }
    snprintf(sha[k], sizeof sha[k], "%s", gl_nn_model_sha256(m[k]));
    if (!CHECK_EQ_INT(encode_two(m[k], out[k]), 0))
      goto out;
  }
  CHECK(size[1] < size[0] * 6 / 10);
  CHECK(strcmp(sha[0], sha[1]) != 0); /* the hash is of the file as stored */
  CHECK_EQ_U64(gl_nn_model_param_count(m[1]), gl_nn_model_param_count(m[0]));
  CHECK_EQ_U64(m[1]->st.n_tensors, m[0]->st.n_tensors);
  int diff = 0;
  for (size_t i = 0; i < m[0]->st.n_tensors && i < m[1]->st.n_tensors; i++) {
    const struct gl__st_tensor *a = &m[0]->st.tensors[i], *b = &m[1]->st.tensors[i];
    CHECK_EQ_STR(a->dtype, "F32");
    CHECK_EQ_STR(b->dtype, "F16");
    CHECK_EQ_U64(b->numel, a->numel);
    if (b->numel == a->numel && memcmp(a->data, b->data, a->numel * sizeof(float)) && diff++ < 3)
      fprintf(stderr, "  tensor %s differs between the F32 and the F16 file\n", a->name);
  }
  CHECK_EQ_INT(diff, 0);
  const struct gl__nn_unit *u0 = gl__nn_model_unit(m[0], "backbone.features.3.dw");
  const struct gl__nn_unit *u1 = gl__nn_model_unit(m[1], "backbone.features.3.dw");
  if (CHECK(u0 && u1)) {
    CHECK_EQ_MEM(u1->w, u0->w, 9 * sizeof(float));
    CHECK(u1->b[5] == u0->b[5]);
  }
  CHECK_EQ_MEM(out[1], out[0], sizeof out[0]);
out:
  gl_nn_model_destroy(m[0]);
  gl_nn_model_destroy(m[1]);
}

static void test_header(void) {
  expect_raw(raw_hlen_huge, "exceeds the limit");
  expect_raw(raw_hlen_past, "runs past the end of the file");
  expect_raw(raw_hlen_tiny, "too small for a JSON object");
  expect_raw(raw_short, "shorter than the 8-byte header size field");
  expect_raw(raw_bad_json, "header is not valid JSON");
  expect_raw(raw_not_object, "does not start with '{'");
  expect_raw(raw_truncated, "out of range of the");
  expect_raw(raw_bad_utf8, "not UTF-8");
  expect_raw(raw_dup_meta, "duplicate key 'format' in __metadata__");
}

static void test_trailing_and_padding(void) {
  struct mut none = {0};
  uint8_t *f;
  size_t n = build_file(&none, &f);
  char err[512];
  /* 8 more bytes: beyond alignment padding. */
  uint8_t *g = calloc(1, n + 16);
  memcpy(g, f, n);
  write_file(g, n + 16);
  CHECK_EQ_INT(load(err, sizeof err), GL_EFORMAT);
  CHECK_CONTAINS(err, "trailing bytes");
  free(g);
  free(f);
  /* classifier.bias holds 3 floats, so 4 bytes of zero padding follow it. */
  expect_mut(&(struct mut){.dirty_pad_after = "classifier.bias"},
             "non-zero padding bytes before tensor");
}

static void test_entries(void) {
  expect_mut(&(struct mut){.offs_of = "classifier.bias", .offs = {0, 1e12}}, "out of range");
  expect_mut(&(struct mut){.offs_of = "classifier.bias", .offs = {-8, 4}},
             "data_offsets is not [begin, end]");
  expect_mut(&(struct mut){.overlap = true}, "overlaps tensor");
  expect_mut(&(struct mut){.dtype_of = "fusion.weight", .dtype = "BF16"},
             "tensor 'fusion.weight': dtype BF16 is not supported (geoloc models are F32 or F16)");
  expect_mut(&(struct mut){.f16 = true, .dtype_of = "fusion.weight", .dtype = "F64"},
             "tensor 'fusion.weight': dtype F64 is not supported");
  /* F32 bytes declared F16, and an F16 tensor shorter than its shape. */
  expect_mut(&(struct mut){.dtype_of = "fusion.weight", .dtype = "F16"},
             "tensor 'fusion.weight': 12 bytes at data_offsets but dtype F16 and its shape need 6");
  expect_mut(&(struct mut){.f16 = true, .shape_of = "fusion.weight", .ndim = 1, .shape = {4}},
             "tensor 'fusion.weight': 6 bytes at data_offsets but dtype F16 and its shape need 8");
  expect_mut(&(struct mut){.dtype_of = "fusion.weight", .dtype = "Q4"},
             "tensor 'fusion.weight': unknown dtype Q4");
  /* Same element count, other shape: only the config check can tell. */
  expect_mut(&(struct mut){.shape_of = "osm.0.embed.weight", .ndim = 2, .shape = {16, 8}},
             "tensor 'osm.0.embed.weight' has shape [16, 8], the config needs [8, 16]");
  /* Another element count: the bytes no longer fit the shape. */
  expect_mut(
      &(struct mut){.shape_of = "fusion.weight", .ndim = 1, .shape = {4}},
      "tensor 'fusion.weight': 12 bytes at data_offsets but dtype F32 and its shape need 16");
  expect_mut(&(struct mut){.skip = "osm.1.groups.0.q.bias"}, "1 missing ('osm.1.groups.0.q.bias')");
  expect_mut(&(struct mut){.extra = "osm.3.proj.weight"}, "1 unexpected ('osm.3.proj.weight')");
}

static void test_metadata_and_config(void) {
  expect_mut(&(struct mut){.format_version = "2"}, "unsupported format_version '2'");
  expect_mut(&(struct mut){.config = "{\"width_mult\": 0.25, \"fooo\": 1, \"barr\": 2}"},
             "unknown config field(s): fooo, barr");
  expect_mut(&(struct mut){.config = "{\"padding\": \"same\"}"},
             "config field 'padding': must be 'tf_same' or 'torch'");
  expect_mut(&(struct mut){.config = "{\"osm_dim\": 10, \"osm_groups\": 4}"},
             "config field 'osm_groups': must divide osm_dim=10");
  expect_mut(&(struct mut){.config = "{\"levels\": [13, 6]}"}, "config field 'levels'");
  expect_mut(&(struct mut){.config = "{\"ref_rotations\": 3}"},
             "config field 'ref_rotations': must be 1, 2 or 4");
  expect_mut(&(struct mut){.config = "{\"ref_rotations\": 4, \"input_size\": [64, 96]}"},
             "config field 'ref_rotations': needs a square input_size");
  expect_mut(&(struct mut){.config = "[1, 2]"}, "config must be a JSON object");
  /* The dense head's fine-stage input: a multiple of its block's stride. */
  expect_mut(&(struct mut){.config = "{\"dense_head\": {\"layer\": 10, \"size\": 120}}"},
             "config field 'dense_head': size 120 is not a multiple of block 10's stride 16");
  expect_mut(&(struct mut){.config = "{\"dense_head\": {\"layer\": 10, \"size\": 8}}"},
             "config field 'dense_head': layer and fuse_layer must be 1..17, dim and hidden "
             "positive, size "
             "16..1024");
  expect_mut(&(struct mut){.config = "{\"dense_head\": {\"layer\": 10, \"sizes\": 128}}"},
             "config field 'dense_head': has a key other than layer, dim, hidden, size, "
             "fuse_layer and fuse_weight");
  /* A fused block: with its weight in (0, 1), another block whose stride is
   * a multiple of the head's, the fused input at most 1024 pixels. */
  expect_mut(&(struct mut){.config = "{\"dense_head\": {\"fuse_layer\": 10}}"},
             "config field 'dense_head': fuse_layer and fuse_weight go together");
  expect_mut(&(struct mut){.config =
                               "{\"dense_head\": {\"fuse_layer\": 10, \"fuse_weight\": 1}}"},
             "config field 'dense_head': fuse_weight must be a number strictly between 0 and 1");
  expect_mut(&(struct mut){.config =
                               "{\"dense_head\": {\"fuse_layer\": 6, \"fuse_weight\": 0.5}}"},
             "config field 'dense_head': fuse_layer 6 must be another block whose stride (8) is "
             "a multiple of block 6's (8), the fused input at most 1024 pixels (224)");
  expect_mut(&(struct mut){.config =
                               "{\"dense_head\": {\"fuse_layer\": 2, \"fuse_weight\": 0.5}}"},
             "config field 'dense_head': fuse_layer 2 must be another block whose stride (4)");
  expect_mut(&(struct mut){.config = "{\"dense_head\": {\"size\": 512, \"fuse_layer\": 17, "
                                     "\"fuse_weight\": 0.5}}"},
             "the fused input at most 1024 pixels (2048)");
  expect_mut(&(struct mut){.config = "{\"dense_head\": {\"dim\": 4090, \"fuse_layer\": 10, "
                                     "\"fuse_weight\": 0.5}}"},
             "dim 4090 and block 10's 64 channels are more than 4096 a cell");
  /* A config that differs from the tensors: the tensor-set check says so. */
  expect_mut(&(struct mut){.config = "{}"}, "tensors do not match the config");
  /* 36 million tensors implied by 66 bytes (found by fuzz_model_config):
   * refused before they are listed, at once and without gigabytes. */
  expect_mut(&(struct mut){.config = "{\"osm_dim\": 1000000, \"osm_groups\": 1000000, "
                                     "\"levels\": [6, 13, 18]}"},
             "tensors do not match the config: it needs more than");

  char err[512];
  snprintf(path, sizeof path, "/nonexistent/model.safetensors");
  struct gl_nn_model *m = NULL;
  CHECK_EQ_INT(gl_nn_model_load(path, &m, err, sizeof err), GL_ENOENT);
  CHECK(m == NULL);
}

int main(void) {
  snprintf(path, sizeof path, "test_nn_model.%ld.safetensors", (long)getpid());
  char keep[256];
  snprintf(keep, sizeof keep, "%s", path);
  RUN(test_valid_and_fold);
  RUN(test_f16_conversion);
  RUN(test_f16_model);
  RUN(test_header);
  RUN(test_trailing_and_padding);
  RUN(test_entries);
  RUN(test_metadata_and_config);
  remove(keep);
  return TEST_END();
}
