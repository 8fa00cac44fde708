/* The dense layer of map packs (dense.h): computing it while a pack is
 * built, loading and verifying it when a pack is opened, and the grid
 * geometry the fine stage needs (tile centres in the grid CRS, grid <->
 * WGS84). */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "core/err.h"
#include "map/dense.h"
#include "map/map_internal.h"

/* --- building -------------------------------------------------------------- */

/* Reads the part of canvas (origin x0, y0 in the grid CRS, p metres a
 * pixel) that lies inside source s, as tiles are read, into rgb and marks
 * valid pixels in ok; the rest stays zero and invalid. */
static int gl__read_canvas(const struct gl__map_source *s, double x0, double y0, double p,
                           uint32_t w, uint32_t h, uint8_t *rgb, uint8_t *ok, char *err,
                           size_t errlen) {
  memset(rgb, 0, (size_t)w * h * 3);
  memset(ok, 0, (size_t)w * h);
  double rx0 = s->gt[0], rx1 = s->gt[0] + s->xsize * s->gt[1];
  double ry1 = s->gt[3], ry0 = s->gt[3] + s->ysize * s->gt[5];
  const double eps = 1e-6;
  double j0 = fmax(0, ceil((rx0 - x0) / p - eps)), j1 = fmin(w, floor((rx1 - x0) / p + eps));
  double i0 = fmax(0, ceil((y0 - ry1) / p - eps)), i1 = fmin(h, floor((y0 - ry0) / p + eps));
  if (j1 <= j0 || i1 <= i0)
    return 0;
  uint32_t cw = (uint32_t)(j1 - j0), ch = (uint32_t)(i1 - i0);
  size_t at = (size_t)i0 * w + (size_t)j0;
  int rc = gl__map_source_read(s, x0 + j0 * p, y0 - i0 * p, cw * p, ch * p, cw, ch, w, rgb + at * 3,
                               ok + at, err, errlen);
  for (uint32_t i = 0; !rc && i < ch; i++)
    for (uint32_t j = 0; j < cw; j++)
      ok[at + (size_t)i * w + j] = ok[at + (size_t)i * w + j] != 0;
  return rc;
}

