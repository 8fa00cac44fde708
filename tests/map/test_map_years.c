/* Multi-year map packs: several source rasters of one area give ONE tile
 * per grid place, holding rotations x years descriptors (map.h, "Tiles and
 * years"). Real NAIP GeoTIFFs (data/naip), real GDAL and FAISS, a stand-in
 * encoder (an 8x8 RGB thumbnail, mean removed, L2-normalised, that records
 * every descriptor it makes in order), small bboxes so that it runs in
 * seconds. The checks:
 *   - 2020 + 2009 over a bbox: as many tiles as 2020 alone, the same
 *     places in the same order, 4 headings x 2 years per tile in the index
 *     at vector id (t - 1) * 8 + y * 4 + r + 1 (read back from index.faiss),
 *     progress totals that count places once; a query equal to either
 *     year's descriptor of a tile finds that tile first with score 1 on
 *     Flat, HNSW and IVF indexes and with a prior, one hit per tile; the
 *     manifest (tiling.years, sources with dates and places) and inspect;
 *   - years that cover part of the area: a crop of 2009 with an alpha hole
 *     (nodata) and a crop of 2010: places are the union, a tile's source is
 *     the first that covers it validly, the years that do not cover it hold
 *     copies of that one's descriptors, places no year covers are skipped
 *     (counted once), per-source counts;
 *   - more than 256 vectors a tile (65 years x 4 headings), and over 256
 *     sources refused;
 *   - manifests written before tiling.years (and per-source "places")
 *     still open and inspect as one year; inconsistent ones are refused.
 *
 * Argument: NAIP_DIR. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <cpl_error.h>
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/MetaIndexes_c.h>
#include <faiss/c_api/index_io_c.h>
#include <gdal.h>
#include <ogr_srs_api.h>
#include <sqlite3.h>

#include "core/err.h"
#include "map/map.h"
#include "map/map_internal.h"
#include "map_test_util.h"
#include "test.h"

#define DIM 192
#define TILE_PX 64
#define STRIDE 160.0
#define TILE_M 320.0

static const char *naip_dir;
static char *tmp, *naip2020, *naip2009, *naip2010;
static const char F2020[] = "m_4709963_se_14_1_20200831.tif";
static const char F2009[] = "m_4709963_se_14_1_20090818.tif";
static const char SHA2020[] = "e8eb18475678d16a98a44f28b1c777fd0b2c56e9c8afed302a5e071e2e237f90";
static const char SHA2009[] = "568f0d3dc3118d6df63510361db6c627b81541ad4c65122caf54e18030fc7100";
static const char MODEL[] = "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd";
/* About 1.5 x 1.5 km inside the rasters (which span -99.183..-99.126,
 * 47.007..47.034 at 160 m tile centres): some 100 places at 160 m. */
static const double BBOX[4] = {-99.170, 47.012, -99.150, 47.026};

/* --- the stand-in encoder ---------------------------------------------------- */

struct fake {
  float *desc; /* every descriptor produced, in order */
  size_t n, cap;
};

static void thumb(const uint8_t *rgb, float *out) {
  double mean = 0, ss = 0;
  for (int cy = 0; cy < 8; cy++)
    for (int cx = 0; cx < 8; cx++)
      for (int c = 0; c < 3; c++) {
        double s = 0;
        for (int y = 0; y < 8; y++)
          for (int x = 0; x < 8; x++)
            s += rgb[((size_t)(cy * 8 + y) * TILE_PX + (size_t)(cx * 8 + x)) * 3 + (size_t)c];
        out[(cy * 8 + cx) * 3 + c] = (float)(s / 64.0);
        mean += s / 64.0 / DIM;
      }
  for (int i = 0; i < DIM; i++) {
    out[i] -= (float)mean;
    ss += (double)out[i] * out[i];
  }
  if (ss == 0) {
    out[0] = 1; /* a flat tile still gets a unit vector */
    return;
  }
  for (int i = 0; i < DIM; i++)
    out[i] = (float)(out[i] / sqrt(ss));
}

static int fake_encode(void *ctx, const struct gl_image *images, uint32_t n, float *out) {
  struct fake *f = ctx;
  if (f->n + n > f->cap) {
    size_t cap = f->cap ? f->cap * 2 : 1024;
    while (cap < f->n + n)
      cap *= 2;
    float *d = realloc(f->desc, cap * DIM * sizeof(float));
    if (!d)
      return GL_ENOMEM;
    f->desc = d;
    f->cap = cap;
  }
  for (uint32_t i = 0; i < n; i++) {
    if (images[i].width != TILE_PX || images[i].height != TILE_PX)
      return GL_EINVAL;
    thumb(images[i].rgb, out + (size_t)i * DIM);
    memcpy(f->desc + (f->n + i) * DIM, out + (size_t)i * DIM, DIM * sizeof(float));
  }
  f->n += n;
  return 0;
}

struct prog {
  uint64_t total, done, skipped;
  bool total_changed;
  uint32_t calls;
};

static void on_progress(void *ctx, const struct gl_map_progress *p) {
  struct prog *pr = ctx;
  if (pr->calls++ && p->total != pr->total)
    pr->total_changed = true;
  pr->total = p->total;
  pr->done = p->done;
  pr->skipped = p->skipped;
}

