/* Opening, verifying, searching and inspecting map packs. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cblas.h>
#include <faiss/c_api/IndexIVF_c.h>
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/MetaIndexes_c.h>
#include <faiss/c_api/error_c.h>
#include <faiss/c_api/index_io_c.h>

#include "core/err.h"
#include "map/dense.h"
#include "map/map.h"
#include "map/map_internal.h"

/* Largest k a search accepts: beyond it a caller wants a scan, not top-k. */
#define GL__MAX_K 4096u

/* Tiles the exact search of a Flat map scores at a time: the block's
 * descriptors (256 KiB at 256 floats) stay in cache for every query of the
 * call, and so do their scores while the top-k lists take them. */
#define GL__FLAT_BLOCK 256u
/* From this many queries on, a block is scored with one sgemm; below it,
 * with one sgemv per query. OpenBLAS copies the block into its own layout
 * for every sgemm, which a few queries do not repay (on 2 cores, 560 tiles
 * of 512 floats: 0.10 ms a query for sgemm of 1 query, 0.02 for sgemv;
 * 0.014 for sgemm of 8; 100000 tiles: 28, 13 and 3.8 ms). */
#define GL__FLAT_GEMM_MIN 8u

struct gl_map {
  atomic_int refs;
  char *path;
  char model_sha256[65];
  char index_type[512];
  uint32_t dim;
  uint64_t n;        /* tiles */
  uint32_t rot;      /* headings each source is encoded at */
  uint32_t years;    /* sources whose descriptors each tile holds */
  uint32_t per_tile; /* descriptors per tile: rot * years; n * per_tile vectors */
  double tile_m, stride_m;
  FaissIndex *index; /* the IndexIDMap, owned; NULL for a Flat index */
  FaissIndex *sub;   /* its inner index (position = vector id - 1) */
  /* A Flat index's descriptors, row (id - 1) * per_tile + y * rot + r for
   * tile id, source y, heading r (row = vector id - 1), read out of FAISS
   * at open (whose copy is then freed): the exact search is a matrix
   * product of the queries with these rows, one BLAS call for a whole
   * batch, where FAISS 1.7.3 scores one query at a time with scalar loops
   * below 20 queries. NULL for other index types, which FAISS searches. */
  float *xb;
  bool can_reconstruct;
  double *lat, *lon; /* tile centres by id - 1 */
  double *gx, *gy;   /* the same in the grid CRS (tiles.sqlite grid_x, grid_y) */
  struct gl__tiles tiles;
  /* One sqlite connection serves all threads: its statements are reused
   * under this lock (R*Tree lookups take microseconds). */
  pthread_mutex_t db_lock;
  struct gl__map_dense_ctx *dense; /* the fine stage's layer, or NULL */
};

struct gl__map_dense_ctx *gl__map_dense_of(const struct gl_map *m) { return m->dense; }

/* Hashes the open file fd and compares with the manifest. */
static int gl__verify_fd(const char *pack, const char *name, int fd, const char *want_sha,
                         uint64_t want_bytes, char *err, size_t errlen) {
  char sha[65];
  uint64_t bytes;
  int rc = gl__map_sha256_fd(fd, sha, &bytes);
  if (rc)
    return gl_fail(err, errlen, rc, "%s: cannot read %s", pack, name);
  if (bytes != want_bytes)
    return gl_fail(err, errlen, GL_EFORMAT,
                        "%s: %s is corrupt: %llu bytes, the manifest says %llu", pack, name,
                        (unsigned long long)bytes, (unsigned long long)want_bytes);
  if (strcmp(sha, want_sha) != 0)
    return gl_fail(err, errlen, GL_EFORMAT,
                        "%s: %s is corrupt: sha256 %s, the manifest says %s", pack, name, sha,
                        want_sha);
  return 0;
}

static int gl__open_verified(const char *pack, const char *name, const char *sha, uint64_t bytes,
                             int *fd_out, char *err, size_t errlen) {
  char *p = NULL;
  if (asprintf(&p, "%s/%s", pack, name) < 0)
    return gl_fail(err, errlen, GL_ENOMEM, "out of memory");
  int fd = open(p, O_RDONLY | O_CLOEXEC);
  free(p);
  if (fd < 0)
    return gl_fail(err, errlen, errno == ENOENT ? GL_ENOENT : GL_EIO, "%s: %s is %s", pack,
                        name, errno == ENOENT ? "missing" : strerror(errno));
  int rc = gl__verify_fd(pack, name, fd, sha, bytes, err, errlen);
  if (rc) {
    close(fd);
    return rc;
  }
  *fd_out = fd;
  return 0;
}

static int gl__faiss_fail(char *err, size_t errlen, const char *pack, const char *what) {
  const char *m = faiss_get_last_error();
  return gl_fail(err, errlen, GL_EFORMAT, "%s: index.faiss: %s: %s", pack, what,
                      m ? m : "unknown FAISS error");
}

