/* Map builds restricted to a bounding box (gl_map_build_opts.bbox, `geoloc
 * map build --bbox`), on the real 2020 NAIP raster with a stand-in encoder
 * (no model needed).
 *
 * A full build gives every grid tile and its centre. A build with a box
 * over the east half must then hold exactly the full build's tiles whose
 * centre lies in the box (edges included: the box's south, north and east
 * edges are the extreme tile centres themselves), with the same centres;
 * its progress totals count only those tiles; the manifest records the box.
 * Refused: a box that is empty, reversed or out of range, and a box that
 * keeps no tile (the error names the box).
 *
 * Argument: NAIP_DIR. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <cpl_error.h>

#include "core/err.h"
#include "map/map.h"
#include "map/map_internal.h"
#include "map_test_util.h"
#include "test.h"

#define DIM 12
#define TILE_PX 32

static char *tmp, *naip2020;

/* A 2x2 grid of mean colours, mean removed, L2-normalised. */
static int thumb_encode(void *ctx, const struct gl_image *images, uint32_t n, float *out) {
  (void)ctx;
  for (uint32_t i = 0; i < n; i++) {
    float *d = out + (size_t)i * DIM;
    double mean = 0, ss = 0;
    for (int k = 0; k < DIM; k++) {
      int cell = k / 3, c = k % 3, cx = cell % 2, cy = cell / 2;
      double s = 0;
      for (int y = 0; y < TILE_PX / 2; y++)
        for (int x = 0; x < TILE_PX / 2; x++)
          s +=
              images[i]
                  .rgb[((size_t)(cy * TILE_PX / 2 + y) * TILE_PX + (size_t)(cx * TILE_PX / 2 + x)) *
                           3 +
                       (size_t)c];
      d[k] = (float)s;
      mean += s / DIM;
    }
    for (int k = 0; k < DIM; k++) {
      d[k] -= (float)mean;
      ss += (double)d[k] * d[k];
    }
    if (ss == 0) {
      d[0] = 1;
      continue;
    }
    for (int k = 0; k < DIM; k++)
      d[k] = (float)(d[k] / sqrt(ss));
  }
  return 0;
}

struct prog {
  uint64_t total, done, skipped, calls;
};

static void on_progress(void *ctx, const struct gl_map_progress *p) {
  struct prog *pr = ctx;
  if (pr->calls++ && p->total != pr->total)
    pr->total = UINT64_MAX; /* the total changed during the build */
  else
    pr->total = p->total;
  pr->done = p->done;
  pr->skipped = p->skipped;
}

static int build(const char *out, const double *bbox, struct prog *pr,
                 struct gl_map_build_stats *st, char *err, size_t errlen) {
  struct gl_map_encoder e = {
      .width = TILE_PX, .height = TILE_PX, .dim = DIM, .max_batch = 5, .encode = thumb_encode};
  memset(e.model_sha256, 'c', 64);
  const char *orthos[] = {naip2020};
  struct gl_map_build_opts o = {.orthos = orthos,
                                .n_orthos = 1,
                                .tile_m = 320,
                                .stride_m = 160,
                                .out = out,
                                .progress_cb = on_progress,
                                .progress_ctx = pr};
  if (bbox) {
    o.has_bbox = true;
    memcpy(o.bbox, bbox, sizeof o.bbox);
  }
  return gl_map_build(&o, &e, st, err, errlen);
}

/* Tile centres of a pack, by id. */
static size_t centres(const char *pack, double **lat, double **lon) {
  char err[512];
  struct gl_map *m = NULL;
  if (!CHECK_EQ_INT(gl_map_open(pack, NULL, &m, err, sizeof err), 0))
    return 0;
  size_t n = gl_map_tile_count(m);
  *lat = calloc(n, sizeof **lat);
  *lon = calloc(n, sizeof **lon);
  for (size_t i = 0; i < n; i++) {
    struct gl_map_tile t;
    CHECK_EQ_INT(gl_map_tile_get(m, (int64_t)i + 1, &t), 0);
    (*lat)[i] = t.lat;
    (*lon)[i] = t.lon;
  }
  gl_map_close(m);
  return n;
}