int gl__map_dense_write(const struct gl__map_grid *g, const struct gl__map_source *src,
                        uint32_t n_src, const struct gl_map_encoder *enc, const double ext[4],
                        const char *dir, cJSON **out, char *err, size_t errlen) {
  const uint32_t s = enc->dense_stride, C = enc->dense_channels;
  const double p = g->tile_m / enc->width, cell = p * s;
  /* Cells on multiples of the cell size, covering every tile. */
  double x0 = floor(ext[0] / cell + 1e-9) * cell, x1 = ceil(ext[2] / cell - 1e-9) * cell;
  double y0 = ceil(ext[3] / cell - 1e-9) * cell, y1 = floor(ext[1] / cell + 1e-9) * cell;
  uint32_t cols = (uint32_t)llround((x1 - x0) / cell), rows = (uint32_t)llround((y0 - y1) / cell);
  uint32_t w = cols * s, h = rows * s;
  size_t cells = (size_t)rows * cols;
  int rc = 0;
  uint8_t *rgb = malloc((size_t)w * h * 3), *ok = malloc((size_t)w * h);
  float *feat = malloc(cells * C * sizeof(float));
  int8_t *q = malloc(cells * C);
  cJSON *d = cJSON_CreateObject();
  if (!rgb || !ok || !feat || !q || !d) {
    rc = gl_fail(err, errlen, GL_ENOMEM, "out of memory for a %ux%u dense canvas", w, h);
    goto cleanup;
  }
  cJSON_AddNumberToObject(d, "layer", enc->dense_layer);
  cJSON_AddNumberToObject(d, "stride_px", s);
  cJSON_AddNumberToObject(d, "channels", C);
  cJSON_AddNumberToObject(d, "input_px", enc->width);
  cJSON_AddNumberToObject(d, "m_per_px", p);
  cJSON_AddNumberToObject(d, "cell_m", cell);
  cJSON_AddNumberToObject(d, "rows", rows);
  cJSON_AddNumberToObject(d, "cols", cols);
  cJSON *gt = cJSON_AddArrayToObject(d, "geotransform");
  const double gtv[6] = {x0, cell, 0, y0, 0, -cell};
  for (int i = 0; i < 6; i++)
    cJSON_AddItemToArray(gt, cJSON_CreateNumber(gtv[i]));
  cJSON_AddStringToObject(d, "encoding", "int8, value = round(127 * unit feature)");
  cJSON_AddNumberToObject(d, "block_px", enc->dense_block);
  cJSON_AddNumberToObject(d, "margin_px", enc->dense_margin);
  cJSON *layers = cJSON_AddArrayToObject(d, "layers");
  for (uint32_t k = 0; k < n_src; k++) {
    if ((rc = gl__read_canvas(&src[k], x0, y0, p, w, h, rgb, ok, err, errlen)))
      goto cleanup;
    struct gl_image im = {rgb, w, h};
    if ((rc = enc->features_tiled(enc->ctx, &im, feat))) {
      gl_fail(err, errlen, rc, "%s: dense features failed: %s", src[k].path, gl_strerror(rc));
      goto cleanup;
    }
    uint64_t valid = 0;
    for (size_t c = 0; c < cells; c++) {
      size_t r = c / cols, cc = c % cols;
      bool all = true;
      for (uint32_t i = 0; i < s && all; i++)
        for (uint32_t j = 0; j < s && all; j++)
          all = ok[(r * s + i) * w + cc * s + j] != 0;
      valid += all;
      for (uint32_t k2 = 0; k2 < C; k2++)
        q[c * C + k2] = all ? (int8_t)lrintf(127.0f * feat[c * C + k2]) : 0;
    }
    char name[32], *path = NULL;
    snprintf(name, sizeof name, "dense-%u.i8", k);
    if (asprintf(&path, "%s/%s", dir, name) < 0) {
      rc = gl_fail(err, errlen, GL_ENOMEM, "out of memory");
      goto cleanup;
    }
    char sha[65];
    uint64_t bytes = 0;
    rc = gl__map_write_file(path, q, cells * C);
    if (!rc)
      rc = gl__map_sha256_file(path, sha, &bytes);
    if (rc)
      gl_fail(err, errlen, rc, "%s: cannot write it", path);
    free(path);
    if (rc)
      goto cleanup;
    cJSON *l = cJSON_CreateObject();
    cJSON_AddNumberToObject(l, "source", k);
    cJSON_AddStringToObject(l, "file", name);
    cJSON_AddStringToObject(l, "sha256", sha);
    cJSON_AddNumberToObject(l, "bytes", (double)bytes);
    cJSON_AddNumberToObject(l, "valid_cells", (double)valid);
    cJSON_AddItemToArray(layers, l);
  }
  *out = d;
  d = NULL;
cleanup:
  cJSON_Delete(d);
  free(q);
  free(feat);
  free(ok);
  free(rgb);
  return rc;
}

/* --- loading --------------------------------------------------------------- */

struct gl__map_dense_ctx {
  struct gl_map_dense pub;
  float *cells;
  uint64_t n;            /* tiles */
  const double *tx, *ty; /* tile centres in the grid CRS, by id - 1 (the map's) */
  struct gl__place {
    uint64_t key;
    int64_t id;
  } * by_place; /* tiles sorted by grid place */
  double tile_m, stride_m;
  PJ_CONTEXT *pj_ctx;
  PJ *to_wgs84; /* normalised: (x, y) -> (lon, lat) */
  pthread_mutex_t mu;
};

/* The grid place of a centre: row and column as two 32-bit halves. */
static uint64_t gl__place_key(const struct gl__map_dense_ctx *d, double x, double y) {
  int64_t c = llround((x - d->tile_m / 2) / d->stride_m);
  int64_t r = llround((y - d->tile_m / 2) / d->stride_m);
  return (uint64_t)(uint32_t)r << 32 | (uint32_t)c;
}

static int gl__by_place(const void *a, const void *b) {
  uint64_t x = ((const struct gl__place *)a)->key, y = ((const struct gl__place *)b)->key;
  return (x > y) - (x < y);
}

void gl__map_dense_free(struct gl__map_dense_ctx *d) {
  if (!d)
    return;
  proj_destroy(d->to_wgs84);
  if (d->pj_ctx)
    proj_context_destroy(d->pj_ctx);
  pthread_mutex_destroy(&d->mu);
  free(d->cells);
  free(d->by_place);
  free(d);
}

static bool gl__num(const cJSON *o, const char *k, double lo, double hi, double *v) {
  const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, k);
  if (!cJSON_IsNumber(j) || !(j->valuedouble >= lo && j->valuedouble <= hi))
    return false;
  *v = j->valuedouble;
  return true;
}