/* Moves a Flat index's descriptors out of FAISS into map->xb and frees
 * the index: a Flat index is the plain matrix of descriptors (reconstruct
 * copies its rows as stored), so the map keeps one copy, not two. */
static int gl__flat_take(struct gl_map *map, char *err, size_t errlen) {
  size_t dim = map->dim;
  uint64_t nv = map->n * map->per_tile;
  if (nv > SIZE_MAX / sizeof(float) / dim || !(map->xb = malloc((size_t)nv * dim * sizeof(float))))
    return gl_fail(err, errlen, GL_ENOMEM, "%s: out of memory for %llu descriptors", map->path,
                   (unsigned long long)nv);
  for (uint64_t i = 0; i < nv; i++)
    if (faiss_Index_reconstruct(map->sub, (idx_t)i, map->xb + i * dim) != 0)
      return gl__faiss_fail(err, errlen, map->path, "reading the Flat index's vectors");
  faiss_Index_free(map->index);
  map->index = map->sub = NULL;
  return 0;
}

static int gl__load_index(struct gl_map *map, const struct gl__manifest *mf, char *err,
                          size_t errlen) {
  int fd = -1, rc;
  if ((rc = gl__open_verified(map->path, GL__MAP_INDEX, mf->files[1].sha256, mf->files[1].bytes, &fd,
                              err, errlen)))
    return rc;
  /* Parsed from the same open file that was just hashed, so the bytes
   * FAISS reads are the bytes that were verified. */
  FILE *f = NULL;
  if (lseek(fd, 0, SEEK_SET) != 0 || !(f = fdopen(fd, "rb"))) {
    close(fd);
    return gl_fail(err, errlen, GL_EIO, "%s: index.faiss: %s", map->path, strerror(errno));
  }
  if (faiss_read_index(f, 0, &map->index) != 0) {
    fclose(f);
    return gl__faiss_fail(err, errlen, map->path, "cannot read it");
  }
  fclose(f);
  FaissIndexIDMap *idmap = faiss_IndexIDMap_cast(map->index);
  if (!idmap)
    return gl_fail(err, errlen, GL_EFORMAT, "%s: index.faiss is not an IndexIDMap",
                        map->path);
  uint64_t nv = mf->counts.tiles * mf->tiling.rotations * mf->tiling.years;
  if (faiss_Index_d(map->index) != (int)mf->descriptor_dim ||
      (uint64_t)faiss_Index_ntotal(map->index) != nv ||
      faiss_Index_metric_type(map->index) != METRIC_INNER_PRODUCT)
    return gl_fail(err, errlen, GL_EFORMAT,
                        "%s: index.faiss holds %lld vectors of %d floats (metric %d); the manifest "
                        "says %llu of %u, inner product",
                        map->path, (long long)faiss_Index_ntotal(map->index),
                        faiss_Index_d(map->index), (int)faiss_Index_metric_type(map->index),
                        (unsigned long long)nv, mf->descriptor_dim);
  idx_t *ids;
  size_t nids;
  faiss_IndexIDMap_id_map(idmap, &ids, &nids);
  if (nids != nv)
    return gl_fail(err, errlen, GL_EFORMAT,
                   "%s: index.faiss maps %zu ids for %llu tiles x %u headings x %u years",
                   map->path, nids, (unsigned long long)mf->counts.tiles, mf->tiling.rotations, mf->tiling.years);
  /* Ids are vector ids 1..n * per_tile in insertion order, so the inner
   * index position of vector id is id - 1 and its tile
   * (id - 1) / per_tile + 1: the searches rely on it. */
  for (size_t i = 0; i < nids; i++)
    if (ids[i] != (idx_t)(i + 1))
      return gl_fail(err, errlen, GL_EFORMAT,
                          "%s: index.faiss: position %zu holds id %lld, expected %zu", map->path, i,
                          (long long)ids[i], i + 1);
  map->sub = faiss_IndexIDMap_sub_index(idmap);
  FaissIndexIVF *ivf = faiss_IndexIVF_cast(map->sub);
  if (ivf) {
    if (mf->index_nprobe)
      faiss_IndexIVF_set_nprobe(ivf, mf->index_nprobe);
    /* IVF indexes reconstruct by id only through a direct map (8 bytes a
     * vector); the prior search needs it. */
    if (faiss_IndexIVF_make_direct_map(ivf, 1) != 0)
      return gl__faiss_fail(err, errlen, map->path, "direct map");
  }
  float *probe = malloc(mf->descriptor_dim * sizeof(float));
  if (!probe)
    return gl_fail(err, errlen, GL_ENOMEM, "out of memory");
  map->can_reconstruct = mf->counts.tiles == 0 || faiss_Index_reconstruct(map->sub, 0, probe) == 0;
  free(probe);
  if (strcmp(mf->index_type, "Flat") == 0 && mf->counts.tiles > 0)
    return gl__flat_take(map, err, errlen);
  return 0;
}