/* One build over BBOX (bbox false: the whole rasters). */
static int build(const char *out, const char *const *orthos, uint32_t n, uint32_t rotations,
                 const char *index, bool bbox, const double *box, struct fake *f, struct prog *pr,
                 struct gl_map_build_stats *st, char *err, size_t errlen) {
  struct gl_map_encoder e = {.width = TILE_PX,
                             .height = TILE_PX,
                             .dim = DIM,
                             .max_batch = 12,
                             .rotations = rotations,
                             .encode = fake_encode,
                             .ctx = f};
  snprintf(e.model_sha256, sizeof e.model_sha256, "%s", MODEL);
  struct gl_map_build_opts o = {.orthos = orthos,
                                .n_orthos = n,
                                .tile_m = TILE_M,
                                .stride_m = STRIDE,
                                .index_type = index,
                                .out = out,
                                .has_bbox = bbox,
                                .progress_cb = on_progress,
                                .progress_ctx = pr};
  if (bbox)
    memcpy(o.bbox, box ? box : BBOX, sizeof o.bbox);
  return gl_map_build(&o, &e, st, err, errlen);
}

/* --- reading packs back --------------------------------------------------------- */

/* A tile row of tiles.sqlite. */
struct row {
  double lat, lon, gx, gy;
  char source[64], date[11];
};

/* The tiles of a pack in id order (ids checked to be 1..n). */
static size_t read_rows(const char *pack, struct row **out) {
  char *p = mt_join(pack, "tiles.sqlite");
  sqlite3 *db = NULL;
  sqlite3_stmt *q = NULL;
  size_t n = 0, cap = 0;
  *out = NULL;
  if (CHECK_EQ_INT(sqlite3_open_v2(p, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK) &&
      CHECK_EQ_INT(sqlite3_prepare_v2(db,
                                      "SELECT id, lat, lon, grid_x, grid_y, source, capture_date "
                                      "FROM tiles ORDER BY id",
                                      -1, &q, NULL),
                   SQLITE_OK)) {
    while (sqlite3_step(q) == SQLITE_ROW) {
      if (n == cap) {
        cap = cap ? cap * 2 : 128;
        *out = realloc(*out, cap * sizeof **out);
      }
      struct row *r = &(*out)[n];
      CHECK_EQ_INT(sqlite3_column_int64(q, 0), (long long)n + 1);
      r->lat = sqlite3_column_double(q, 1);
      r->lon = sqlite3_column_double(q, 2);
      r->gx = sqlite3_column_double(q, 3);
      r->gy = sqlite3_column_double(q, 4);
      const unsigned char *s = sqlite3_column_text(q, 5), *d = sqlite3_column_text(q, 6);
      snprintf(r->source, sizeof r->source, "%s", s ? (const char *)s : "");
      snprintf(r->date, sizeof r->date, "%s", d ? (const char *)d : "");
      n++;
    }
  }
  sqlite3_finalize(q);
  sqlite3_close(db);
  free(p);
  return n;
}

/* Every vector of a Flat pack's index.faiss in position order (position =
 * vector id - 1), straight from FAISS. */
static float *read_vectors(const char *pack, size_t *n) {
  char *p = mt_join(pack, "index.faiss");
  FILE *f = fopen(p, "rb");
  free(p);
  FaissIndex *idx = NULL;
  *n = 0;
  if (!CHECK(f != NULL))
    return NULL;
  int rc = faiss_read_index(f, 0, &idx);
  fclose(f);
  if (!CHECK_EQ_INT(rc, 0))
    return NULL;
  FaissIndexIDMap *map = faiss_IndexIDMap_cast(idx);
  float *v = NULL;
  if (CHECK(map != NULL)) {
    FaissIndex *sub = faiss_IndexIDMap_sub_index(map);
    *n = (size_t)faiss_Index_ntotal(idx);
    v = malloc((*n ? *n : 1) * DIM * sizeof(float));
    for (size_t i = 0; i < *n; i++)
      CHECK_EQ_INT(faiss_Index_reconstruct(sub, (idx_t)i, v + i * DIM), 0);
  }
  faiss_Index_free(idx);
  return v;
}

static cJSON *read_manifest(const char *pack) {
  char *p = mt_join(pack, "manifest.json"), *text = NULL;
  size_t len;
  cJSON *j = NULL;
  if (CHECK_EQ_INT(gl__map_read_file(p, 1 << 20, &text, &len), 0))
    j = cJSON_Parse(text);
  CHECK(j != NULL);
  free(text);
  free(p);
  return j;
}

static double json_num(const cJSON *obj, const char *key) {
  const cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, key);
  return cJSON_IsNumber(j) ? j->valuedouble : -1;
}

static const char *json_str(const cJSON *obj, const char *key) {
  const cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, key);
  return cJSON_IsString(j) ? j->valuestring : "";
}

static void write_manifest(const char *pack, cJSON *j) {
  char *text = cJSON_Print(j), *p = mt_join(pack, "manifest.json");
  CHECK_EQ_INT(gl__map_write_file(p, text, strlen(text)), 0);
  cJSON_free(text);
  free(p);
}

static char *inspect_text(const char *pack, int want_rc) {
  char *outp = mt_join(tmp, "inspect.txt"), *text = NULL;
  char err[1024] = "";
  FILE *f = fopen(outp, "w+");
  CHECK_EQ_INT(gl_map_inspect(pack, f, err, sizeof err), want_rc);
  fclose(f);
  size_t len;
  CHECK_EQ_INT(gl__map_read_file(outp, 1 << 20, &text, &len), 0);
  free(outp);
  return text;
}

