/* Parity of the C engine with the PyTorch reference.
 *
 * Usage: nn_parity VECTOR_DIR [MODEL_SHA256]
 *
 * VECTOR_DIR is what `python -m geoloc_train testvectors` wrote (format in
 * python/geoloc_train/testvectors.py). For every case (model x input) the
 * model is loaded through gl_nn_model_load, the stored pixels are encoded,
 * and the descriptor must reach the index's cosine threshold (0.9999). Every
 * stored intermediate is compared as well, through the engine's trace hook
 * (same cosine, and a relative max error, TAP_REL_MAX), so that a failure
 * names the first op that diverges. Finally all inputs
 * are encoded in one batch (mixed sizes, several passes) and must give the
 * same descriptors as one at a time. Exit status 0 when everything passed. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/err.h"
#include "nn/graph.h"
#include "nn/nn.h"

#define MAX_INPUTS 8
#define MAX_TAPS 64
/* Intermediates must also keep their largest error within this fraction of
 * their largest value: cosine alone misses a wrong clamp on a few values
 * (relu6 clipping at 5 still gives cosine 0.99997 on feature 0). Correct
 * runs stay below 1.5e-3 (the overlap maps, a sigmoid of sums over d). */
#define TAP_REL_MAX 1e-2

struct tap {
  const char *name;
  float *ref; /* NCHW (or a vector) */
  size_t count;
  uint32_t c, h, w;
  bool seen;
  double cos, maxdiff, refmax;
};

struct run {
  struct tap taps[MAX_TAPS];
  size_t n_taps;
};

static const char *dir;
static int failures;

static void *read_file(const char *rel, size_t *len) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", dir, rel);
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "cannot open %s\n", path);
    return NULL;
  }
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *p = malloc((size_t)n + 1);
  if (p && fread(p, 1, (size_t)n, f) != (size_t)n) {
    free(p);
    p = NULL;
  }
  if (p)
    p[n] = 0;
  fclose(f);
  *len = (size_t)n;
  return p;
}

static void compare(const float *ref, size_t n, const float *got_nchw, double *cos, double *maxdiff,
                    double *refmax) {
  double dot = 0, a2 = 0, b2 = 0, md = 0, rm = 0;
  for (size_t i = 0; i < n; i++) {
    double a = ref[i], b = got_nchw[i];
    dot += a * b;
    a2 += a * a;
    b2 += b * b;
    md = fmax(md, fabs(a - b));
    rm = fmax(rm, fabs(a));
  }
  /* Two all-zero tensors are equal; cosine is undefined there. */
  *cos = a2 == 0 && b2 == 0 ? 1.0 : dot / (sqrt(a2) * sqrt(b2) + 1e-300);
  *maxdiff = md;
  *refmax = rm;
}