static int gl__load_tiles(struct gl_map *map, const struct gl__manifest *mf, char *err,
                          size_t errlen) {
  int fd = -1, rc;
  if ((rc = gl__open_verified(map->path, GL__MAP_TILES, mf->files[0].sha256, mf->files[0].bytes,
                              &fd, err, errlen)))
    return rc;
  close(fd);
  char *p = NULL;
  if (asprintf(&p, "%s/" GL__MAP_TILES, map->path) < 0)
    return gl_fail(err, errlen, GL_ENOMEM, "out of memory");
  rc = gl__tiles_open(&map->tiles, p, err, errlen);
  free(p);
  /* The table's row count before the centres are allocated: counts.tiles
   * is only a number in the manifest, and a few bytes of it could
   * otherwise ask for terabytes (found by fuzz_pack). */
  uint64_t rows = 0;
  if (!rc)
    rc = gl__tiles_count(&map->tiles, &rows, err, errlen);
  if (!rc && rows != mf->counts.tiles)
    rc = gl_fail(err, errlen, GL_EFORMAT, "tiles.sqlite holds %llu tiles, the manifest says %llu",
                 (unsigned long long)rows, (unsigned long long)mf->counts.tiles);
  if (rc) {
    gl_err_prefix(err, errlen, map->path);
    return rc;
  }
  uint64_t n = rows ? rows : 1;
  if (!(map->lat = malloc(n * sizeof(double))) || !(map->lon = malloc(n * sizeof(double))) ||
      !(map->gx = malloc(n * sizeof(double))) || !(map->gy = malloc(n * sizeof(double))))
    return gl_fail(err, errlen, GL_ENOMEM, "out of memory");
  rc = gl__tiles_centres(&map->tiles, rows, map->lat, map->lon, map->gx, map->gy, err, errlen);
  if (rc)
    gl_err_prefix(err, errlen, map->path);
  return rc;
}

static void gl__map_free(struct gl_map *m) {
  if (!m)
    return;
  gl__tiles_close(&m->tiles);
  if (m->index)
    faiss_Index_free(m->index);
  free(m->xb);
  gl__map_dense_free(m->dense);
  pthread_mutex_destroy(&m->db_lock);
  free(m->lat);
  free(m->gx);
  free(m->gy);
  free(m->lon);
  free(m->path);
  free(m);
}

int gl_map_open(const char *path, const char *model_sha256, struct gl_map **out, char *err,
                size_t errlen) {
  if (!path || !out)
    return gl_fail(err, errlen, GL_EINVAL, "gl_map_open: NULL argument");
  *out = NULL;
  struct gl__manifest mf;
  int rc = gl__manifest_read(path, &mf, err, errlen);
  if (rc)
    return rc;
  struct gl_map *m = calloc(1, sizeof *m);
  if (!m || !(m->path = strdup(path))) {
    free(m);
    gl__manifest_free(&mf);
    return gl_fail(err, errlen, GL_ENOMEM, "out of memory");
  }
  atomic_init(&m->refs, 1);
  pthread_mutex_init(&m->db_lock, NULL);
  snprintf(m->model_sha256, sizeof m->model_sha256, "%s", mf.model_sha256);
  snprintf(m->index_type, sizeof m->index_type, "%s", mf.index_type);
  m->dim = mf.descriptor_dim;
  m->n = mf.counts.tiles;
  m->rot = mf.tiling.rotations;
  m->years = mf.tiling.years;
  m->per_tile = mf.tiling.rotations * mf.tiling.years;
  m->tile_m = mf.tiling.tile_m;
  m->stride_m = mf.tiling.stride_m;
  /* The model first: it is the cheapest check and the likeliest mistake. */
  if (model_sha256 && strcmp(model_sha256, mf.model_sha256) != 0) {
    rc = gl_fail(err, errlen, GL_EINVAL,
                      "%s was built with another model: the pack's model sha256 is %s, the "
                      "loaded model's is %s",
                      path, mf.model_sha256, model_sha256);
    goto fail;
  }
  if ((rc = gl__load_tiles(m, &mf, err, errlen)) || (rc = gl__load_index(m, &mf, err, errlen)) ||
      (rc = gl__map_dense_load(path, &mf, m->n, m->gx, m->gy, &m->dense, err, errlen)))
    goto fail;
  gl__manifest_free(&mf);
  *out = m;
  return 0;
fail:
  gl__manifest_free(&mf);
  gl__map_free(m);
  return rc;
}

struct gl_map *gl_map_ref(struct gl_map *m) {
  if (m)
    atomic_fetch_add_explicit(&m->refs, 1, memory_order_relaxed);
  return m;
}