static void test_east_half(void) {
  char err[1024] = "";
  char *full = mt_join(tmp, "full.map"), *east = mt_join(tmp, "east.map");
  struct gl_map_build_stats st;
  struct prog pr = {0};
  if (!CHECK_EQ_INT(build(full, NULL, &pr, &st, err, sizeof err), 0)) {
    fprintf(stderr, "  %s\n", err);
    return;
  }
  double *flat = NULL, *flon = NULL;
  size_t nf = centres(full, &flat, &flon);
  CHECK(nf > 20);
  double lat0 = 90, lat1 = -90, lon0 = 180, lon1 = -180;
  for (size_t i = 0; i < nf; i++) {
    lat0 = fmin(lat0, flat[i]);
    lat1 = fmax(lat1, flat[i]);
    lon0 = fmin(lon0, flon[i]);
    lon1 = fmax(lon1, flon[i]);
  }
  /* The east half; the other three edges pass exactly through extreme
   * centres, which an inclusive box keeps. */
  double box[4] = {(lon0 + lon1) / 2, lat0, lon1, lat1};
  size_t want = 0;
  for (size_t i = 0; i < nf; i++)
    want += flon[i] >= box[0] && flon[i] <= box[2] && flat[i] >= box[1] && flat[i] <= box[3];
  CHECK(want > 0 && want < nf);

  pr = (struct prog){0};
  if (!CHECK_EQ_INT(build(east, box, &pr, &st, err, sizeof err), 0)) {
    fprintf(stderr, "  %s\n", err);
    goto done;
  }
  CHECK_EQ_U64(st.tiles, want);
  CHECK_EQ_U64(pr.total, want + st.skipped);
  CHECK_EQ_U64(pr.done, pr.total);
  double *elat = NULL, *elon = NULL;
  size_t ne = centres(east, &elat, &elon);
  CHECK_EQ_U64(ne, want);
  size_t outside = 0, unmatched = 0;
  for (size_t i = 0; i < ne; i++) {
    outside += !(elon[i] >= box[0] && elon[i] <= box[2] && elat[i] >= box[1] && elat[i] <= box[3]);
    bool found = false;
    for (size_t j = 0; j < nf && !found; j++)
      found = flat[j] == elat[i] && flon[j] == elon[i];
    unmatched += !found;
  }
  CHECK_EQ_U64(outside, 0);
  CHECK_EQ_U64(unmatched, 0);
  free(elat);
  free(elon);

  /* The manifest records the box. */
  char *mpath = mt_join(east, "manifest.json"), *text = NULL;
  size_t len;
  CHECK_EQ_INT(gl__map_read_file(mpath, 1 << 20, &text, &len), 0);
  cJSON *j = text ? cJSON_Parse(text) : NULL;
  const cJSON *b =
      cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "tiling"), "bbox");
  if (CHECK(cJSON_IsArray(b) && cJSON_GetArraySize(b) == 4))
    for (int i = 0; i < 4; i++)
      CHECK(cJSON_GetArrayItem(b, i)->valuedouble == box[i]);
  cJSON_Delete(j);
  free(text);
  free(mpath);
  /* The full build's manifest has none. */
  mpath = mt_join(full, "manifest.json");
  text = NULL;
  CHECK_EQ_INT(gl__map_read_file(mpath, 1 << 20, &text, &len), 0);
  CHECK(text && !strstr(text, "\"bbox\""));
  free(text);
  free(mpath);
done:
  free(flat);
  free(flon);
  free(full);
  free(east);
}

static void expect_refused(const double box[4], const char *needle) {
  char err[1024] = "";
  char *out = mt_join(tmp, "bad.map");
  struct gl_map_build_stats st;
  struct prog pr = {0};
  CHECK_EQ_INT(build(out, box, &pr, &st, err, sizeof err), GL_EINVAL);
  CHECK_CONTAINS(err, needle);
  CHECK(!mt_exists(out));
  free(out);
}

static void test_refusals(void) {
  expect_refused((const double[]){-99.1, 47.0, -99.2, 47.1}, "west < east");
  expect_refused((const double[]){-99.2, 47.1, -99.1, 47.0}, "south < north");
  expect_refused((const double[]){-99.2, 47.0, -99.2, 47.1}, "west < east");
  expect_refused((const double[]){-181, 47.0, -99.1, 47.1}, "out of range");
  expect_refused((const double[]){-99.2, 47.0, -99.1, 91}, "out of range");
  expect_refused((const double[]){-99.2, NAN, -99.1, 47.1}, "south is not a number");
  /* Valid, but nowhere near the raster: the error names the box. */
  expect_refused((const double[]){10, 45, 11, 46}, "bbox 10,45,11,46");
  expect_refused((const double[]){10, 45, 11, 46}, "no tile centre");
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: test_map_bbox NAIP_DIR\n");
    return 1;
  }
  tmp = mt_tmpdir("map-bbox");
  if (!tmp)
    return 1;
  naip2020 = mt_join(argv[1], "m_4709963_se_14_1_20200831.tif");
  gl__map_gdal_init();
  CPLPushErrorHandler(CPLQuietErrorHandler);
  RUN(test_east_half);
  RUN(test_refusals);
  CPLPopErrorHandler();
  if (!gl_test_failures)
    gl__map_rmtree(tmp);
  else
    fprintf(stderr, "left %s for inspection\n", tmp);
  free(naip2020);
  free(tmp);
  return TEST_END();
}