static double dot(const float *a, const float *b) {
  double s = 0;
  for (int i = 0; i < DIM; i++)
    s += (double)a[i] * b[i];
  return s;
}

/* --- two full years ------------------------------------------------------------- */

/* Searches tile t's descriptor q (k hits, with or without a prior around
 * the tile) and checks that t comes first with score 1 and no tile twice. */
static bool finds(struct gl_map *m, const float *q, int64_t t, bool prior, bool exact) {
  struct gl_map_tile tile;
  if (gl_map_tile_get(m, t, &tile) != 0)
    return false;
  struct gl_map_prior pr = {tile.lat, tile.lon, 400};
  enum { K = 6 };
  struct gl_map_hit h[K];
  uint32_t c = 0;
  char err[512];
  if (gl_map_search(m, q, 1, K, prior ? &pr : NULL, h, &c, err, sizeof err) != 0 || c == 0)
    return false;
  for (uint32_t i = 0; i < c; i++)
    for (uint32_t j = 0; j < i; j++)
      if (h[i].tile_id == h[j].tile_id)
        return false;
  return h[0].tile_id == t && (!exact || fabsf(h[0].score - 1.0f) < 1e-4f);
}

static void test_two_years(void) {
  char err[1024] = "";
  char *one = mt_join(tmp, "y2020.map"), *old = mt_join(tmp, "y2009.map");
  char *two = mt_join(tmp, "y2020_2009.map");
  struct fake f1 = {0}, f9 = {0}, f2 = {0};
  struct prog p1 = {0}, p9 = {0}, p2 = {0};
  struct gl_map_build_stats s1 = {0}, s9 = {0}, s2 = {0};
  const char *o2020[] = {naip2020}, *o2009[] = {naip2009}, *both[] = {naip2020, naip2009};
  struct row *r1 = NULL, *r2 = NULL;
  float *v2 = NULL;
  if (!CHECK_EQ_INT(build(one, o2020, 1, 4, NULL, true, NULL, &f1, &p1, &s1, err, sizeof err), 0) ||
      !CHECK_EQ_INT(build(old, o2009, 1, 4, NULL, true, NULL, &f9, &p9, &s9, err, sizeof err), 0) ||
      !CHECK_EQ_INT(build(two, both, 2, 4, NULL, true, NULL, &f2, &p2, &s2, err, sizeof err), 0)) {
    fprintf(stderr, "  %s\n", err);
    goto done;
  }
  uint64_t n = s1.tiles;
  fprintf(stderr, "  %llu tiles a year\n", (unsigned long long)n);
  CHECK(n > 50 && n < 200);
  /* One tile per place, whatever the number of years. */
  CHECK_EQ_U64(s2.tiles, n);
  CHECK_EQ_U64(s9.tiles, n);
  CHECK_EQ_U64(s2.skipped, 0);
  /* Progress counts places, not places x years. */
  CHECK_EQ_U64(p2.total, n);
  CHECK_EQ_U64(p2.done, n);
  CHECK_EQ_U64(p2.skipped, 0);
  CHECK(!p2.total_changed);
  CHECK_EQ_U64(p1.total, n);
  /* Every place encoded once per year and heading. */
  CHECK_EQ_U64(f1.n, n * 4);
  CHECK_EQ_U64(f2.n, n * 8);

  /* The same places in the same order; each named by the first year. */
  size_t nr1 = read_rows(one, &r1), nr2 = read_rows(two, &r2);
  CHECK_EQ_U64(nr1, n);
  CHECK_EQ_U64(nr2, n);
  int bad = 0;
  for (size_t i = 0; i < nr1 && i < nr2; i++)
    bad += r1[i].lat != r2[i].lat || r1[i].lon != r2[i].lon || r1[i].gx != r2[i].gx ||
           r1[i].gy != r2[i].gy || strcmp(r2[i].source, F2020) || strcmp(r2[i].date, "2020-08-31");
  /* Grid order: rows north to south, each row west to east. */
  for (size_t i = 1; i < nr2; i++)
    bad += !(r2[i].gy < r2[i - 1].gy || (r2[i].gy == r2[i - 1].gy && r2[i].gx > r2[i - 1].gx));
  CHECK_EQ_INT(bad, 0);

  /* index.faiss: tile t, year y, heading r at vector id (t-1)*8 + y*4 + r + 1,
   * year 0 as 2020 alone encodes it and year 1 as 2009 alone does. */
  size_t nv = 0;
  v2 = read_vectors(two, &nv);
  CHECK_EQ_U64(nv, n * 8);
  int misplaced = 0;
  for (uint64_t t = 0; v2 && nv == n * 8 && t < n; t++)
    for (int y = 0; y < 2; y++)
      for (int r = 0; r < 4; r++) {
        const float *want = (y == 0 ? f1.desc : f9.desc) + (t * 4 + (uint64_t)r) * DIM;
        misplaced += !gl_test_mem_eq(v2 + ((t * 2 + (uint64_t)y) * 4 + (uint64_t)r) * DIM, want,
                                     DIM * sizeof(float));
      }
  CHECK_EQ_INT(misplaced, 0);

  /* The years differ (or finding 2009's descriptor would prove nothing):
   * on the 2020-only pack, most 2009 descriptors do not score 1. */
  struct gl_map *m = NULL;
  if (CHECK_EQ_INT(gl_map_open(one, MODEL, &m, err, sizeof err), 0)) {
    int differ = 0;
    for (uint64_t t = 0; t < n; t++) {
      struct gl_map_hit h;
      uint32_t c;
      if (gl_map_search(m, f9.desc + t * 4 * DIM, 1, 1, NULL, &h, &c, err, sizeof err) == 0)
        differ += h.score < 0.999f;
    }
    CHECK(differ > (int)(n * 3 / 4));
    gl_map_close(m);
  }

  /* Both years searchable on every path: Flat (BLAS), a prior, FAISS. */
  const char *types[] = {"HNSW32", "IVF8,Flat"};
  for (int i = -1; i < 2; i++) {
    char *p = two;
    struct fake fx = {0};
    if (i >= 0) {
      char name[32];
      snprintf(name, sizeof name, "years_idx%d.map", i);
      p = mt_join(tmp, name);
      struct prog px = {0};
      if (!CHECK_EQ_INT(build(p, both, 2, 4, types[i], true, NULL, &fx, &px, NULL, err, sizeof err),
                        0)) {
        fprintf(stderr, "  %s: %s\n", types[i], err);
        free(p);
        continue;
      }
    }
    if (CHECK_EQ_INT(gl_map_open(p, MODEL, &m, err, sizeof err), 0)) {
      CHECK_EQ_U64(gl_map_tile_count(m), n);
      CHECK_EQ_INT(gl_map_rotations(m), 4);
      CHECK_EQ_INT(gl_map_years(m), 2);
      int tried = 0, found = 0, found_prior = 0;
      for (uint64_t t = 0; t < n; t++)
        for (uint64_t y = 0; y < 2; y++) {
          const float *q = f2.desc + ((t * 2 + y) * 4 + (t + y) % 4) * DIM;
          tried++;
          found += finds(m, q, (int64_t)t + 1, false, true);
          found_prior += finds(m, q, (int64_t)t + 1, true, true);
        }
      /* HNSW's graph search is approximate: it may miss a vector. */
      if (i == 0)
        CHECK(found >= tried * 9 / 10);
      else
        CHECK_EQ_INT(found, tried);
      CHECK_EQ_INT(found_prior, tried);
      fprintf(stderr, "  %s: own tile first %d/%d, with a prior %d/%d\n", i < 0 ? "Flat" : types[i],
              found, tried, found_prior, tried);
      gl_map_close(m);
    } else {
      fprintf(stderr, "  %s\n", err);
    }
    if (i >= 0)
      free(p);
    free(fx.desc);
  }

  /* The manifest: years, and each source with its hash, date and places. */
  cJSON *j = read_manifest(two);
  const cJSON *tiling = cJSON_GetObjectItemCaseSensitive(j, "tiling");
  CHECK(json_num(tiling, "rotations") == 4);
  CHECK(json_num(tiling, "years") == 2);
  const cJSON *srcs = cJSON_GetObjectItemCaseSensitive(j, "sources");
  if (CHECK(cJSON_GetArraySize(srcs) == 2)) {
    const cJSON *a = cJSON_GetArrayItem(srcs, 0), *b = cJSON_GetArrayItem(srcs, 1);
    CHECK_EQ_STR(json_str(a, "file"), F2020);
    CHECK_EQ_STR(json_str(a, "sha256"), SHA2020);
    CHECK_EQ_STR(json_str(a, "capture_date"), "2020-08-31");
    CHECK(json_str(a, "path")[0] == '/');
    CHECK(json_num(a, "places") == (double)n);
    CHECK_EQ_STR(json_str(b, "file"), F2009);
    CHECK_EQ_STR(json_str(b, "sha256"), SHA2009);
    CHECK_EQ_STR(json_str(b, "capture_date"), "2009-08-18");
    CHECK(json_num(b, "places") == (double)n);
    CHECK(json_num(b, "skipped") == 0);
  }
  CHECK(json_num(cJSON_GetObjectItemCaseSensitive(j, "counts"), "tiles") == (double)n);
  cJSON_Delete(j);

  /* inspect names both years with their dates. */
  char *text = inspect_text(two, 0);
  CHECK_CONTAINS(text, "years       2 per tile (2020-08-31, 2009-08-18); 8 descriptors a tile");
  CHECK_CONTAINS(text, "rotations   4 headings per tile");
  CHECK_CONTAINS(text, F2020);
  CHECK_CONTAINS(text, F2009);
  CHECK_CONTAINS(text, "places");
  CHECK_CONTAINS(text, "verify      ok");
  free(text);
  /* A one-year pack says nothing of years. */
  text = inspect_text(one, 0);
  CHECK(text && !strstr(text, "years "));
  free(text);
done:
  free(v2);
  free(r1);
  free(r2);
  free(f1.desc);
  free(f9.desc);
  free(f2.desc);
  free(one);
  free(old);
  free(two);
}