void gl_map_close(struct gl_map *m) {
  if (m && atomic_fetch_sub_explicit(&m->refs, 1, memory_order_acq_rel) == 1)
    gl__map_free(m);
}

uint64_t gl_map_tile_count(const struct gl_map *m) { return m->n; }
uint32_t gl_map_descriptor_dim(const struct gl_map *m) { return m->dim; }
const char *gl_map_model_sha256(const struct gl_map *m) { return m->model_sha256; }
const char *gl_map_index_type(const struct gl_map *m) { return m->index_type; }
double gl_map_tile_m(const struct gl_map *m) { return m->tile_m; }
double gl_map_stride_m(const struct gl_map *m) { return m->stride_m; }
uint32_t gl_map_rotations(const struct gl_map *m) { return m->rot; }
uint32_t gl_map_years(const struct gl_map *m) { return m->years; }

int gl_map_tile_xy(const struct gl_map *m, int64_t id, double *x, double *y) {
  if (!m || id < 1 || (uint64_t)id > m->n)
    return GL_EINVAL;
  *x = m->gx[id - 1];
  *y = m->gy[id - 1];
  return 0;
}

int gl_map_tile_get(struct gl_map *m, int64_t id, struct gl_map_tile *out) {
  if (!m || !out || id < 1 || (uint64_t)id > m->n)
    return GL_EINVAL;
  memset(out, 0, sizeof *out);
  pthread_mutex_lock(&m->db_lock);
  int rc = gl__tiles_get(&m->tiles, id, out);
  pthread_mutex_unlock(&m->db_lock);
  return rc;
}

/* --- search -------------------------------------------------------------------- */

struct gl__cand {
  int64_t id;
  float score;
};

static int gl__cand_by_id(const void *a, const void *b) {
  int64_t x = ((const struct gl__cand *)a)->id, y = ((const struct gl__cand *)b)->id;
  return (x > y) - (x < y);
}

/* Best first; equal scores by id, so results are deterministic. */
static int gl__cand_by_score(const void *a, const void *b) {
  const struct gl__cand *x = a, *y = b;
  if (x->score != y->score)
    return x->score < y->score ? 1 : -1;
  return (x->id > y->id) - (x->id < y->id);
}

struct gl__cands {
  struct gl__cand *c;
  size_t n, cap;
};

static int gl__cand_add(void *ctx, int64_t id) {
  struct gl__cands *l = ctx;
  if (l->n == l->cap) {
    size_t nc = l->cap ? l->cap * 2 : 256;
    struct gl__cand *t = realloc(l->c, nc * sizeof *t);
    if (!t)
      return GL_ENOMEM;
    l->c = t;
    l->cap = nc;
  }
  l->c[l->n++].id = id;
  return 0;
}

/* Tile ids whose bounds meet the circle's boxes (R*Tree), deduplicated. */
static int gl__rtree_candidates(struct gl_map *m, const struct gl_map_prior *p,
                                struct gl__cand **out, size_t *n_out, char *err, size_t errlen) {
  double box[2][4];
  int nb = gl__map_circle_boxes(p->lat, p->lon, p->radius_m, box);
  struct gl__cands l = {0};
  int rc = 0;
  pthread_mutex_lock(&m->db_lock);
  for (int b = 0; b < nb && !rc; b++)
    rc = gl__tiles_box(&m->tiles, box[b], gl__cand_add, &l, err, errlen);
  pthread_mutex_unlock(&m->db_lock);
  if (rc == GL_ENOMEM)
    gl_fail(err, errlen, rc, "out of memory");
  else if (rc)
    gl_err_prefix(err, errlen, m->path);
  if (rc) {
    free(l.c);
    return rc;
  }
  struct gl__cand *c = l.c;
  size_t n = l.n;
  if (nb > 1 && n > 1) {
    qsort(c, n, sizeof *c, gl__cand_by_id);
    size_t w = 1;
    for (size_t i = 1; i < n; i++)
      if (c[i].id != c[w - 1].id)
        c[w++] = c[i];
    n = w;
  }
  *out = c;
  *n_out = n;
  return 0;
}

/* FAISS 1.7.3's C API cannot pass SearchParameters (with an IDSelector)
 * to a search: faiss_Index_search has no params argument and there is no
 * faiss_SearchParameters_new in the headers. Restricting by post-filtering
 * an unrestricted top-k would silently lose results whenever the prior's
 * tiles rank below k. So the prior search scores exactly the candidates:
 * the R*Tree gives tiles near the circle, the geodesic test keeps those
 * whose centre lies inside, and each is scored against the vector the index
 * reconstructs. */