int gl__map_dense_load(const char *pack, const cJSON *root, uint64_t n_tiles, const double *gx,
                       const double *gy, struct gl__map_dense_ctx **out, char *err, size_t errlen) {
  *out = NULL;
  const cJSON *dj = cJSON_GetObjectItemCaseSensitive(root, "dense");
  const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "tiling");
  if (!dj)
    return 0; /* a pack without a dense layer: no fine stage */
  int rc = 0;
  struct gl__map_dense_ctx *d = calloc(1, sizeof *d);
  if (!d)
    return gl_fail(err, errlen, GL_ENOMEM, "out of memory");
  pthread_mutex_init(&d->mu, NULL);
  d->n = n_tiles;
#define BAD(...)                                                                                   \
  do {                                                                                             \
    rc = gl_fail(err, errlen, GL_EFORMAT, __VA_ARGS__);                                            \
    goto fail;                                                                                     \
  } while (0)
  double layer, stride, ch, inpx, mpp, cell, rows, cols;
  const cJSON *gt = cJSON_GetObjectItemCaseSensitive(dj, "geotransform");
  const cJSON *layers = cJSON_GetObjectItemCaseSensitive(dj, "layers");
  const char *wkt = cJSON_IsString(cJSON_GetObjectItemCaseSensitive(t, "crs_wkt"))
                        ? cJSON_GetObjectItemCaseSensitive(t, "crs_wkt")->valuestring
                        : NULL;
  if (!gl__num(dj, "layer", 1, 17, &layer) || !gl__num(dj, "stride_px", 1, 64, &stride) ||
      !gl__num(dj, "channels", 1, 4096, &ch) || !gl__num(dj, "input_px", 1, 65535, &inpx) ||
      !gl__num(dj, "m_per_px", 1e-6, 1e6, &mpp) || !gl__num(dj, "cell_m", 1e-6, 1e7, &cell) ||
      !gl__num(dj, "rows", 1, 1 << 20, &rows) || !gl__num(dj, "cols", 1, 1 << 20, &cols) ||
      !cJSON_IsArray(gt) || cJSON_GetArraySize(gt) != 6 || !cJSON_IsArray(layers) ||
      cJSON_GetArraySize(layers) < 1 || !wkt || !gl__num(t, "tile_m", 1e-6, 1e7, &d->tile_m) ||
      !gl__num(t, "stride_m", 1e-6, 1e7, &d->stride_m))
    BAD("%s: manifest.json: dense layer description incomplete", pack);
  struct gl_map_dense *p = &d->pub;
  p->layer = (uint32_t)layer;
  p->stride_px = (uint32_t)stride;
  p->channels = (uint32_t)ch;
  p->input_px = (uint32_t)inpx;
  p->m_per_px = mpp;
  p->cell_m = cell;
  p->rows = (uint32_t)rows;
  p->cols = (uint32_t)cols;
  p->years = (uint32_t)cJSON_GetArraySize(layers);
  p->x0 = cJSON_GetArrayItem(gt, 0)->valuedouble;
  p->y0 = cJSON_GetArrayItem(gt, 3)->valuedouble;
  if (fabs(cJSON_GetArrayItem(gt, 1)->valuedouble - cell) > 1e-9 * cell ||
      fabs(cJSON_GetArrayItem(gt, 5)->valuedouble + cell) > 1e-9 * cell)
    BAD("%s: manifest.json: dense geotransform does not match cell_m", pack);
  size_t per = (size_t)p->rows * p->cols * p->channels;
  if (per > ((size_t)1 << 34) / p->years || !(d->cells = malloc(per * p->years * sizeof(float))))
    BAD("%s: dense layer of %ux%u cells x %u years is too large", pack, p->rows, p->cols, p->years);
  int8_t *q = malloc(per);
  if (!q) {
    rc = gl_fail(err, errlen, GL_ENOMEM, "out of memory");
    goto fail;
  }
  for (uint32_t y = 0; y < p->years; y++) {
    const cJSON *l = cJSON_GetArrayItem(layers, (int)y);
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(l, "file");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(l, "sha256");
    double bytes;
    if (!cJSON_IsString(f) || strchr(f->valuestring, '/') || !cJSON_IsString(sh) ||
        !gl__num(l, "bytes", 0, 1e15, &bytes) || (size_t)bytes != per) {
      free(q);
      BAD("%s: manifest.json: dense layer %u: file, sha256 and bytes (%zu) needed", pack, y, per);
    }
    char *path = NULL, sha[65];
    uint64_t got = 0;
    if (asprintf(&path, "%s/%s", pack, f->valuestring) < 0) {
      free(q);
      rc = gl_fail(err, errlen, GL_ENOMEM, "out of memory");
      goto fail;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    free(path);
    if (fd < 0) {
      free(q);
      rc = gl_fail(err, errlen, errno == ENOENT ? GL_ENOENT : GL_EIO, "%s: %s is %s", pack,
                   f->valuestring, errno == ENOENT ? "missing" : strerror(errno));
      goto fail;
    }
    /* Read, then hash what was read: the bytes used are the bytes checked. */
    ssize_t r = pread(fd, q, per, 0);
    rc = gl__map_sha256_fd(fd, sha, &got);
    close(fd);
    if (rc || r != (ssize_t)per || got != per || strcmp(sha, sh->valuestring) != 0) {
      free(q);
      BAD("%s: %s is corrupt (%zd bytes read, sha256 %s; the manifest says %zu bytes, %s)", pack,
          f->valuestring, r, rc ? "unreadable" : sha, per, sh->valuestring);
    }
    float *c = d->cells + per * y;
    for (size_t i = 0; i < per; i++)
      c[i] = q[i] * (1.0f / 127.0f);
  }
  free(q);
  p->cells = d->cells;

  /* Estimates back to WGS84 (and priors onto the grid). */
  if (!(d->pj_ctx = proj_context_create()) || !(d->to_wgs84 = gl__map_pj_to_wgs84(d->pj_ctx, wkt)))
    BAD("%s: manifest.json: PROJ cannot use the grid CRS", pack);
  if (!(d->by_place = malloc((n_tiles + 1) * sizeof *d->by_place))) {
    rc = gl_fail(err, errlen, GL_ENOMEM, "out of memory");
    goto fail;
  }
  d->tx = gx;
  d->ty = gy;
  for (uint64_t i = 0; i < n_tiles; i++)
    d->by_place[i] = (struct gl__place){gl__place_key(d, gx[i], gy[i]), (int64_t)i + 1};
  qsort(d->by_place, n_tiles, sizeof *d->by_place, gl__by_place);
#undef BAD
  *out = d;
  return 0;
fail:
  gl__map_dense_free(d);
  return rc;
}