/* --- years that cover part of the area ---------------------------------------------- */

/* A copy of src's first three bands from easting x_from to x_to (grid
 * CRS metres; whole pixels inside them) with an alpha band that is 0
 * (nodata) over hole = {x0, y0, x1, y1} (pixels that touch it) when hole
 * is not NULL. The name keeps a NAIP date for the capture date. */
static char *make_crop(const char *src, const char *name, double x_from, double x_to,
                       const double *hole) {
  char *path = mt_join(tmp, name);
  GDALDatasetH in = GDALOpen(src, GA_ReadOnly);
  if (!CHECK(in != NULL))
    return path;
  double gt[6];
  GDALGetGeoTransform(in, gt);
  int xs = GDALGetRasterXSize(in), ys = GDALGetRasterYSize(in);
  int c0 = (int)fmax(0, ceil((x_from - gt[0]) / gt[1] - 1e-9));
  int c1 = (int)fmin(xs, floor((x_to - gt[0]) / gt[1] + 1e-9));
  int w = c1 - c0;
  const char *opts[] = {"PHOTOMETRIC=RGB", "ALPHA=YES", NULL};
  GDALDatasetH out =
      GDALCreate(GDALGetDriverByName("GTiff"), path, w, ys, 4, GDT_Byte, (char **)opts);
  if (!CHECK(out != NULL && w > 0)) {
    GDALClose(in);
    return path;
  }
  double ogt[6] = {gt[0] + c0 * gt[1], gt[1], 0, gt[3], 0, gt[5]};
  GDALSetGeoTransform(out, ogt);
  GDALSetSpatialRef(out, GDALGetSpatialRef(in));
  uint8_t *buf = malloc((size_t)w * ys);
  for (int b = 1; b <= 3; b++) {
    CHECK_EQ_INT(
        GDALRasterIO(GDALGetRasterBand(in, b), GF_Read, c0, 0, w, ys, buf, w, ys, GDT_Byte, 0, 0),
        CE_None);
    CHECK_EQ_INT(
        GDALRasterIO(GDALGetRasterBand(out, b), GF_Write, 0, 0, w, ys, buf, w, ys, GDT_Byte, 0, 0),
        CE_None);
  }
  memset(buf, 255, (size_t)w * ys);
  if (hole) {
    int hx0 = (int)floor((hole[0] - ogt[0]) / ogt[1]), hx1 = (int)ceil((hole[2] - ogt[0]) / ogt[1]);
    int hy0 = (int)floor((hole[3] - ogt[3]) / ogt[5]), hy1 = (int)ceil((hole[1] - ogt[3]) / ogt[5]);
    for (int y = hy0; y < hy1; y++)
      for (int x = hx0; x < hx1; x++)
        if (x >= 0 && x < w && y >= 0 && y < ys)
          buf[(size_t)y * w + x] = 0;
  }
  GDALRasterBandH alpha = GDALGetRasterBand(out, 4);
  CHECK_EQ_INT(GDALGetRasterColorInterpretation(alpha), GCI_AlphaBand);
  CHECK_EQ_INT(GDALRasterIO(alpha, GF_Write, 0, 0, w, ys, buf, w, ys, GDT_Byte, 0, 0), CE_None);
  free(buf);
  GDALClose(out);
  GDALClose(in);
  return path;
}