static int gl__search_prior(struct gl_map *m, const float *q, uint32_t k,
                            const struct gl_map_prior *p, struct gl_map_hit *hits,
                            uint32_t *count, char *err, size_t errlen) {
  if (!m->can_reconstruct)
    return gl_fail(err, errlen, GL_ENOTSUP,
                        "%s: index type '%s' cannot reconstruct its vectors, which a prior search "
                        "needs (FAISS 1.7.3's C API has no search with an ID selector)",
                        m->path, m->index_type);
  struct gl__cand *c = NULL;
  size_t n = 0;
  int rc = gl__rtree_candidates(m, p, &c, &n, err, errlen);
  if (rc)
    return rc;
  float *v = malloc(m->dim * sizeof(float));
  if (!v) {
    free(c);
    return gl_fail(err, errlen, GL_ENOMEM, "out of memory");
  }
  size_t w = 0;
  for (size_t i = 0; i < n; i++) {
    int64_t id = c[i].id;
    if (id < 1 || (uint64_t)id > m->n) {
      rc = gl_fail(err, errlen, GL_EFORMAT, "%s: tiles_rtree holds unknown tile id %lld",
                        m->path, (long long)id);
      goto cleanup;
    }
    if (gl_map_distance_m(p->lat, p->lon, m->lat[id - 1], m->lon[id - 1]) > p->radius_m)
      continue;
    double best = -INFINITY; /* a tile scores as its best heading and year */
    for (uint32_t r = 0; r < m->per_tile; r++) {
      uint64_t row = (uint64_t)(id - 1) * m->per_tile + r;
      const float *x = m->xb ? m->xb + row * m->dim : v;
      if (!m->xb && faiss_Index_reconstruct(m->sub, (idx_t)row, v) != 0) {
        const char *fe = faiss_get_last_error();
        rc = gl_fail(err, errlen, GL_EINTERNAL, "%s: reconstructing tile %lld: %s", m->path,
                     (long long)id, fe ? fe : "FAISS error");
        goto cleanup;
      }
      double s = 0;
      for (uint32_t j = 0; j < m->dim; j++)
        s += (double)q[j] * x[j];
      best = s > best ? s : best;
    }
    c[w].id = id;
    c[w].score = (float)best;
    w++;
  }
  if (w > 1)
    qsort(c, w, sizeof *c, gl__cand_by_score);
  *count = w < k ? (uint32_t)w : k;
  for (uint32_t i = 0; i < *count; i++)
    hits[i] = (struct gl_map_hit){c[i].id, c[i].score, m->lat[c[i].id - 1], m->lon[c[i].id - 1]};
cleanup:
  free(v);
  free(c);
  return rc;
}

/* True when candidate a ranks after b: lower score, or the same score and a
 * higher id (the order of gl__cand_by_score). */
static inline bool gl__cand_after(float sa, int64_t ia, float sb, int64_t ib) {
  return sa < sb || (sa == sb && ia > ib);
}

/* Restores the heap order of h[0..n) from position i down: the candidate
 * that ranks last is at the root. */
static void gl__cand_sift(struct gl__cand *h, uint32_t n, uint32_t i) {
  for (;;) {
    uint32_t c = 2 * i + 1;
    if (c >= n)
      return;
    if (c + 1 < n && gl__cand_after(h[c + 1].score, h[c + 1].id, h[c].score, h[c].id))
      c++;
    if (!gl__cand_after(h[c].score, h[c].id, h[i].score, h[i].id))
      return;
    struct gl__cand t = h[i];
    h[i] = h[c];
    h[c] = t;
    i = c;
  }
}

/* Exact top-k of nq queries (rows of q) on a Flat map: blocks of tiles are
 * scored against all queries with one sgemm each, every tile's score (the
 * best of its headings and years) goes through the query's top-k heap, and
 * the heaps are sorted best first (ties by id, as the prior search orders
 * them).
 * which[j] is the caller's index of query j, for hits and counts. */