static void on_trace(void *ud, const char *name, uint32_t image, const float *data, uint32_t h,
                     uint32_t w, uint32_t c, size_t pixel_stride) {
  struct run *r = ud;
  if (image != 0)
    return;
  for (size_t k = 0; k < r->n_taps; k++) {
    struct tap *t = &r->taps[k];
    if (strcmp(t->name, name) != 0)
      continue;
    t->seen = true;
    if ((size_t)h * w * c != t->count || t->c != c) {
      fprintf(stderr, "  tap %s: shape %ux%ux%u, reference has %zu values (c=%u)\n", name, c, h, w,
              t->count, t->c);
      t->cos = 0;
      return;
    }
    /* NHWC (rows pixel_stride apart) -> NCHW for the comparison. */
    float *nchw = malloc(t->count * sizeof *nchw);
    if (!nchw)
      abort();
    for (uint32_t ch = 0; ch < c; ch++)
      for (size_t p = 0; p < (size_t)h * w; p++)
        nchw[ch * (size_t)h * w + p] = data[p * pixel_stride + ch];
    compare(t->ref, t->count, nchw, &t->cos, &t->maxdiff, &t->refmax);
    free(nchw);
  }
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

struct input {
  const char *key;
  struct gl_image img;
};

static int run_model(const char *mname, const cJSON *model, const cJSON *cases,
                     struct input *inputs, int n_inputs, double cos_min, const char *sha) {
  char err[512] = "", path[1024];
  struct gl_nn_model *m = NULL;
  struct gl_nn_engine *e1 = NULL, *eb = NULL;
  float *single = NULL, *batched = NULL;
  int rc;
  snprintf(path, sizeof path, "%s/%s", dir,
           cJSON_GetObjectItemCaseSensitive(model, "file")->valuestring);
  if ((rc = gl_nn_model_load(path, &m, err, sizeof err))) {
    fprintf(stderr, "%s: load failed: %s: %s\n", mname, gl_err_name(rc), err);
    failures++;
    return 1;
  }
  if (sha && strcmp(sha, gl_nn_model_sha256(m)) != 0) {
    fprintf(stderr, "%s: sha256 %s, sha256sum says %s\n", mname, gl_nn_model_sha256(m), sha);
    failures++;
  }
  uint32_t dim = gl_nn_model_descriptor_dim(m);
  uint64_t max_pixels = 0;
  for (int i = 0; i < n_inputs; i++) {
    uint64_t px = (uint64_t)inputs[i].img.width * inputs[i].img.height;
    max_pixels = px > max_pixels ? px : max_pixels;
  }
  struct gl_nn_engine_opts o1 = {
      .backend = GL_NN_BACKEND_CPU, .max_batch = 1, .max_input_pixels = max_pixels};
  struct gl_nn_engine_opts ob = o1;
  ob.max_batch = (uint32_t)n_inputs;
  if ((rc = gl_nn_engine_create(m, &o1, &e1, err, sizeof err)) ||
      (rc = gl_nn_engine_create(m, &ob, &eb, err, sizeof err))) {
    fprintf(stderr, "%s: engine failed: %s: %s\n", mname, gl_err_name(rc), err);
    failures++;
    goto out;
  }
  single = calloc((size_t)n_inputs * dim, sizeof *single);
  batched = calloc((size_t)n_inputs * dim, sizeof *batched);
  if (!single || !batched)
    abort();
  printf("model %s: %llu parameters, sha256 %.16s..., backend %s\n", mname,
         (unsigned long long)gl_nn_model_param_count(m), gl_nn_model_sha256(m),
         gl_nn_engine_backend_name(e1));

  const cJSON *cs;
  cJSON_ArrayForEach(cs, cases) {
    if (strcmp(cJSON_GetObjectItemCaseSensitive(cs, "model")->valuestring, mname) != 0)
      continue;
    const char *ikey = cJSON_GetObjectItemCaseSensitive(cs, "input")->valuestring;
    int ii = 0;
    while (ii < n_inputs && strcmp(inputs[ii].key, ikey) != 0)
      ii++;
    if (ii == n_inputs) {
      fprintf(stderr, "case %s/%s: unknown input\n", mname, ikey);
      failures++;
      continue;
    }
    struct run r = {0};
    size_t len;
    const cJSON *im;
    cJSON_ArrayForEach(im, cJSON_GetObjectItemCaseSensitive(cs, "intermediates")) {
      if (r.n_taps == MAX_TAPS)
        break;
      struct tap *t = &r.taps[r.n_taps++];
      t->name = cJSON_GetObjectItemCaseSensitive(im, "name")->valuestring;
      t->ref = read_file(cJSON_GetObjectItemCaseSensitive(im, "file")->valuestring, &len);
      if (!t->ref)
        abort();
      t->count = len / sizeof(float);
      const cJSON *shape = cJSON_GetObjectItemCaseSensitive(im, "shape");
      /* [1, C, H, W] or [1, C] */
      t->c = (uint32_t)cJSON_GetArrayItem(shape, 1)->valuedouble;
    }
    const cJSON *dj = cJSON_GetObjectItemCaseSensitive(cs, "descriptor");
    float *ref = read_file(cJSON_GetObjectItemCaseSensitive(dj, "file")->valuestring, &len);
    if (!ref || len != dim * sizeof(float)) {
      fprintf(stderr, "case %s/%s: bad descriptor file\n", mname, ikey);
      abort();
    }

    gl__nn_engine_set_trace(e1, on_trace, &r);
    double t0 = now_s();
    rc = gl_nn_engine_encode(e1, &inputs[ii].img, 1, single + (size_t)ii * dim);
    double dt = now_s() - t0;
    gl__nn_engine_set_trace(e1, NULL, NULL);
    double cos = 0, md = 0, rm = 0;
    if (rc == 0)
      compare(ref, dim, single + (size_t)ii * dim, &cos, &md, &rm);
    bool ok = rc == 0 && cos >= cos_min;
    printf("PARITY %-12s %-9s descriptor cosine %.8f  max|diff| %.3g  %s  (traced run %.0f ms)\n",
           mname, ikey, cos, md, ok ? "ok" : "FAIL", dt * 1e3);
    if (!ok) {
      failures++;
      if (rc)
        printf("  encode returned %s\n", gl_err_name(rc));
    }
    bool first_bad = true;
    for (size_t k = 0; k < r.n_taps; k++) {
      struct tap *t = &r.taps[k];
      bool tok = t->seen && t->cos >= cos_min && t->maxdiff <= TAP_REL_MAX * t->refmax;
      printf("  %-28s cosine %.8f  max|diff| %.3g  (max|ref| %.3g)%s\n", t->name, t->cos,
             t->maxdiff, t->refmax,
             !t->seen    ? "  NOT TRACED"
             : tok       ? ""
             : first_bad ? "  <- first divergence"
                         : "  FAIL");
      if (!tok) {
        failures++;
        first_bad = false;
      }
      free(t->ref);
    }
    free(ref);
  }

  /* All inputs in one call: passes of the planned batch sizes, mixed sizes. */
  struct gl_image imgs[MAX_INPUTS];
  for (int i = 0; i < n_inputs; i++)
    imgs[i] = inputs[i].img;
  rc = gl_nn_engine_encode(eb, imgs, (uint32_t)n_inputs, batched);
  double worst = 1, worst_md = 0;
  for (int i = 0; rc == 0 && i < n_inputs; i++) {
    double cos, md, rm;
    compare(single + (size_t)i * dim, dim, batched + (size_t)i * dim, &cos, &md, &rm);
    worst = fmin(worst, cos);
    worst_md = fmax(worst_md, md);
  }
  bool bok = rc == 0 && worst >= 0.999999;
  printf(
      "BATCH  %-12s %d images in one call vs one at a time: min cosine %.8f  max|diff| %.3g  %s\n",
      mname, n_inputs, worst, worst_md, bok ? "ok" : "FAIL");
  if (!bok)
    failures++;
out:
  free(single);
  free(batched);
  gl_nn_engine_destroy(e1);
  gl_nn_engine_destroy(eb);
  gl_nn_model_destroy(m);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s VECTOR_DIR [MODEL_SHA256]\n", argv[0]);
    return 2;
  }
  dir = argv[1];
  const char *sha = argc > 2 ? argv[2] : NULL;
  size_t len;
  char *text = read_file("index.json", &len);
  cJSON *index = text ? cJSON_Parse(text) : NULL;
  if (!index) {
    fprintf(stderr, "%s/index.json: missing or not JSON\n", dir);
    return 1;
  }
  const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(index, "format");
  if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, "geoloc-testvectors") != 0) {
    fprintf(stderr, "index.json: not geoloc-testvectors\n");
    return 1;
  }
  double cos_min = cJSON_GetObjectItemCaseSensitive(index, "descriptor_cosine_min")->valuedouble;

  struct input inputs[MAX_INPUTS];
  int n_inputs = 0;
  const cJSON *in;
  cJSON_ArrayForEach(in, cJSON_GetObjectItemCaseSensitive(index, "inputs")) {
    if (n_inputs == MAX_INPUTS)
      break;
    struct input *x = &inputs[n_inputs++];
    x->key = in->string;
    x->img.width = (uint32_t)cJSON_GetObjectItemCaseSensitive(in, "width")->valuedouble;
    x->img.height = (uint32_t)cJSON_GetObjectItemCaseSensitive(in, "height")->valuedouble;
    x->img.rgb = read_file(cJSON_GetObjectItemCaseSensitive(in, "file")->valuestring, &len);
    if (!x->img.rgb || len != (size_t)x->img.width * x->img.height * 3) {
      fprintf(stderr, "input %s: bad pixel file\n", x->key);
      return 1;
    }
  }

  const cJSON *cases = cJSON_GetObjectItemCaseSensitive(index, "cases");
  const cJSON *model;
  cJSON_ArrayForEach(model, cJSON_GetObjectItemCaseSensitive(index, "models"))
      run_model(model->string, model, cases, inputs, n_inputs, cos_min, sha);

  for (int i = 0; i < n_inputs; i++)
    free(inputs[i].img.rgb);
  cJSON_Delete(index);
  free(text);
  printf("%s: %d failure(s)\n", failures ? "FAIL" : "PASS", failures);
  return failures ? 1 : 0;
}
