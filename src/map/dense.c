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
#include <sys/stat.h>
#include <unistd.h>


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
                        const char *dir, struct gl__manifest_dense *d, char *err, size_t errlen) {
  const uint32_t s = enc->dense_stride, C = enc->dense_channels;
  const uint32_t size = enc->dense_size ? enc->dense_size : enc->width;
  const double p = g->tile_m / size, cell = p * s;
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
  *d = (struct gl__manifest_dense){
      .layer = enc->dense_layer,
      .stride_px = s,
      .channels = C,
      .input_px = size,
      .m_per_px = p,
      .cell_m = cell,
      .rows = rows,
      .cols = cols,
      .geotransform = {x0, cell, 0, y0, 0, -cell},
      .encoding = "int8, value = round(127 * unit feature)",
      .block_px = enc->dense_block,
      .margin_px = enc->dense_margin,
      .layers = calloc(n_src ? n_src : 1, sizeof *d->layers),
  };
  if (!rgb || !ok || !feat || !q || !d->layers) {
    rc = gl_fail(err, errlen, GL_ENOMEM, "out of memory for a %ux%u dense canvas", w, h);
    goto cleanup;
  }
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
    if (rc)
      gl_fail(err, errlen, rc, "%s: cannot write it: %s", path, strerror(errno));
    else if ((rc = gl__map_sha256_file(path, sha, &bytes)))
      gl_fail(err, errlen, rc, "%s: cannot read it back", path);
    free(path);
    if (rc)
      goto cleanup;
    struct gl__manifest_layer *l = &d->layers[d->n_layers++];
    l->source = k;
    snprintf(l->file, sizeof l->file, "%s", name);
    memcpy(l->sha256, sha, sizeof sha);
    l->bytes = bytes;
    l->valid_cells = valid;
  }
cleanup:
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

int gl__map_dense_load(const char *pack, const struct gl__manifest *mf, uint64_t n_tiles,
                       const double *gx, const double *gy, struct gl__map_dense_ctx **out,
                       char *err, size_t errlen) {
  *out = NULL;
  if (!mf->has_dense)
    return 0; /* a pack without a dense layer: no fine stage */
  const struct gl__manifest_dense *dn = &mf->dense;
  if (!mf->tiling.crs_wkt)
    return gl_fail(err, errlen, GL_EFORMAT, "%s: manifest.json: tiling.crs_wkt is missing", pack);
  int rc = 0;
  struct gl__map_dense_ctx *d = calloc(1, sizeof *d);
  if (!d)
    return gl_fail(err, errlen, GL_ENOMEM, "out of memory");
  pthread_mutex_init(&d->mu, NULL);
  d->n = n_tiles;
  d->tile_m = mf->tiling.tile_m;
  d->stride_m = mf->tiling.stride_m;
#define BAD(...)                                                                                   \
  do {                                                                                             \
    rc = gl_fail(err, errlen, GL_EFORMAT, __VA_ARGS__);                                            \
    goto fail;                                                                                     \
  } while (0)
  struct gl_map_dense *p = &d->pub;
  p->layer = dn->layer;
  p->stride_px = dn->stride_px;
  p->channels = dn->channels;
  p->input_px = dn->input_px;
  p->m_per_px = dn->m_per_px;
  p->cell_m = dn->cell_m;
  p->rows = dn->rows;
  p->cols = dn->cols;
  p->years = dn->n_layers;
  p->x0 = dn->geotransform[0];
  p->y0 = dn->geotransform[3];
  size_t per = (size_t)p->rows * p->cols * p->channels;
  if (per > ((size_t)1 << 34) / p->years)
    BAD("%s: dense layer of %ux%u cells x %u years is too large", pack, p->rows, p->cols, p->years);
  /* Every layer's size before the cells are allocated: rows, cols and
   * channels are only numbers in the manifest, and a few bytes of it could
   * otherwise ask for gigabytes (found by fuzz_pack); the files on disk
   * bound the allocation to 4 bytes a byte of them. */
  for (uint32_t y = 0; y < p->years; y++) {
    const struct gl__manifest_layer *l = &dn->layers[y];
    if (l->bytes != per)
      BAD("%s: manifest.json: dense layer %u is %llu bytes; %u x %u cells of %u channels are "
          "%zu",
          pack, y, (unsigned long long)l->bytes, p->rows, p->cols, p->channels, per);
    char *path = NULL;
    struct stat st;
    if (asprintf(&path, "%s/%s", pack, l->file) < 0) {
      rc = gl_fail(err, errlen, GL_ENOMEM, "out of memory");
      goto fail;
    }
    int sr = stat(path, &st);
    free(path);
    if (sr != 0) {
      rc = gl_fail(err, errlen, errno == ENOENT ? GL_ENOENT : GL_EIO, "%s: %s is %s", pack, l->file,
                   errno == ENOENT ? "missing" : strerror(errno));
      goto fail;
    }
    if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size != per)
      BAD("%s: %s is corrupt (%lld bytes; the manifest says %zu)", pack, l->file,
          (long long)st.st_size, per);
  }
  if (!(d->cells = malloc(per * p->years * sizeof(float)))) {
    rc = gl_fail(err, errlen, GL_ENOMEM, "out of memory for the dense layer");
    goto fail;
  }
  int8_t *q = malloc(per);
  if (!q) {
    rc = gl_fail(err, errlen, GL_ENOMEM, "out of memory");
    goto fail;
  }
  for (uint32_t y = 0; y < p->years; y++) {
    const struct gl__manifest_layer *l = &dn->layers[y];
    char *path = NULL, sha[65];
    uint64_t got = 0;
    if (asprintf(&path, "%s/%s", pack, l->file) < 0) {
      free(q);
      rc = gl_fail(err, errlen, GL_ENOMEM, "out of memory");
      goto fail;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    free(path);
    if (fd < 0) {
      free(q);
      rc = gl_fail(err, errlen, errno == ENOENT ? GL_ENOENT : GL_EIO, "%s: %s is %s", pack,
                   l->file, errno == ENOENT ? "missing" : strerror(errno));
      goto fail;
    }
    /* Read, then hash what was read: the bytes used are the bytes checked. */
    ssize_t r = pread(fd, q, per, 0);
    rc = gl__map_sha256_fd(fd, sha, &got);
    close(fd);
    if (rc || r != (ssize_t)per || got != per || strcmp(sha, l->sha256) != 0) {
      free(q);
      BAD("%s: %s is corrupt (%zd bytes read, sha256 %s; the manifest says %zu bytes, %s)", pack,
          l->file, r, rc ? "unreadable" : sha, per, l->sha256);
    }
    float *c = d->cells + per * y;
    for (size_t i = 0; i < per; i++)
      c[i] = q[i] * (1.0f / 127.0f);
  }
  free(q);
  p->cells = d->cells;

  /* Estimates back to WGS84 (and priors onto the grid). */
  if (!(d->pj_ctx = proj_context_create()) || !(d->to_wgs84 = gl__map_pj_to_wgs84(d->pj_ctx, mf->tiling.crs_wkt)))
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