static int gl__search_flat(struct gl_map *m, const float *q, uint32_t nq, const uint32_t *which,
                           uint32_t k, struct gl_map_hit *hits, uint32_t *counts, char *err,
                           size_t errlen) {
  uint32_t keep = (uint64_t)k < m->n ? k : (uint32_t)m->n;
  /* Tiles per block: at least one, however many vectors a tile holds. */
  uint32_t per_tile = m->per_tile;
  uint32_t per = GL__FLAT_BLOCK / per_tile ? GL__FLAT_BLOCK / per_tile : 1;
  uint32_t block = m->n < per ? (uint32_t)m->n : per;
  float *scores = malloc((size_t)nq * block * per_tile * sizeof *scores);
  struct gl__cand *heaps = malloc((size_t)nq * keep * sizeof *heaps);
  uint32_t *len = calloc(nq, sizeof *len);
  if (!scores || !heaps || !len) {
    free(scores);
    free(heaps);
    free(len);
    return gl_fail(err, errlen, GL_ENOMEM, "out of memory");
  }
  for (uint64_t b0 = 0; b0 < m->n; b0 += block) {
    uint32_t nb = m->n - b0 < block ? (uint32_t)(m->n - b0) : block;
    uint32_t nr = nb * per_tile; /* rows of the block */
    const float *xb = m->xb + b0 * per_tile * m->dim;
    if (nq >= GL__FLAT_GEMM_MIN)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nq, (int)nr, (int)m->dim, 1.0f, q,
                  (int)m->dim, xb, (int)m->dim, 0.0f, scores, (int)nr);
    else
      for (uint32_t j = 0; j < nq; j++)
        cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)nr, (int)m->dim, 1.0f, xb, (int)m->dim,
                    q + (size_t)j * m->dim, 1, 0.0f, scores + (size_t)j * nr, 1);
    for (uint32_t j = 0; j < nq; j++) {
      struct gl__cand *h = heaps + (size_t)j * keep;
      const float *sj = scores + (size_t)j * nr;
      for (uint32_t t = 0; t < nb; t++) {
        int64_t id = (int64_t)(b0 + t) + 1;
        float sc = sj[t * per_tile];
        for (uint32_t r = 1; r < per_tile; r++)
          sc = fmaxf(sc, sj[t * per_tile + r]);
        if (len[j] < keep) {
          /* Filling: append, then sift up. */
          uint32_t i = len[j]++;
          h[i] = (struct gl__cand){id, sc};
          while (i > 0 &&
                 gl__cand_after(h[i].score, h[i].id, h[(i - 1) / 2].score, h[(i - 1) / 2].id)) {
            struct gl__cand tmp = h[i];
            h[i] = h[(i - 1) / 2];
            h[(i - 1) / 2] = tmp;
            i = (i - 1) / 2;
          }
        } else if (gl__cand_after(h[0].score, h[0].id, sc, id)) {
          h[0] = (struct gl__cand){id, sc};
          gl__cand_sift(h, keep, 0);
        }
      }
    }
  }
  for (uint32_t j = 0; j < nq; j++) {
    struct gl__cand *h = heaps + (size_t)j * keep;
    struct gl_map_hit *out = hits + (size_t)which[j] * k;
    /* Taking the root (the worst) each time fills the list from its end. */
    for (uint32_t c = len[j]; c > 0; c--) {
      struct gl__cand worst = h[0];
      h[0] = h[c - 1];
      gl__cand_sift(h, c - 1, 0);
      out[c - 1] =
          (struct gl_map_hit){worst.id, worst.score, m->lat[worst.id - 1], m->lon[worst.id - 1]};
    }
    if (counts)
      counts[which[j]] = len[j];
  }
  free(scores);
  free(heaps);
  free(len);
  return 0;
}