/* Whether a tile with lower-left corner (x, y) overlaps box {x0, y0, x1, y1}. */
static bool overlaps(double x, double y, const double *box) {
  return x < box[2] && x + TILE_M > box[0] && y < box[3] && y + TILE_M > box[1];
}

static void test_partial_years(void) {
  char err[1024] = "";
  char *one = mt_join(tmp, "p2020.map");
  struct fake f1 = {0};
  struct prog p1 = {0};
  struct gl_map_build_stats s1;
  const char *o2020[] = {naip2020};
  struct row *r1 = NULL, *rd = NULL, *rg = NULL;
  float *vd = NULL;
  char *west = NULL, *east = NULL, *pd = NULL, *pg = NULL;
  if (!CHECK_EQ_INT(build(one, o2020, 1, 2, NULL, true, NULL, &f1, &p1, &s1, err, sizeof err), 0)) {
    fprintf(stderr, "  %s\n", err);
    goto done;
  }
  size_t n = read_rows(one, &r1);
  CHECK_EQ_U64(n, s1.tiles);
  /* Lower-left corners of the bbox's places: columns from cx0, rows from cy0. */
  double cx0 = 1e12, cy0 = 1e12;
  for (size_t i = 0; i < n; i++) {
    cx0 = fmin(cx0, r1[i].gx - TILE_M / 2);
    cy0 = fmin(cy0, r1[i].gy - TILE_M / 2);
  }
  /* Every edge lies 40 m or more from any tile edge, so which tiles it
   * cuts does not depend on rounding: 2009 up to 80 m east of the tiles
   * with corner cx0 + 640, with an 80 m square hole that places at corners
   * cx0 + 160 and + 320 (two columns) and cy0 + 320 and + 480 (two rows)
   * overlap; 2010 from 80 m west of the corner cx0 + 480. */
  double x_west = cx0 + 4 * STRIDE + TILE_M + 80, x_east = cx0 + 3 * STRIDE - 80;
  double hole[4] = {cx0 + 2 * STRIDE + 40, cy0 + 3 * STRIDE + 40, cx0 + 2 * STRIDE + 120,
                    cy0 + 3 * STRIDE + 120};
  west = make_crop(naip2009, "m_4709963_se_14_1_20090818_west.tif", 0, x_west, hole);
  east = make_crop(naip2010, "m_4709963_se_14_1_20100629_east.tif", x_east, 1e9, NULL);
  size_t in_west = 0, in_hole = 0, in_east = 0;
  for (size_t i = 0; i < n; i++) {
    double x = r1[i].gx - TILE_M / 2, y = r1[i].gy - TILE_M / 2;
    bool w = x + TILE_M <= x_west, h = overlaps(x, y, hole);
    in_west += w && !h;
    in_hole += w && h;
    in_east += x >= x_east;
  }
  fprintf(stderr, "  %zu places: west year %zu (+%zu in its hole), east year %zu\n", n, in_west,
          in_hole, in_east);
  CHECK_EQ_U64(in_hole, 4);
  CHECK(in_west > 10 && in_east > 10 && in_west + in_hole < n && in_east < n);

  /* [west 2009 with a hole, all of 2020]: every place is a tile; where the
   * west year covers it, it names the tile and holds its own descriptors;
   * elsewhere it holds copies of 2020's. */
  pd = mt_join(tmp, "west_2020.map");
  const char *od[] = {west, naip2020};
  struct fake fd = {0};
  struct prog prd = {0};
  struct gl_map_build_stats sd;
  if (!CHECK_EQ_INT(build(pd, od, 2, 2, NULL, true, NULL, &fd, &prd, &sd, err, sizeof err), 0)) {
    fprintf(stderr, "  %s\n", err);
    goto done;
  }
  CHECK_EQ_U64(sd.tiles, n);
  CHECK_EQ_U64(sd.skipped, 0);
  CHECK_EQ_U64(prd.total, n);
  CHECK_EQ_U64(fd.n, (n + in_west) * 2);
  size_t nd = read_rows(pd, &rd), nv = 0;
  CHECK_EQ_U64(nd, n);
  vd = read_vectors(pd, &nv);
  CHECK_EQ_U64(nv, n * 4);
  int bad_rows = 0, bad_vectors = 0, own = 0;
  for (size_t i = 0; i < n && i < nd && nv == n * 4; i++) {
    double x = r1[i].gx - TILE_M / 2, y = r1[i].gy - TILE_M / 2;
    bool w = x + TILE_M <= x_west && !overlaps(x, y, hole);
    bad_rows += rd[i].gx != r1[i].gx || rd[i].gy != r1[i].gy ||
                strcmp(rd[i].source, w ? "m_4709963_se_14_1_20090818_west.tif" : F2020) ||
                strcmp(rd[i].date, w ? "2009-08-18" : "2020-08-31");
    const float *t = vd + i * 4 * DIM; /* year 0: rows 0, 1; year 1 (2020): rows 2, 3 */
    for (int r = 0; r < 2; r++) {
      /* 2020's rows are 2020's descriptors of that place. */
      bad_vectors += !gl_test_mem_eq(t + (2 + r) * DIM, f1.desc + (i * 2 + (size_t)r) * DIM,
                                     DIM * sizeof(float));
      if (w)
        own += dot(t + r * DIM, t + (2 + r) * DIM) < 0.999; /* 2009's own view */
      else
        bad_vectors += !gl_test_mem_eq(t + r * DIM, t + (2 + r) * DIM, DIM * sizeof(float));
    }
  }
  CHECK_EQ_INT(bad_rows, 0);
  CHECK_EQ_INT(bad_vectors, 0);
  CHECK(own > (int)in_west); /* most of 2009's own descriptors differ from 2020's */
  cJSON *j = read_manifest(pd);
  const cJSON *srcs = cJSON_GetObjectItemCaseSensitive(j, "sources");
  CHECK(json_num(cJSON_GetArrayItem(srcs, 0), "places") == (double)in_west);
  CHECK(json_num(cJSON_GetArrayItem(srcs, 0), "skipped") == (double)in_hole);
  CHECK_EQ_STR(json_str(cJSON_GetArrayItem(srcs, 0), "capture_date"), "2009-08-18");
  CHECK(json_num(cJSON_GetArrayItem(srcs, 1), "places") == (double)n);
  cJSON_Delete(j);
  /* Each year's own descriptor finds its tile. */
  struct gl_map *m = NULL;
  if (CHECK_EQ_INT(gl_map_open(pd, MODEL, &m, err, sizeof err), 0)) {
    int lost = 0;
    for (size_t i = 0; i < n; i++)
      for (int y = 0; y < 2; y++)
        lost += !finds(m, vd + (i * 4 + (size_t)y * 2 + (size_t)(i % 2)) * DIM, (int64_t)i + 1,
                       i % 3 == 0, true);
    CHECK_EQ_INT(lost, 0);
    gl_map_close(m);
  }

  /* [east 2010, west 2009 with a hole]: the places are the union of both
   * (in grid order, as the 2020 pack has them), less the hole's, which no
   * year covers: skipped, and counted once. A tile is named by the east
   * year where it reaches, else by the west one. */
  pg = mt_join(tmp, "east_west.map");
  const char *og[] = {east, west};
  struct fake fg = {0};
  struct prog prg = {0};
  struct gl_map_build_stats sg;
  if (!CHECK_EQ_INT(build(pg, og, 2, 2, NULL, true, NULL, &fg, &prg, &sg, err, sizeof err), 0)) {
    fprintf(stderr, "  %s\n", err);
    free(fd.desc);
    goto done;
  }
  CHECK_EQ_U64(sg.tiles, n - in_hole);
  CHECK_EQ_U64(sg.skipped, in_hole);
  CHECK_EQ_U64(prg.total, n);
  CHECK_EQ_U64(prg.done, n);
  CHECK_EQ_U64(prg.skipped, in_hole);
  size_t ng = read_rows(pg, &rg), k = 0;
  CHECK_EQ_U64(ng, n - in_hole);
  bad_rows = 0;
  for (size_t i = 0; i < n; i++) {
    double x = r1[i].gx - TILE_M / 2, y = r1[i].gy - TILE_M / 2;
    bool e = x >= x_east, w = x + TILE_M <= x_west && !overlaps(x, y, hole);
    if (!e && !w)
      continue; /* the hole: no tile */
    if (k >= ng) {
      bad_rows++;
      continue;
    }
    bad_rows += rg[k].gx != r1[i].gx || rg[k].gy != r1[i].gy ||
                strcmp(rg[k].source, e ? "m_4709963_se_14_1_20100629_east.tif"
                                       : "m_4709963_se_14_1_20090818_west.tif") ||
                strcmp(rg[k].date, e ? "2010-06-29" : "2009-08-18");
    k++;
  }
  CHECK_EQ_U64(k, ng);
  CHECK_EQ_INT(bad_rows, 0);
  j = read_manifest(pg);
  srcs = cJSON_GetObjectItemCaseSensitive(j, "sources");
  CHECK(json_num(cJSON_GetArrayItem(srcs, 0), "places") == (double)in_east);
  CHECK(json_num(cJSON_GetArrayItem(srcs, 0), "skipped") == 0);
  CHECK(json_num(cJSON_GetArrayItem(srcs, 1), "places") == (double)in_west);
  CHECK(json_num(cJSON_GetArrayItem(srcs, 1), "skipped") == (double)in_hole);
  CHECK(json_num(cJSON_GetObjectItemCaseSensitive(j, "counts"), "skipped") == (double)in_hole);
  cJSON_Delete(j);
  char *text = inspect_text(pg, 0);
  CHECK_CONTAINS(text, "years       2 per tile (2010-06-29, 2009-08-18)");
  CHECK_CONTAINS(text, "4 grid places skipped for nodata");
  free(text);
  free(fd.desc);
  free(fg.desc);
done:
  free(vd);
  free(r1);
  free(rd);
  free(rg);
  free(f1.desc);
  free(pd);
  free(pg);
  free(west);
  free(east);
  free(one);
}