/* --- accessors ------------------------------------------------------------- */

const struct gl_map_dense *gl_map_dense(const struct gl_map *m) {
  const struct gl__map_dense_ctx *d = gl__map_dense_of(m);
  return d ? &d->pub : NULL;
}

int gl_map_tile_xy(const struct gl_map *m, int64_t id, double *x, double *y) {
  const struct gl__map_dense_ctx *d = gl__map_dense_of(m);
  if (!d || id < 1 || (uint64_t)id > d->n)
    return GL_EINVAL;
  *x = d->tx[id - 1];
  *y = d->ty[id - 1];
  return 0;
}

int64_t gl_map_tile_near(const struct gl_map *m, double x, double y) {
  const struct gl__map_dense_ctx *d = gl__map_dense_of(m);
  if (!d || d->n == 0)
    return -1;
  uint64_t key = gl__place_key(d, x, y);
  size_t lo = 0, hi = d->n;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (d->by_place[mid].key < key)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo < d->n && d->by_place[lo].key == key ? d->by_place[lo].id : -1;
}

static int gl__trans(struct gl_map *m, PJ_DIRECTION dir, double a, double b, double *u, double *v) {
  struct gl__map_dense_ctx *d = gl__map_dense_of(m);
  if (!d)
    return GL_EINVAL;
  pthread_mutex_lock(&d->mu);
  PJ_COORD r = proj_trans(d->to_wgs84, dir, proj_coord(a, b, 0, 0));
  pthread_mutex_unlock(&d->mu);
  if (!isfinite(r.v[0]) || !isfinite(r.v[1]))
    return GL_EINTERNAL;
  *u = r.v[0];
  *v = r.v[1];
  return 0;
}

int gl_map_xy_to_wgs84(struct gl_map *m, double x, double y, double *lat, double *lon) {
  return gl__trans(m, PJ_FWD, x, y, lon, lat);
}

int gl_map_wgs84_to_xy(struct gl_map *m, double lat, double lon, double *x, double *y) {
  return gl__trans(m, PJ_INV, lon, lat, x, y);
}