int gl_map_search(struct gl_map *m, const float *queries, uint32_t n, uint32_t k,
                  const struct gl_map_prior *priors, struct gl_map_hit *hits, uint32_t *counts,
                  char *err, size_t errlen) {
  if (!m || !queries || !hits || n == 0 || k == 0 || k > GL__MAX_K)
    return gl_fail(err, errlen, GL_EINVAL, "gl_map_search: bad arguments (n %u, k %u)", n, k);
  for (size_t i = 0; i < (size_t)n * k; i++)
    hits[i] = (struct gl_map_hit){-1, 0, 0, 0};
  if (counts)
    memset(counts, 0, n * sizeof *counts);
  int rc = 0;
  /* Queries without a prior are searched together, as one batch. */
  uint32_t nfree = 0;
  for (uint32_t i = 0; i < n; i++)
    if (!priors || !(priors[i].radius_m > 0))
      nfree++;
  float *qbuf = NULL, *dist = NULL;
  idx_t *lab = NULL;
  uint32_t *which = NULL;
  if (nfree) {
    which = malloc(nfree * sizeof *which);
    qbuf = nfree == n ? NULL : malloc((size_t)nfree * m->dim * sizeof *qbuf);
    if (!which || (nfree != n && !qbuf)) {
      rc = gl_fail(err, errlen, GL_ENOMEM, "out of memory");
      goto cleanup;
    }
    uint32_t j = 0;
    for (uint32_t i = 0; i < n; i++) {
      if (priors && priors[i].radius_m > 0)
        continue;
      which[j] = i;
      if (qbuf)
        memcpy(qbuf + (size_t)j * m->dim, queries + (size_t)i * m->dim, m->dim * sizeof *qbuf);
      j++;
    }
    if (m->xb) {
      rc = gl__search_flat(m, qbuf ? qbuf : queries, nfree, which, k, hits, counts, err, errlen);
      if (rc)
        goto cleanup;
    } else {
      /* k tiles need up to k * per_tile vectors: a tile's other headings
       * and years (copies among them score exactly alike) rank near it and
       * only its best counts. More than the index holds buys nothing. */
      uint64_t kv64 = (uint64_t)k * m->per_tile, nv = m->n * m->per_tile;
      uint32_t kv = (uint32_t)(kv64 < nv || nv == 0 ? kv64 : nv);
      dist = malloc((size_t)nfree * kv * sizeof *dist);
      lab = malloc((size_t)nfree * kv * sizeof *lab);
      if (!dist || !lab) {
        rc = gl_fail(err, errlen, GL_ENOMEM, "out of memory");
        goto cleanup;
      }
      if (faiss_Index_search(m->index, nfree, qbuf ? qbuf : queries, kv, dist, lab) != 0) {
        const char *fe = faiss_get_last_error();
        rc = gl_fail(err, errlen, GL_EINTERNAL, "%s: search: %s", m->path, fe ? fe : "FAISS error");
        goto cleanup;
      }
      for (uint32_t j2 = 0; j2 < nfree; j2++) {
        struct gl_map_hit *h = hits + (size_t)which[j2] * k;
        uint32_t c = 0;
        for (uint32_t r = 0; r < kv && c < k; r++) {
          idx_t v = lab[(size_t)j2 * kv + r];
          if (v < 1 || (uint64_t)v > nv)
            continue; /* FAISS pads with -1 when it finds fewer than kv */
          int64_t id = (int64_t)((v - 1) / m->per_tile) + 1;
          bool seen = false; /* a better vector of this tile came first */
          for (uint32_t e = 0; m->per_tile > 1 && e < c && !seen; e++)
            seen = h[e].tile_id == id;
          if (!seen)
            h[c++] = (struct gl_map_hit){id, dist[(size_t)j2 * kv + r], m->lat[id - 1],
                                         m->lon[id - 1]};
        }
        if (counts)
          counts[which[j2]] = c;
      }
    }
  }
  for (uint32_t i = 0; priors && i < n && !rc; i++) {
    if (!(priors[i].radius_m > 0))
      continue;
    if (!isfinite(priors[i].lat) || !isfinite(priors[i].lon) || fabs(priors[i].lat) > 90) {
      rc = gl_fail(err, errlen, GL_EINVAL, "prior %u: bad position %g,%g", i, priors[i].lat,
                        priors[i].lon);
      break;
    }
    uint32_t c = 0;
    rc = gl__search_prior(m, queries + (size_t)i * m->dim, k, &priors[i], hits + (size_t)i * k, &c,
                          err, errlen);
    if (counts)
      counts[i] = c;
  }
cleanup:
  free(qbuf);
  free(dist);
  free(lab);
  free(which);
  return rc;
}

/* --- inspection ---------------------------------------------------------------- */