/* --- many years ---------------------------------------------------------------------- */

/* 65 years of 4 headings: 260 vectors a tile, more than the Flat search's
 * block of 256 rows holds. The ten NAIP years, over and over. */
static void test_many_years(void) {
  enum { Y = 65 };
  const char *names[] = {"m_4709963_se_14_1_20090818.tif", "m_4709963_se_14_1_20100629.tif",
                         "m_4709963_se_14_1_20120731.tif", "m_4709963_se_14_1_20140720.tif",
                         "m_4709963_se_14_1_20150926.tif", "m_4709963_se_14_1_20160816.tif",
                         "m_4709963_se_14_1_20170827.tif", "m_4709963_se_14_1_20180716.tif",
                         "m_4709963_se_14_1_20190904.tif", "m_4709963_se_14_1_20200831.tif"};
  char *paths[10];
  const char *orthos[GL__MAP_MAX_YEARS + 1];
  for (int i = 0; i < 10; i++)
    paths[i] = mt_join(naip_dir, names[i]);
  for (unsigned i = 0; i <= GL__MAP_MAX_YEARS; i++)
    orthos[i] = paths[i % 10];
  char *out = mt_join(tmp, "many.map"), err[1024] = "";
  /* A few places only. */
  const double box[4] = {-99.160, 47.018, -99.156, 47.021};
  struct fake f = {0};
  struct prog pr = {0};
  struct gl_map_build_stats st;
  if (CHECK_EQ_INT(build(out, orthos, Y, 4, NULL, true, box, &f, &pr, &st, err, sizeof err), 0)) {
    CHECK(st.tiles >= 2 && st.tiles <= 12);
    CHECK_EQ_U64(pr.total, st.tiles);
    CHECK_EQ_U64(f.n, st.tiles * Y * 4);
    struct gl_map *m = NULL;
    if (CHECK_EQ_INT(gl_map_open(out, MODEL, &m, err, sizeof err), 0)) {
      CHECK_EQ_INT(gl_map_years(m), Y);
      int lost = 0;
      for (uint64_t t = 0; t < st.tiles; t++)
        for (uint64_t y = 0; y < Y; y += 16)
          lost += !finds(m, f.desc + ((t * Y + y) * 4 + y % 4) * DIM, (int64_t)t + 1, y % 32 == 0,
                         true);
      CHECK_EQ_INT(lost, 0);
      gl_map_close(m);
    }
  } else {
    fprintf(stderr, "  %s\n", err);
  }
  /* More sources than a pack holds. */
  CHECK_EQ_INT(
      build(out, orthos, GL__MAP_MAX_YEARS + 1, 4, NULL, true, box, &f, &pr, &st, err, sizeof err),
      GL_EINVAL);
  CHECK_CONTAINS(err, "at most 256");
  free(f.desc);
  free(out);
  for (int i = 0; i < 10; i++)
    free(paths[i]);
}

/* --- manifests from before years ------------------------------------------------------- */

static void test_old_manifest(void) {
  char err[1024] = "";
  const char *o2020[] = {naip2020}, *both[] = {naip2020, naip2009};
  char *one = mt_join(tmp, "old1.map"), *two = mt_join(tmp, "old2.map");
  struct fake f1 = {0}, f2 = {0};
  struct prog pr = {0};
  struct gl_map_build_stats s1, s2;
  if (!CHECK_EQ_INT(build(one, o2020, 1, 1, NULL, true, NULL, &f1, &pr, &s1, err, sizeof err), 0) ||
      !CHECK_EQ_INT(build(two, both, 2, 1, NULL, true, NULL, &f2, &pr, &s2, err, sizeof err), 0)) {
    fprintf(stderr, "  %s\n", err);
    goto done;
  }
  /* As the packs before multi-year ones were written: no tiling.years, and
   * each source's count under "tiles". */
  cJSON *j = read_manifest(one);
  cJSON_DeleteItemFromObjectCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "tiling"), "years");
  cJSON *src = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "sources"), 0);
  cJSON_DeleteItemFromObjectCaseSensitive(src, "places");
  cJSON_AddNumberToObject(src, "tiles", (double)s1.tiles);
  write_manifest(one, j);
  cJSON_Delete(j);
  struct gl_map *m = NULL;
  if (CHECK_EQ_INT(gl_map_open(one, MODEL, &m, err, sizeof err), 0)) {
    CHECK_EQ_INT(gl_map_years(m), 1);
    CHECK_EQ_INT(gl_map_rotations(m), 1);
    CHECK_EQ_U64(gl_map_tile_count(m), s1.tiles);
    CHECK(finds(m, f1.desc + 5 * DIM, 6, false, true));
    CHECK(finds(m, f1.desc + 5 * DIM, 6, true, true));
    gl_map_close(m);
  } else {
    fprintf(stderr, "  %s\n", err);
  }
  char *text = inspect_text(one, 0);
  CHECK_CONTAINS(text, "verify      ok");
  CHECK_CONTAINS(text, "2020-08-31");
  char want[64];
  snprintf(want, sizeof want, "%llu tiles", (unsigned long long)s1.tiles);
  CHECK_CONTAINS(text, want);
  CHECK(text && !strstr(text, "years "));
  free(text);

  /* A two-year pack whose manifest lost tiling.years reads as one year:
   * the index holds twice the vectors that says, which opening catches. */
  j = read_manifest(two);
  cJSON *tiling = cJSON_GetObjectItemCaseSensitive(j, "tiling");
  cJSON_DeleteItemFromObjectCaseSensitive(tiling, "years");
  write_manifest(two, j);
  m = (struct gl_map *)1;
  CHECK_EQ_INT(gl_map_open(two, MODEL, &m, err, sizeof err), GL_EFORMAT);
  CHECK(m == NULL);
  CHECK_CONTAINS(err, "index.faiss holds");
  /* Years must be the sources. */
  cJSON_AddNumberToObject(tiling, "years", 3);
  write_manifest(two, j);
  CHECK_EQ_INT(gl_map_open(two, MODEL, &m, err, sizeof err), GL_EFORMAT);
  CHECK_CONTAINS(err, "tiling.years is 3 but sources lists 2");
  cJSON_ReplaceItemInObjectCaseSensitive(tiling, "years", cJSON_CreateNumber(0));
  write_manifest(two, j);
  CHECK_EQ_INT(gl_map_open(two, MODEL, &m, err, sizeof err), GL_EFORMAT);
  CHECK_CONTAINS(err, "tiling.years must be");
  cJSON_ReplaceItemInObjectCaseSensitive(tiling, "years", cJSON_CreateNumber(2));
  write_manifest(two, j);
  CHECK_EQ_INT(gl_map_open(two, MODEL, &m, err, sizeof err), 0);
  gl_map_close(m);
  cJSON_Delete(j);
done:
  free(f1.desc);
  free(f2.desc);
  free(one);
  free(two);
}

int main(int argc, char **argv) {
  naip_dir = argc > 1 ? argv[1] : "data/naip";
  naip2020 = mt_join(naip_dir, F2020);
  naip2009 = mt_join(naip_dir, F2009);
  naip2010 = mt_join(naip_dir, "m_4709963_se_14_1_20100629.tif");
  if (!mt_exists(naip2020) || !mt_exists(naip2009) || !mt_exists(naip2010)) {
    fprintf(stderr, "NAIP test data not found in %s\n", naip_dir);
    return 1;
  }
  tmp = mt_tmpdir("map-years");
  if (!tmp)
    return 1;
  gl__map_gdal_init();
  CPLPushErrorHandler(CPLQuietErrorHandler);
  RUN(test_two_years);
  RUN(test_partial_years);
  RUN(test_many_years);
  RUN(test_old_manifest);
  CPLPopErrorHandler();
  if (!gl_test_failures)
    gl__map_rmtree(tmp);
  else
    fprintf(stderr, "left %s for inspection\n", tmp);
  free(naip2020);
  free(naip2009);
  free(naip2010);
  free(tmp);
  return TEST_END();
}