bool gl_map_is_pack(const char *path) {
  struct stat st;
  char *p = NULL;
  if (!path || stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
    return false;
  if (asprintf(&p, "%s/" GL__MAP_MANIFEST, path) < 0)
    return false;
  bool ok = stat(p, &st) == 0 && S_ISREG(st.st_mode);
  free(p);
  return ok;
}

int gl_map_source_files(const char *path, struct gl_map_source_file **out, uint32_t *n, char *err,
                        size_t errlen) {
  *out = NULL;
  *n = 0;
  struct gl__manifest mf;
  int rc = gl__manifest_read(path, &mf, err, errlen);
  if (rc)
    return rc;
  /* The directory that holds the pack, for sources known by name only. */
  char *copy = strdup(path), *parent = copy ? dirname(copy) : NULL;
  struct gl_map_source_file *s = calloc(mf.n_sources ? mf.n_sources : 1, sizeof *s);
  if (!parent || !s) {
    rc = gl_fail(err, errlen, GL_ENOMEM, "out of memory");
    goto cleanup;
  }
  for (uint32_t i = 0; i < mf.n_sources; i++) {
    const struct gl__manifest_source *ms = &mf.sources[i];
    struct stat st;
    snprintf(s[i].file, sizeof s[i].file, "%s", ms->file);
    char *p = NULL;
    if (ms->path && stat(ms->path, &st) == 0)
      p = strdup(ms->path);
    else if (!strchr(ms->file, '/') && asprintf(&p, "%s/%s", parent, ms->file) < 0)
      p = NULL;
    if (p && stat(p, &st) != 0) {
      free(p);
      p = NULL;
    }
    s[i].found = p;
  }
  *out = s;
  *n = mf.n_sources;
  s = NULL;
cleanup:
  free(s);
  free(copy);
  gl__manifest_free(&mf);
  return rc;
}

void gl_map_source_files_free(struct gl_map_source_file *s, uint32_t n) {
  for (uint32_t i = 0; s && i < n; i++)
    free(s[i].found);
  free(s);
}

int gl_map_inspect(const char *path, FILE *f, char *err, size_t errlen) {
  struct gl__manifest mf;
  int rc = gl__manifest_read(path, &mf, err, errlen);
  if (rc) {
    fprintf(f, "map pack %s: unreadable: %s\n", path, err && errlen ? err : gl_strerror(rc));
    return rc;
  }
  fprintf(f, "map pack %s\n", path);
  fprintf(f, "  format      %s v%d", GL__MAP_FORMAT_NAME, mf.format_version);
  if (mf.generator)
    fprintf(f, ", written by %s", mf.generator);
  if (mf.created)
    fprintf(f, " at %s", mf.created);
  fprintf(f, "\n  model       sha256 %s\n", mf.model_sha256);
  fprintf(f, "  descriptor  %u floats, inner product (cosine)\n", mf.descriptor_dim);
  fprintf(f, "  index       %s in an IndexIDMap", mf.index_type);
  if (mf.index_nprobe)
    fprintf(f, ", nprobe %zu", mf.index_nprobe);
  fprintf(f, "\n  tiling      %g m tiles every %g m on %s, encoded at %ux%u px (%g m/px)\n",
          mf.tiling.tile_m, mf.tiling.stride_m, mf.tiling.crs ? mf.tiling.crs : "?", mf.tiling.tile_px[0], mf.tiling.tile_px[1], mf.tiling.m_per_px);
  if (mf.tiling.rotations > 1)
    fprintf(f, "  rotations   %u headings per tile, %g degrees apart\n", mf.tiling.rotations, 360.0 / mf.tiling.rotations);
  if (mf.tiling.years > 1) {
    /* A multi-year pack: every tile holds every source's descriptors. */
    fprintf(f, "  years       %u per tile (", mf.tiling.years);
    for (uint32_t i = 0; i < mf.n_sources; i++) {
      const char *date = mf.sources[i].capture_date;
      fprintf(f, "%s%s", i ? ", " : "", date ? date : "no date");
    }
    fprintf(f, "); %u descriptors a tile, scored by its best\n",
            mf.tiling.rotations * mf.tiling.years);
  }
  fprintf(f, "  tiles       %llu", (unsigned long long)mf.counts.tiles);
  if (mf.counts.skipped)
    fprintf(f, " (%llu grid places skipped for nodata)", (unsigned long long)mf.counts.skipped);
  fprintf(f, "\n  sources     %u%s\n", mf.n_sources,
          mf.tiling.years > 1 ? " (the years, in descriptor order)" : "");
  for (uint32_t i = 0; i < mf.n_sources; i++) {
    const struct gl__manifest_source *s = &mf.sources[i];
    fprintf(f, "    %-40s %-10s %-12s %6llu %s  sha256 %.16s...\n", s->file,
            s->capture_date ? s->capture_date : "no date", s->crs ? s->crs : "?",
            (unsigned long long)(s->tiles ? s->tiles : s->places), s->tiles ? "tiles" : "places",
            s->sha256);
  }
  const struct gl__manifest_dense *dn = &mf.dense;
  if (mf.has_dense)
    fprintf(f, "  dense       block %u, %u int8 channels a %g m cell, %u x %u cells, %u "
               "layer(s): the fine stage\n",
            dn->layer, dn->channels, dn->cell_m, dn->rows, dn->cols, dn->n_layers);
  else
    fprintf(f, "  dense       none (global stage only)\n");
  fprintf(f, "  files\n");
  for (int i = 0; i < GL__MAP_N_FILES; i++)
    fprintf(f, "    %-14s %12llu bytes  sha256 %s\n", gl__map_pack_files[i],
            (unsigned long long)mf.files[i].bytes, mf.files[i].sha256);
  for (uint32_t i = 0; i < dn->n_layers; i++)
    fprintf(f, "    %-14s %12llu bytes  sha256 %s\n", dn->layers[i].file,
            (unsigned long long)dn->layers[i].bytes, dn->layers[i].sha256);
  gl__manifest_free(&mf);

  struct gl_map *m = NULL;
  rc = gl_map_open(path, NULL, &m, err, errlen);
  if (rc) {
    fprintf(f, "  verify      FAILED: %s\n", err && errlen ? err : gl_strerror(rc));
    return rc;
  }
  double la0 = 90, la1 = -90, lo0 = 180, lo1 = -180;
  for (uint64_t i = 0; i < m->n; i++) {
    la0 = fmin(la0, m->lat[i]);
    la1 = fmax(la1, m->lat[i]);
    lo0 = fmin(lo0, m->lon[i]);
    lo1 = fmax(lo1, m->lon[i]);
  }
  if (m->n)
    fprintf(f, "  centres     lat %.6f .. %.6f, lon %.6f .. %.6f\n", la0, la1, lo0, lo1);
  fprintf(f, "  verify      ok (checksums, counts, ids)\n");
  gl_map_close(m);
  return 0;
}
