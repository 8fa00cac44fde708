/* Map packs on real data, with a stand-in encoder (no model needed).
 *
 * The encoder here turns each tile into a 192-float descriptor (an 8x8 RGB
 * thumbnail, mean removed, L2-normalised) and remembers every descriptor
 * and tile image it produced, in order, which is the order of tile ids. The
 * checks:
 *   - the tile grid of two NAIP years (EPSG:26914, origins a metre apart,
 *     so the same places: one tile each, holding both years) against an
 *     independent computation from GDAL's geotransform, and each tile
 *     centre against GDAL's own OCTTransform to EPSG:4326;
 *   - tile pixels placed by coordinates: synthetic rasters whose pixel
 *     values are their own column and row, in UTM and reprojected to
 *     EPSG:4326 with an alpha band (the warped path, nodata skipping);
 *   - opening (manifest, checksums, model), searching a tile's own
 *     descriptor of either year (first), batches, priors (only tiles in the circle, all of
 *     them), several FAISS index types, tiles encoded at four headings;
 *   - refusals: flipped bytes, missing files, another model, bad manifests,
 *     a target that is not a pack, bad sources and index strings;
 *   - a build killed with SIGKILL leaves no pack and no temporary
 *     directory that the next build does not clean, and never harms the pack
 *     it was replacing; rebuilding replaces a pack atomically. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cpl_conv.h>
#include <geodesic.h>
#include <gdal.h>
#include <gdalwarper.h>
#include <ogr_srs_api.h>
#include <sqlite3.h>

#include "core/err.h"
#include "map/map.h"
#include "map/map_internal.h"
#include "map_test_util.h"
#include "test.h"

#define DIM 192
#define TILE_PX 64

static const char *naip_dir;
static char *tmp;
static char *naip2020, *naip2009;
/* sha256sum of the files in data/naip (see data/README.md). */
static const char SHA2020[] = "e8eb18475678d16a98a44f28b1c777fd0b2c56e9c8afed302a5e071e2e237f90";
static const char SHA2009[] = "568f0d3dc3118d6df63510361db6c627b81541ad4c65122caf54e18030fc7100";
static const char MODEL_A[] = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
static const char MODEL_B[] = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* RUN with the time each test took, to keep the suite fast. */
#define TRUN(fn)                                                                                   \
  do {                                                                                             \
    double t0_ = now_s();                                                                          \
    RUN(fn);                                                                                       \
    fprintf(stderr, "     %.2f s\n", now_s() - t0_);                                             \
  } while (0)

/* --- the stand-in encoder --------------------------------------------------- */

struct fake {
  float *desc;      /* every descriptor produced, in order */
  uint8_t *pixels;  /* every tile image produced, in order */
  size_t n, cap;
  uint32_t calls;
  int notify_fd;    /* >= 0: after hang_after calls, write a byte and hang */
  uint32_t hang_after;
};

static void fake_descriptor(const uint8_t *rgb, float *out) {
  /* 8x8 cells of 8x8 pixels, 3 channels. */
  double mean = 0;
  for (int cy = 0; cy < 8; cy++)
    for (int cx = 0; cx < 8; cx++)
      for (int c = 0; c < 3; c++) {
        double s = 0;
        for (int y = 0; y < 8; y++)
          for (int x = 0; x < 8; x++)
            s += rgb[((size_t)(cy * 8 + y) * TILE_PX + (size_t)(cx * 8 + x)) * 3 + (size_t)c];
        out[(cy * 8 + cx) * 3 + c] = (float)(s / 64.0);
        mean += s / 64.0;
      }
  mean /= DIM;
  double ss = 0;
  for (int i = 0; i < DIM; i++) {
    out[i] -= (float)mean;
    ss += (double)out[i] * out[i];
  }
  double inv = ss > 0 ? 1.0 / sqrt(ss) : 0;
  if (ss == 0)
    out[0] = 1; /* a flat tile still gets a unit vector */
  for (int i = 0; i < DIM && ss > 0; i++)
    out[i] = (float)(out[i] * inv);
}

static int fake_encode(void *ctx, const struct gl_image *images, uint32_t n, float *out) {
  struct fake *f = ctx;
  if (f->notify_fd >= 0 && f->calls == f->hang_after) {
    char c = 'x';
    if (write(f->notify_fd, &c, 1) != 1)
      _exit(3);
    for (;;)
      pause(); /* until SIGKILL */
  }
  f->calls++;
  if (f->n + n > f->cap) {
    size_t cap = f->cap ? f->cap * 2 : 512;
    while (cap < f->n + n)
      cap *= 2;
    f->desc = realloc(f->desc, cap * DIM * sizeof(float));
    f->pixels = realloc(f->pixels, cap * TILE_PX * TILE_PX * 3);
    f->cap = cap;
  }
  for (uint32_t i = 0; i < n; i++) {
    if (images[i].width != TILE_PX || images[i].height != TILE_PX)
      return GL_EINVAL;
    fake_descriptor(images[i].rgb, out + (size_t)i * DIM);
    memcpy(f->desc + (f->n + i) * DIM, out + (size_t)i * DIM, DIM * sizeof(float));
    memcpy(f->pixels + (f->n + i) * TILE_PX * TILE_PX * 3, images[i].rgb, TILE_PX * TILE_PX * 3);
  }
  f->n += n;
  return 0;
}

static struct gl_map_encoder fake_encoder(struct fake *f, uint32_t batch, const char *sha) {
  struct gl_map_encoder e = {.width = TILE_PX, .height = TILE_PX, .dim = DIM, .max_batch = batch,
                             .encode = fake_encode, .ctx = f};
  snprintf(e.model_sha256, sizeof e.model_sha256, "%s", sha);
  return e;
}

static void fake_fini(struct fake *f) {
  free(f->desc);
  free(f->pixels);
  memset(f, 0, sizeof *f);
}

static int build(const char *out, const char *const *orthos, uint32_t n, double tile, double stride,
                 const char *index, struct fake *f, uint32_t batch, struct gl_map_build_stats *st,
                 char *err, size_t errlen) {
  struct gl_map_encoder e = fake_encoder(f, batch, MODEL_A);
  struct gl_map_build_opts o = {.orthos = orthos, .n_orthos = n, .tile_m = tile,
                                .stride_m = stride, .index_type = index, .out = out};
  return gl_map_build(&o, &e, st, err, errlen);
}

/* --- the NAIP pack shared by several tests ------------------------------------ */

static char *naip_pack;
static struct fake naip_fake = {.notify_fd = -1};
static uint64_t naip_tiles;
/* The two-year pack's descriptor of tile index t (id t + 1), year y (0:
 * 2020, 1: 2009): the encoder sees each place's years in turn. */
#define NAIP_DESC(t, y) (naip_fake.desc + ((size_t)(t) * 2 + (size_t)(y)) * DIM)

/* Tile columns and rows of a north-up raster, computed here from GDAL's
 * geotransform (not from the library's code): tile corners on multiples
 * of stride, wholly inside the raster. */
struct expect_grid {
  long c0, nc, rtop, nr;
  double gt[6];
};

static void expect_grid(const char *path, double tile, double stride, struct expect_grid *g) {
  GDALDatasetH ds = GDALOpen(path, GA_ReadOnly);
  CHECK(ds != NULL);
  GDALGetGeoTransform(ds, g->gt);
  double xmin = g->gt[0], xmax = xmin + GDALGetRasterXSize(ds) * g->gt[1];
  double ymax = g->gt[3], ymin = ymax + GDALGetRasterYSize(ds) * g->gt[5];
  GDALClose(ds);
  long c0 = (long)ceil(xmin / stride), c1 = (long)floor((xmax - tile) / stride);
  long r1 = (long)floor((ymax - tile) / stride), r0 = (long)ceil(ymin / stride);
  g->c0 = c0;
  g->nc = c1 - c0 + 1;
  g->rtop = r1;
  g->nr = r1 - r0 + 1;
}

static void test_naip_build(void) {
  naip_pack = mt_join(tmp, "naip.map");
  const char *orthos[] = {naip2020, naip2009};
  char err[1024] = "";
  struct gl_map_build_stats st = {0};
  /* Batch 7 divides nothing here: the last batch is partial. */
  int rc = build(naip_pack, orthos, 2, 320, 160, NULL, &naip_fake, 7, &st, err, sizeof err);
  if (!CHECK_EQ_INT(rc, 0)) {
    fprintf(stderr, "  %s\n", err);
    return;
  }
  struct expect_grid g20, g09;
  expect_grid(naip2020, 320, 160, &g20);
  expect_grid(naip2009, 320, 160, &g09);
  /* 4670 m x 3615 m: 28 columns and 20 rows of 320 m tiles every 160 m. */
  CHECK_EQ_INT(g20.nc, 28);
  CHECK_EQ_INT(g20.nr, 20);
  /* The years' origins differ by a metre, their places do not: one tile
   * per place, each encoded once per year. */
  CHECK(g09.c0 == g20.c0 && g09.nc == g20.nc && g09.rtop == g20.rtop && g09.nr == g20.nr);
  naip_tiles = (uint64_t)(g20.nc * g20.nr);
  CHECK_EQ_U64(st.tiles, naip_tiles);
  CHECK_EQ_U64(st.skipped, 0);
  CHECK_EQ_U64(naip_fake.n, 2 * naip_tiles);

  /* Tile rows in order, each centre against GDAL's own transform. */
  OGRSpatialReferenceH utm = OSRNewSpatialReference(NULL), wgs = OSRNewSpatialReference(NULL);
  OSRImportFromEPSG(utm, 26914);
  OSRImportFromEPSG(wgs, 4326);
  OSRSetAxisMappingStrategy(utm, OAMS_TRADITIONAL_GIS_ORDER);
  OSRSetAxisMappingStrategy(wgs, OAMS_TRADITIONAL_GIS_ORDER);
  OGRCoordinateTransformationH ct = OCTNewCoordinateTransformation(utm, wgs);
  CHECK(ct != NULL);
  char *dbp = mt_join(naip_pack, "tiles.sqlite");
  sqlite3 *db = NULL;
  CHECK_EQ_INT(sqlite3_open_v2(dbp, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
  sqlite3_stmt *q = NULL;
  CHECK_EQ_INT(sqlite3_prepare_v2(db,
                                  "SELECT id, lat, lon, min_lat, max_lat, min_lon, max_lon, grid_x, "
                                  "grid_y, m_per_px, source, capture_date FROM tiles ORDER BY id",
                                  -1, &q, NULL),
               SQLITE_OK);
  int64_t id = 0;
  double worst = 0;
  int bad_rows = 0;
  const struct expect_grid *g = &g20;
  for (long r = 0; r < g->nr; r++)
    for (long c = 0; c < g->nc; c++) {
      if (sqlite3_step(q) != SQLITE_ROW) {
        bad_rows++;
        continue;
      }
      id++;
      double x = (double)(g->c0 + c) * 160 + 160, y = (double)(g->rtop - r) * 160 + 160;
      double lon = x, lat = y;
      OCTTransform(ct, 1, &lon, &lat, NULL);
      double glat = sqlite3_column_double(q, 1), glon = sqlite3_column_double(q, 2);
      worst = fmax(worst, fmax(fabs(glat - lat), fabs(glon - lon)));
      /* Source and date: the first year that covers the place. */
      if (sqlite3_column_int64(q, 0) != id || sqlite3_column_double(q, 7) != x ||
          sqlite3_column_double(q, 8) != y || sqlite3_column_double(q, 9) != 5.0 ||
          !(sqlite3_column_double(q, 3) < glat && glat < sqlite3_column_double(q, 4)) ||
          !(sqlite3_column_double(q, 5) < glon && glon < sqlite3_column_double(q, 6)) ||
          strcmp((const char *)sqlite3_column_text(q, 10), "m_4709963_se_14_1_20200831.tif") ||
          strcmp((const char *)sqlite3_column_text(q, 11), "2020-08-31"))
        bad_rows++;
    }
  CHECK_EQ_INT(bad_rows, 0);
  CHECK(sqlite3_step(q) == SQLITE_DONE);
  /* Same PROJ underneath, same operation: nanodegrees at most. */
  CHECK(worst < 1e-9);
  if (worst >= 1e-9)
    fprintf(stderr, "  worst centre difference %.3g deg\n", worst);
  sqlite3_finalize(q);
  /* The R*Tree holds every tile with bounds containing its centre. */
  CHECK_EQ_INT(sqlite3_prepare_v2(db,
                                  "SELECT count(*) FROM tiles t JOIN tiles_rtree r ON r.id = t.id "
                                  "WHERE r.min_lat <= t.lat AND t.lat <= r.max_lat AND "
                                  "r.min_lon <= t.lon AND t.lon <= r.max_lon",
                                  -1, &q, NULL),
               SQLITE_OK);
  CHECK(sqlite3_step(q) == SQLITE_ROW);
  CHECK_EQ_U64(sqlite3_column_int64(q, 0), naip_tiles);
  sqlite3_finalize(q);
  sqlite3_close(db);
  free(dbp);
  OCTDestroyCoordinateTransformation(ct);
  OSRDestroySpatialReference(utm);
  OSRDestroySpatialReference(wgs);

  /* Each tile holds both years. */
  struct gl_map *m = NULL;
  CHECK_EQ_INT(gl_map_open(naip_pack, MODEL_A, &m, err, sizeof err), 0);
  if (m) {
    struct gl_map_tile a;
    CHECK_EQ_INT(gl_map_years(m), 2);
    CHECK_EQ_INT(gl_map_rotations(m), 1);
    CHECK_EQ_INT(gl_map_tile_get(m, 1, &a), 0);
    CHECK_EQ_STR(a.capture_date, "2020-08-31");
    CHECK_EQ_STR(a.source, "m_4709963_se_14_1_20200831.tif");
    CHECK_EQ_INT(gl_map_tile_get(m, 0, &a), GL_EINVAL);
    CHECK_EQ_INT(gl_map_tile_get(m, (int64_t)naip_tiles + 1, &a), GL_EINVAL);
    gl_map_close(m);
  }

  /* The manifest records what the pack depends on. */
  char *mp = mt_join(naip_pack, "manifest.json"), *text = NULL;
  size_t len;
  CHECK_EQ_INT(gl__map_read_file(mp, 1 << 20, &text, &len), 0);
  CHECK_CONTAINS(text, SHA2020);
  CHECK_CONTAINS(text, SHA2009);
  CHECK_CONTAINS(text, MODEL_A);
  CHECK_CONTAINS(text, "\"crs\":\t\"EPSG:26914\"");
  CHECK_CONTAINS(text, "\"capture_date\":\t\"2020-08-31\"");
  CHECK_CONTAINS(text, "\"capture_date\":\t\"2009-08-18\"");
  CHECK_CONTAINS(text, "\"years\":\t2");
  CHECK_CONTAINS(text, "\"index_type\":\t\"Flat\"");
  CHECK_CONTAINS(text, "\"warped\":\tfalse"); /* same CRS: read directly, no warp */
  free(text);
  free(mp);
}

/* --- tiles placed by coordinates: synthetic rasters ------------------------------ */

/* Pixel value = column (R) and row (G) of a 200 x 160 raster at 5 m in
 * EPSG:32614 whose origin (300003, 5200007) is not on the 160 m grid.
 * It lies 2.6 degrees west of the zone's central meridian, where grid
 * north and true north differ by 1.9 degrees, so its reprojection to
 * EPSG:4326 and back has nodata collars wider than a pixel. */
static char *make_ramp(const char *name) {
  char *path = mt_join(tmp, name);
  GDALDriverH drv = GDALGetDriverByName("GTiff");
  GDALDatasetH ds = GDALCreate(drv, path, 200, 160, 3, GDT_Byte, NULL);
  double gt[6] = {300003, 5, 0, 5200007, 0, -5};
  GDALSetGeoTransform(ds, gt);
  OGRSpatialReferenceH srs = OSRNewSpatialReference(NULL);
  OSRImportFromEPSG(srs, 32614);
  GDALSetSpatialRef(ds, srs);
  OSRDestroySpatialReference(srs);
  uint8_t *buf = malloc(200 * 160);
  for (int b = 1; b <= 3; b++) {
    for (int r = 0; r < 160; r++)
      for (int c = 0; c < 200; c++)
        buf[r * 200 + c] = (uint8_t)(b == 1 ? c : b == 2 ? r : 100);
    CHECK(GDALRasterIO(GDALGetRasterBand(ds, b), GF_Write, 0, 0, 200, 160, buf, 200, 160,
                       GDT_Byte, 0, 0) == CE_None);
  }
  free(buf);
  GDALClose(ds);
  return path;
}

/* The ramp reprojected to EPSG:4326 with an alpha band marking the
 * collars of the reprojection as nodata. */
static char *make_ramp_wgs84(const char *src_path, const char *name) {
  char *path = mt_join(tmp, name);
  GDALDatasetH src = GDALOpen(src_path, GA_ReadOnly);
  OGRSpatialReferenceH wgs = OSRNewSpatialReference(NULL);
  OSRImportFromEPSG(wgs, 4326);
  char *wkt = NULL;
  OSRExportToWkt(wgs, &wkt);
  GDALWarpOptions *wo = GDALCreateWarpOptions();
  wo->nBandCount = 3;
  wo->panSrcBands = CPLMalloc(3 * sizeof(int));
  wo->panDstBands = CPLMalloc(3 * sizeof(int));
  for (int i = 0; i < 3; i++)
    wo->panSrcBands[i] = wo->panDstBands[i] = i + 1;
  wo->nDstAlphaBand = 4;
  GDALDatasetH vrt = GDALAutoCreateWarpedVRTEx(src, NULL, wkt, GRA_Bilinear, 0.0, wo, NULL);
  GDALDestroyWarpOptions(wo);
  CHECK(vrt != NULL);
  const char *co[] = {"PHOTOMETRIC=RGB", "ALPHA=YES", NULL};
  GDALDatasetH out =
      GDALCreateCopy(GDALGetDriverByName("GTiff"), path, vrt, FALSE, (char **)co, NULL, NULL);
  CHECK(out != NULL);
  if (out)
    GDALClose(out);
  GDALClose(vrt);
  GDALClose(src);
  CPLFree(wkt);
  OSRDestroySpatialReference(wgs);
  return path;
}

/* Checks every encoded tile's R and G against the column and row the
 * ramp has at each tile pixel's centre. Returns the worst difference. */
static double ramp_error(struct gl_map *m, const struct fake *f) {
  double worst = 0;
  for (size_t t = 0; t < f->n; t++) {
    /* The tile's lower-left corner, from its centre in the grid CRS,
     * which tiles.sqlite does not expose through the API: recompute it
     * from the tile's WGS84 centre with GDAL. */
    struct gl_map_tile tile;
    if (gl_map_tile_get(m, (int64_t)t + 1, &tile) != 0)
      return 1e9;
    OGRSpatialReferenceH utm = OSRNewSpatialReference(NULL), wgs = OSRNewSpatialReference(NULL);
    OSRImportFromEPSG(utm, 32614);
    OSRImportFromEPSG(wgs, 4326);
    OSRSetAxisMappingStrategy(utm, OAMS_TRADITIONAL_GIS_ORDER);
    OSRSetAxisMappingStrategy(wgs, OAMS_TRADITIONAL_GIS_ORDER);
    OGRCoordinateTransformationH ct = OCTNewCoordinateTransformation(wgs, utm);
    double x = tile.lon, y = tile.lat;
    OCTTransform(ct, 1, &x, &y, NULL);
    OCTDestroyCoordinateTransformation(ct);
    OSRDestroySpatialReference(utm);
    OSRDestroySpatialReference(wgs);
    double x0 = round(x - 160), y1 = round(y + 160); /* tile 320 m */
    const uint8_t *px = f->pixels + t * TILE_PX * TILE_PX * 3;
    for (int i = 0; i < TILE_PX; i++)
      for (int j = 0; j < TILE_PX; j++) {
        double gx = x0 + (j + 0.5) * 5, gy = y1 - (i + 0.5) * 5;
        double col = (gx - 300003) / 5 - 0.5, row = (5200007 - gy) / 5 - 0.5;
        const uint8_t *p = px + ((size_t)i * TILE_PX + (size_t)j) * 3;
        worst = fmax(worst, fmax(fabs(p[0] - col), fabs(p[1] - row)));
      }
  }
  return worst;
}

static void test_ramp_placement(void) {
  char *ramp = make_ramp("ramp_utm.tif");
  char *out = mt_join(tmp, "ramp.map");
  const char *orthos[] = {ramp};
  struct fake f = {.notify_fd = -1};
  struct gl_map_build_stats st;
  char err[1024] = "";
  int rc = build(out, orthos, 1, 320, 160, NULL, &f, 4, &st, err, sizeof err);
  if (CHECK_EQ_INT(rc, 0)) {
    /* x 300003..301003, y 5199207..5200007: lower-left corners at x =
     * 300160..300640 (4 columns) and y = 5199360..5199680 (3 rows). */
    CHECK_EQ_U64(st.tiles, 12);
    struct gl_map *m = NULL;
    CHECK_EQ_INT(gl_map_open(out, MODEL_A, &m, err, sizeof err), 0);
    if (m) {
      double e = ramp_error(m, &f);
      CHECK(e <= 0.51); /* rounding to bytes only */
      fprintf(stderr, "  worst ramp error %.3f\n", e);
      gl_map_close(m);
    }
  } else {
    fprintf(stderr, "  %s\n", err);
  }
  fake_fini(&f);

  /* The same ramp in EPSG:4326: warped onto the UTM zone 14 grid, collars
   * skipped through the alpha band, values still where they belong. */
  char *ramp4326 = make_ramp_wgs84(ramp, "ramp_4326.tif");
  char *out2 = mt_join(tmp, "ramp4326.map");
  const char *orthos2[] = {ramp4326};
  struct fake f2 = {.notify_fd = -1};
  rc = build(out2, orthos2, 1, 320, 160, NULL, &f2, 4, &st, err, sizeof err);
  if (CHECK_EQ_INT(rc, 0)) {
    fprintf(stderr, "  warped: %llu tiles, %llu skipped\n", (unsigned long long)st.tiles,
            (unsigned long long)st.skipped);
    CHECK(st.tiles >= 6 && st.tiles <= 12);
    CHECK(st.skipped > 0);
    struct gl_map *m = NULL;
    CHECK_EQ_INT(gl_map_open(out2, MODEL_A, &m, err, sizeof err), 0);
    if (m) {
      double e = ramp_error(m, &f2);
      CHECK(e <= 1.6); /* two bilinear resamplings */
      fprintf(stderr, "  worst warped ramp error %.3f\n", e);
      gl_map_close(m);
    }
    char *mp = mt_join(out2, "manifest.json"), *text = NULL;
    size_t len;
    if (gl__map_read_file(mp, 1 << 20, &text, &len) == 0) {
      CHECK_CONTAINS(text, "\"crs\":\t\"EPSG:32614\"");
      CHECK_CONTAINS(text, "\"warped\":\ttrue");
    }
    free(text);
    free(mp);
  } else {
    fprintf(stderr, "  %s\n", err);
  }
  fake_fini(&f2);
  free(out2);
  free(ramp4326);
  free(out);
  free(ramp);
}

/* --- search ---------------------------------------------------------------------- */

static void test_search_own(void) {
  char err[1024] = "";
  struct gl_map *m = NULL;
  if (!CHECK_EQ_INT(gl_map_open(naip_pack, MODEL_A, &m, err, sizeof err), 0)) {
    fprintf(stderr, "  %s\n", err);
    return;
  }
  CHECK_EQ_U64(gl_map_tile_count(m), naip_tiles);
  CHECK_EQ_INT(gl_map_descriptor_dim(m), DIM);
  CHECK_EQ_STR(gl_map_model_sha256(m), MODEL_A);
  CHECK_EQ_STR(gl_map_index_type(m), "Flat");
  CHECK(gl_map_tile_m(m) == 320 && gl_map_stride_m(m) == 160);
  /* A batch of every 37th tile's own descriptor, of either year: each
   * finds itself first with score 1, and the next hits in decreasing order. */
  enum { K = 5 };
  uint32_t n = 0;
  float *q = malloc(naip_tiles * DIM * sizeof(float));
  int64_t *want = malloc(naip_tiles * sizeof *want);
  for (uint64_t t = 0; t < naip_tiles; t += 37) {
    memcpy(q + (size_t)n * DIM, NAIP_DESC(t, n % 2), DIM * sizeof(float));
    want[n++] = (int64_t)t + 1;
  }
  struct gl_map_hit *hits = calloc((size_t)n * K, sizeof *hits);
  uint32_t *counts = calloc(n, sizeof *counts);
  CHECK_EQ_INT(gl_map_search(m, q, n, K, NULL, hits, counts, err, sizeof err), 0);
  int wrong = 0;
  for (uint32_t i = 0; i < n; i++) {
    const struct gl_map_hit *h = hits + (size_t)i * K;
    struct gl_map_tile tile;
    gl_map_tile_get(m, want[i], &tile);
    if (counts[i] != K || h[0].tile_id != want[i] || fabsf(h[0].score - 1.0f) > 1e-4f ||
        h[0].lat != tile.lat || h[0].lon != tile.lon)
      wrong++;
    for (int r = 1; r < K; r++)
      if (h[r].score > h[r - 1].score || h[r].tile_id == h[0].tile_id)
        wrong++;
  }
  CHECK_EQ_INT(wrong, 0);
  /* More than the map holds: every tile, then empty slots. */
  uint32_t kbig = (uint32_t)naip_tiles + 3, c1 = 0;
  struct gl_map_hit *all = calloc(kbig, sizeof *all);
  CHECK_EQ_INT(gl_map_search(m, q, 1, kbig, NULL, all, &c1, err, sizeof err), 0);
  CHECK_EQ_U64(c1, naip_tiles);
  CHECK_EQ_INT(all[kbig - 1].tile_id, -1);
  free(all);
  /* Bad arguments. */
  CHECK_EQ_INT(gl_map_search(m, q, 0, K, NULL, hits, counts, err, sizeof err), GL_EINVAL);
  CHECK_EQ_INT(gl_map_search(m, q, 1, 0, NULL, hits, counts, err, sizeof err), GL_EINVAL);
  free(counts);
  free(hits);
  free(want);
  free(q);
  gl_map_close(m);
}

/* Several threads search one map at once (the daemon's workers do), with
 * and without priors; every answer is the one a lone search gives. */
struct thread_job {
  struct gl_map *m;
  int seed, wrong;
};

static void *search_thread(void *arg) {
  struct thread_job *j = arg;
  unsigned s = (unsigned)j->seed;
  for (int it = 0; it < 40; it++) {
    s = s * 1103515245u + 12345u;
    uint64_t t = (s >> 8) % naip_tiles;
    struct gl_map_tile tile;
    if (gl_map_tile_get(j->m, (int64_t)t + 1, &tile) != 0) {
      j->wrong++;
      continue;
    }
    struct gl_map_prior pr = {tile.lat, tile.lon, it % 2 ? 300.0 : 0.0};
    struct gl_map_hit h[3];
    uint32_t c = 0;
    char err[256];
    if (gl_map_search(j->m, NAIP_DESC(t, it / 2 % 2), 1, 3, &pr, h, &c, err, sizeof err) != 0 ||
        c == 0 || h[0].tile_id != (int64_t)t + 1)
      j->wrong++;
  }
  return NULL;
}

static void test_threads(void) {
  char err[1024] = "";
  struct gl_map *m = NULL;
  if (!CHECK_EQ_INT(gl_map_open(naip_pack, MODEL_A, &m, err, sizeof err), 0))
    return;
  enum { N = 4 };
  pthread_t th[N];
  struct thread_job jobs[N];
  for (int i = 0; i < N; i++) {
    jobs[i] = (struct thread_job){gl_map_ref(m), i + 1, 0};
    CHECK_EQ_INT(pthread_create(&th[i], NULL, search_thread, &jobs[i]), 0);
  }
  gl_map_close(m); /* the threads hold their own references */
  for (int i = 0; i < N; i++) {
    pthread_join(th[i], NULL);
    CHECK_EQ_INT(jobs[i].wrong, 0);
    gl_map_close(jobs[i].m);
  }
}

/* Brute force: the tiles whose centre is within r of (lat, lon). */
static uint32_t tiles_within(struct gl_map *m, double lat, double lon, double r) {
  uint32_t n = 0;
  for (uint64_t id = 1; id <= gl_map_tile_count(m); id++) {
    struct gl_map_tile t;
    gl_map_tile_get(m, (int64_t)id, &t);
    if (gl_map_distance_m(lat, lon, t.lat, t.lon) <= r)
      n++;
  }
  return n;
}

/* descs: tile id t's descriptor at descs + (t - 1) * per_tile * DIM. */
static void check_prior_search(struct gl_map *m, const float *descs, size_t per_tile,
                               const char *what, bool exact) {
  char err[1024] = "";
  struct gl_map_tile centre, far;
  CHECK_EQ_INT(gl_map_tile_get(m, 300, &centre), 0);
  CHECK_EQ_INT(gl_map_tile_get(m, 20, &far), 0);
  double r = 400;
  uint32_t inside = tiles_within(m, centre.lat, centre.lon, r);
  CHECK(inside > 4 && inside < 100);
  /* Three queries in one batch: tile 20's descriptor restricted to a
   * circle that excludes tile 20, tile 300's own with that prior, and tile
   * 20's own with no prior. */
  float q[3 * DIM];
  memcpy(q, descs + 19 * per_tile * DIM, DIM * sizeof(float));
  memcpy(q + DIM, descs + 299 * per_tile * DIM, DIM * sizeof(float));
  memcpy(q + 2 * DIM, descs + 19 * per_tile * DIM, DIM * sizeof(float));
  struct gl_map_prior pr[3] = {{centre.lat, centre.lon, r}, {centre.lat, centre.lon, r}, {0, 0, 0}};
  enum { K = 100 };
  struct gl_map_hit hits[3 * K];
  uint32_t counts[3];
  int rc = gl_map_search(m, q, 3, K, pr, hits, counts, err, sizeof err);
  if (!CHECK_EQ_INT(rc, 0)) {
    fprintf(stderr, "  %s: %s\n", what, err);
    return;
  }
  CHECK(gl_map_distance_m(centre.lat, centre.lon, far.lat, far.lon) > r);
  CHECK_EQ_INT(counts[0], inside);
  CHECK_EQ_INT(counts[1], inside);
  int outside = 0, unordered = 0;
  for (uint32_t i = 0; i < counts[0]; i++) {
    if (gl_map_distance_m(centre.lat, centre.lon, hits[i].lat, hits[i].lon) > r ||
        hits[i].tile_id == 20)
      outside++;
    if (i && hits[i].score > hits[i - 1].score)
      unordered++;
  }
  CHECK_EQ_INT(outside, 0);
  CHECK_EQ_INT(unordered, 0);
  /* A lossy (PQ) index scores the quantized vectors: its own tile need
   * not score 1 nor come first. */
  if (exact) {
    CHECK_EQ_INT(hits[K].tile_id, 300);
    CHECK(fabsf(hits[K].score - 1.0f) < 1e-3f);
  }
  if (exact)
    CHECK_EQ_INT(hits[2 * K].tile_id, 20);
  /* The prior's scores are the scores the unrestricted search gives the
   * same tiles (the candidates are scored against the same vectors). */
  struct gl_map_hit *allh = calloc(gl_map_tile_count(m), sizeof *allh);
  uint32_t c = 0;
  CHECK_EQ_INT(gl_map_search(m, q, 1, (uint32_t)gl_map_tile_count(m), NULL, allh, &c, err,
                             sizeof err),
               0);
  int mismatch = 0;
  for (uint32_t i = 0; i < counts[0]; i++)
    for (uint32_t j = 0; j < c; j++)
      if (allh[j].tile_id == hits[i].tile_id && fabsf(allh[j].score - hits[i].score) > 2e-3f)
        mismatch++;
  CHECK_EQ_INT(mismatch, 0);
  free(allh);
  /* k smaller than the candidates: the best k of them. */
  struct gl_map_hit few[3];
  uint32_t nf = 0;
  CHECK_EQ_INT(gl_map_search(m, q, 1, 3, pr, few, &nf, err, sizeof err), 0);
  CHECK_EQ_INT(nf, 3);
  CHECK(few[0].tile_id == hits[0].tile_id && few[2].tile_id == hits[2].tile_id);
  /* A circle with no tile centre in it. */
  struct gl_map_prior none = {centre.lat + 1.0, centre.lon, 1000};
  CHECK_EQ_INT(gl_map_search(m, q, 1, 3, &none, few, &nf, err, sizeof err), 0);
  CHECK_EQ_INT(nf, 0);
  CHECK_EQ_INT(few[0].tile_id, -1);
  struct gl_map_prior badp = {95, 0, 1000};
  CHECK_EQ_INT(gl_map_search(m, q, 1, 3, &badp, few, &nf, err, sizeof err), GL_EINVAL);
}

static void test_prior(void) {
  char err[1024] = "";
  struct gl_map *m = NULL;
  if (!CHECK_EQ_INT(gl_map_open(naip_pack, NULL, &m, err, sizeof err), 0))
    return;
  check_prior_search(m, NAIP_DESC(0, 0), 2, "Flat, 2020", true);
  check_prior_search(m, NAIP_DESC(0, 1), 2, "Flat, 2009", true);
  /* References: the map outlives its first close while a ref is held. */
  struct gl_map *m2 = gl_map_ref(m);
  gl_map_close(m);
  CHECK_EQ_U64(gl_map_tile_count(m2), naip_tiles);
  gl_map_close(m2);
}

/* Circles preselect R*Tree boxes that must contain the whole circle, also
 * across the antimeridian and near the poles. The library samples the
 * boundary every degree; this checks every tenth of a degree. */
static void test_circle_boxes(void) {
  const double centres[][3] = {{47.0, -99.1, 500},   {47.0, -99.1, 50000}, {0, 179.999, 2000},
                               {0, -179.999, 2000}, {-33.9, 151.2, 1e5},  {89.99, 10, 5000},
                               {-89.9, 0, 1000},    {60, 0, 1.5e6},       {70, 20, 3e6}};
  struct geod_geodesic g;
  geod_init(&g, 6378137.0, 1.0 / 298.257223563);
  int missed = 0;
  for (size_t i = 0; i < sizeof centres / sizeof centres[0]; i++) {
    double box[2][4];
    int nb = gl__map_circle_boxes(centres[i][0], centres[i][1], centres[i][2], box);
    CHECK(nb == 1 || nb == 2);
    for (int a = 0; a < 3600; a++)
      for (int k = 1; k <= 4; k++) {
        double lat2, lon2;
        geod_direct(&g, centres[i][0], centres[i][1], a / 10.0, centres[i][2] * k / 4.0, &lat2,
                    &lon2, NULL);
        bool in = false;
        for (int b = 0; b < nb; b++)
          if (lat2 >= box[b][0] && lat2 <= box[b][1] && lon2 >= box[b][2] && lon2 <= box[b][3])
            in = true;
        if (!in)
          missed++;
      }
  }
  CHECK_EQ_INT(missed, 0);
  double box[2][4];
  CHECK_EQ_INT(gl__map_circle_boxes(0, 179.999, 2000, box), 2);
  CHECK_EQ_INT(gl__map_circle_boxes(47, -99, 2000, box), 1);
  /* A 2 km circle at 47 N spans about 0.036 degrees of latitude. */
  CHECK(box[0][1] - box[0][0] > 0.0359 && box[0][1] - box[0][0] < 0.0370);
  fprintf(stderr, "  2 km box: %.6f deg of latitude\n", box[0][1] - box[0][0]);
  /* One degree of longitude at 47 N is about 76 km (WGS84). */
  CHECK(fabs(gl_map_distance_m(47, -99, 47, -98) - 76.0e3) < 200);
}

static void test_index_types(void) {
  const char *orthos[] = {naip2020};
  const char *types[] = {"HNSW32", "IVF16,Flat", "IVF16,PQ16"};
  /* What the manifest records: PQ components without polysemous training. */
  const char *recorded[] = {"HNSW32", "IVF16,Flat", "IVF16,PQ16np"};
  for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
    char name[64];
    snprintf(name, sizeof name, "idx%zu.map", i);
    char *out = mt_join(tmp, name);
    struct fake f = {.notify_fd = -1};
    char err[1024] = "";
    int rc = build(out, orthos, 1, 320, 160, types[i], &f, 16, NULL, err, sizeof err);
    if (!CHECK_EQ_INT(rc, 0)) {
      fprintf(stderr, "  %s: %s\n", types[i], err);
      free(out);
      fake_fini(&f);
      continue;
    }
    struct gl_map *m = NULL;
    CHECK_EQ_INT(gl_map_open(out, MODEL_A, &m, err, sizeof err), 0);
    if (m) {
      CHECK_EQ_STR(gl_map_index_type(m), recorded[i]);
      bool exact = strstr(types[i], "PQ") == NULL;
      int first = 0;
      for (uint64_t t = 0; t < f.n; t += 11) {
        struct gl_map_hit h[4];
        uint32_t c = 0;
        if (gl_map_search(m, f.desc + t * DIM, 1, 4, NULL, h, &c, err, sizeof err) == 0 &&
            h[0].tile_id == (int64_t)t + 1)
          first++;
      }
      size_t tried = (f.n + 10) / 11;
      /* Flat-coded indexes find the tile itself; PQ is lossy, but still
       * ranks it first most of the time. */
      CHECK(exact ? first == (int)tried : first >= (int)(tried * 6 / 10));
      if (!(exact ? first == (int)tried : first >= (int)(tried * 6 / 10)))
        fprintf(stderr, "  %s: own tile first %d of %zu\n", types[i], first, tried);
      check_prior_search(m, f.desc, 1, types[i], exact);
      gl_map_close(m);
    }
    fake_fini(&f);
    free(out);
  }
}

/* --- rotations ------------------------------------------------------------------ */

/* A model with ref_rotations 4: the builder encodes every tile at headings
 * 0, 90, 180 and 270 (quarter turns of the pixels), and a search scores a
 * tile by its best heading, in every search path (Flat, a FAISS index, a
 * prior). */
static void test_rotations(void) {
  const char *orthos[] = {naip2020};
  const char *types[] = {"Flat", "HNSW32", "IVF16,Flat"};
  enum { S = TILE_PX, K = 8 };
  for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
    char name[64];
    snprintf(name, sizeof name, "rot%zu.map", i);
    char *out = mt_join(tmp, name);
    struct fake f = {.notify_fd = -1};
    char err[1024] = "";
    struct gl_map_encoder e = fake_encoder(&f, 10, MODEL_A); /* batch: 2 tiles, not 2.5 */
    e.rotations = 4;
    struct gl_map_build_opts o = {.orthos = orthos, .n_orthos = 1, .tile_m = 320,
                                  .stride_m = 160, .index_type = types[i], .out = out};
    struct gl_map_build_stats st = {0};
    int rc = gl_map_build(&o, &e, &st, err, sizeof err);
    if (!CHECK_EQ_INT(rc, 0)) {
      fprintf(stderr, "  %s: %s\n", types[i], err);
      goto next;
    }
    CHECK_EQ_U64(f.n, 4 * st.tiles);
    /* Heading k's top row is, from left to right: k = 1 the east column
     * from the top, k = 2 the bottom row from the east, k = 3 the west
     * column from the bottom (numpy's rot90 by k). */
    int wrong = 0;
    for (uint64_t t = 0; t < st.tiles; t += 37) {
      const uint8_t *p0 = f.pixels + t * 4 * S * S * 3;
      for (int k = 1; k < 4; k++) {
        const uint8_t *pk = p0 + (size_t)k * S * S * 3;
        for (int j = 0; j < S; j++) {
          int si = k == 1 ? j : k == 2 ? S - 1 : S - 1 - j;
          int sj = k == 1 ? S - 1 : k == 2 ? S - 1 - j : 0;
          wrong += memcmp(pk + (size_t)j * 3, p0 + ((size_t)si * S + sj) * 3, 3) != 0;
        }
      }
    }
    CHECK_EQ_INT(wrong, 0);
    struct gl_map *m = NULL;
    if (!CHECK_EQ_INT(gl_map_open(out, MODEL_A, &m, err, sizeof err), 0)) {
      fprintf(stderr, "  %s: %s\n", types[i], err);
      goto next;
    }
    CHECK_EQ_U64(gl_map_tile_count(m), st.tiles);
    int found = 0, dup = 0, tried = 0, prior_found = 0;
    for (uint64_t t = 5; t < st.tiles; t += 23) {
      for (int k = 0; k < 4; k++) {
        const float *q = f.desc + (t * 4 + (uint64_t)k) * DIM;
        struct gl_map_hit h[K];
        uint32_t c = 0;
        tried++;
        if (gl_map_search(m, q, 1, K, NULL, h, &c, err, sizeof err) != 0 || c != K)
          continue;
        found += h[0].tile_id == (int64_t)t + 1 && fabsf(h[0].score - 1) < 1e-4f;
        for (uint32_t a = 0; a < c; a++)
          for (uint32_t b = a + 1; b < c; b++)
            dup += h[a].tile_id == h[b].tile_id;
        struct gl_map_tile tl;
        CHECK_EQ_INT(gl_map_tile_get(m, (int64_t)t + 1, &tl), 0);
        struct gl_map_prior pr = {tl.lat, tl.lon, 500};
        if (gl_map_search(m, q, 1, K, &pr, h, &c, err, sizeof err) == 0 && c > 0)
          prior_found += h[0].tile_id == (int64_t)t + 1 && fabsf(h[0].score - 1) < 1e-4f;
      }
    }
    CHECK(tried > 40);
    /* HNSW's graph search is approximate: it may miss a vector. */
    if (strcmp(types[i], "HNSW32") == 0)
      CHECK(found >= tried * 9 / 10);
    else
      CHECK_EQ_INT(found, tried);
    CHECK_EQ_INT(dup, 0);
    CHECK_EQ_INT(prior_found, tried);
    if (found != tried || prior_found != tried || dup)
      fprintf(stderr, "  %s: first %d, with a prior %d, of %d; %d duplicates\n", types[i], found,
              prior_found, tried, dup);
    gl_map_close(m);
    char *outp = mt_join(tmp, "rot_inspect.txt");
    FILE *fo = fopen(outp, "w+");
    CHECK_EQ_INT(gl_map_inspect(out, fo, err, sizeof err), 0);
    fclose(fo);
    char *text = NULL;
    size_t len = 0;
    CHECK_EQ_INT(gl__map_read_file(outp, 1 << 20, &text, &len), 0);
    CHECK_CONTAINS(text, "rotations   4 headings per tile, 90 degrees apart");
    free(text);
    free(outp);
  next:
    fake_fini(&f);
    free(out);
  }
  /* Refusals: 3 headings, or 4 of tiles that are not square. */
  struct fake f = {.notify_fd = -1};
  char err[1024] = "";
  struct gl_map_encoder e = fake_encoder(&f, 8, MODEL_A);
  char *out = mt_join(tmp, "rotbad.map");
  struct gl_map_build_opts o = {.orthos = orthos, .n_orthos = 1, .tile_m = 320, .stride_m = 160,
                                .out = out};
  e.rotations = 3;
  CHECK_EQ_INT(gl_map_build(&o, &e, NULL, err, sizeof err), GL_EINVAL);
  CHECK_CONTAINS(err, "rotations");
  e.rotations = 4;
  e.height = TILE_PX / 2;
  CHECK_EQ_INT(gl_map_build(&o, &e, NULL, err, sizeof err), GL_EINVAL);
  CHECK_CONTAINS(err, "square");
  CHECK(!mt_exists(out));
  fake_fini(&f);
  free(out);
}

/* --- refusals -------------------------------------------------------------------- */

static char *variant(const char *name) {
  char *p = mt_join(tmp, name);
  CHECK_EQ_INT(mt_copy_pack(naip_pack, p), 0);
  return p;
}

static void expect_open_fails(const char *path, const char *model, int code, const char *needle1,
                              const char *needle2) {
  char err[1024] = "";
  struct gl_map *m = (struct gl_map *)1;
  CHECK_EQ_INT(gl_map_open(path, model, &m, err, sizeof err), code);
  CHECK(m == NULL);
  CHECK_CONTAINS(err, needle1);
  if (needle2)
    CHECK_CONTAINS(err, needle2);
}

static void test_corrupt(void) {
  /* A flipped byte anywhere in index.faiss or tiles.sqlite. */
  char *p = variant("flip_index.map"), *f = mt_join(p, "index.faiss");
  CHECK_EQ_INT(mt_flip_byte(f, -100), 0);
  expect_open_fails(p, MODEL_A, GL_EFORMAT, "index.faiss is corrupt", "sha256");
  free(f);
  free(p);
  p = variant("flip_tiles.map");
  f = mt_join(p, "tiles.sqlite");
  CHECK_EQ_INT(mt_flip_byte(f, 5000), 0);
  expect_open_fails(p, MODEL_A, GL_EFORMAT, "tiles.sqlite is corrupt", NULL);
  free(f);
  free(p);
  /* A truncated file names the size. */
  p = variant("trunc.map");
  f = mt_join(p, "index.faiss");
  CHECK_EQ_INT(truncate(f, 1000), 0);
  expect_open_fails(p, MODEL_A, GL_EFORMAT, "index.faiss is corrupt: 1000 bytes", NULL);
  free(f);
  free(p);
  /* Missing files. */
  p = variant("missing_index.map");
  f = mt_join(p, "index.faiss");
  unlink(f);
  expect_open_fails(p, MODEL_A, GL_ENOENT, "index.faiss is missing", NULL);
  free(f);
  free(p);
  p = variant("missing_tiles.map");
  f = mt_join(p, "tiles.sqlite");
  unlink(f);
  expect_open_fails(p, MODEL_A, GL_ENOENT, "tiles.sqlite is missing", NULL);
  free(f);
  free(p);
  p = variant("missing_manifest.map");
  f = mt_join(p, "manifest.json");
  unlink(f);
  expect_open_fails(p, MODEL_A, GL_ENOENT, "manifest.json is missing", NULL);
  free(f);
  free(p);
  p = mt_join(tmp, "nothing-here.map");
  expect_open_fails(p, MODEL_A, GL_ENOENT, "no map pack", NULL);
  free(p);
  /* Another model: both hashes named. */
  expect_open_fails(naip_pack, MODEL_B, GL_EINVAL, MODEL_A, MODEL_B);
  /* Manifests that are not ours. */
  static const struct {
    const char *text, *needle;
  } bad[] = {
      {"not json", "not a JSON object"},
      {"{\"format\": \"other\"}", "format is not"},
      {"{\"format\": \"geoloc-map\", \"format_version\": 2}", "format version 2"},
      {"{\"format\": \"geoloc-map\", \"format_version\": 1, \"model_sha256\": \"xyz\"}",
       "model_sha256"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char name[32];
    snprintf(name, sizeof name, "badmf%zu.map", i);
    p = variant(name);
    f = mt_join(p, "manifest.json");
    CHECK_EQ_INT(gl__map_write_file(f, bad[i].text, strlen(bad[i].text)), 0);
    expect_open_fails(p, NULL, GL_EFORMAT, bad[i].needle, NULL);
    free(f);
    free(p);
  }
  /* A manifest edited to claim a different checksum is caught against the
   * file; one claiming another model is caught against the model. */
  p = variant("edited.map");
  f = mt_join(p, "manifest.json");
  char *text = NULL;
  size_t len;
  CHECK_EQ_INT(gl__map_read_file(f, 1 << 20, &text, &len), 0);
  char *at = text ? strstr(text, "\"index.faiss\"") : NULL;
  at = at ? strstr(at, "\"sha256\":\t\"") : NULL;
  if (CHECK(at != NULL)) {
    at += strlen("\"sha256\":\t\"");
    *at = *at == '0' ? '1' : '0';
    CHECK_EQ_INT(gl__map_write_file(f, text, len), 0);
    expect_open_fails(p, MODEL_A, GL_EFORMAT, "index.faiss is corrupt", NULL);
  }
  free(text);
  free(f);
  free(p);
  /* inspect reports the failure and still prints the summary. */
  p = variant("inspect_bad.map");
  f = mt_join(p, "index.faiss");
  CHECK_EQ_INT(mt_flip_byte(f, 64), 0);
  char *outp = mt_join(tmp, "inspect.txt");
  FILE *o = fopen(outp, "w+");
  char err[1024] = "";
  CHECK_EQ_INT(gl_map_inspect(p, o, err, sizeof err), GL_EFORMAT);
  fclose(o);
  CHECK_EQ_INT(gl__map_read_file(outp, 1 << 20, &text, &len), 0);
  CHECK_CONTAINS(text, "verify      FAILED");
  CHECK_CONTAINS(text, "m_4709963_se_14_1_20090818.tif");
  free(text);
  o = fopen(outp, "w+");
  CHECK_EQ_INT(gl_map_inspect(naip_pack, o, err, sizeof err), 0);
  fclose(o);
  CHECK_EQ_INT(gl__map_read_file(outp, 1 << 20, &text, &len), 0);
  CHECK_CONTAINS(text, "verify      ok");
  CHECK_CONTAINS(text, "320 m tiles every 160 m on EPSG:26914");
  CHECK(gl_map_is_pack(naip_pack));
  CHECK(!gl_map_is_pack(naip2020));
  free(text);
  free(outp);
  free(f);
  free(p);
}

static void test_bad_builds(void) {
  char err[1024] = "";
  struct fake f = {.notify_fd = -1};
  char *out = mt_join(tmp, "bad.map");
  const char *missing[] = {"/nonexistent/x.tif"};
  CHECK_EQ_INT(build(out, missing, 1, 320, 80, NULL, &f, 4, NULL, err, sizeof err), GL_ENOENT);
  CHECK_CONTAINS(err, "/nonexistent/x.tif");
  /* Not a raster. */
  char *lic = mt_join(naip_dir, "LICENSE.mit");
  const char *notraster[] = {lic};
  CHECK_EQ_INT(build(out, notraster, 1, 320, 80, NULL, &f, 4, NULL, err, sizeof err), GL_EFORMAT);
  CHECK_CONTAINS(err, "LICENSE.mit");
  free(lic);
  /* One band only. */
  char *gray = mt_join(tmp, "gray.tif");
  GDALDatasetH ds = GDALCreate(GDALGetDriverByName("GTiff"), gray, 100, 100, 1, GDT_Byte, NULL);
  double gt[6] = {500000, 5, 0, 5200000, 0, -5};
  GDALSetGeoTransform(ds, gt);
  OGRSpatialReferenceH srs = OSRNewSpatialReference(NULL);
  OSRImportFromEPSG(srs, 32614);
  GDALSetSpatialRef(ds, srs);
  OSRDestroySpatialReference(srs);
  GDALClose(ds);
  const char *grays[] = {gray};
  CHECK_EQ_INT(build(out, grays, 1, 320, 80, NULL, &f, 4, NULL, err, sizeof err), GL_ENOTSUP);
  CHECK_CONTAINS(err, "R, G, B");
  free(gray);
  /* Tiles larger than the raster. */
  const char *orthos[] = {naip2020};
  CHECK_EQ_INT(build(out, orthos, 1, 10000, 80, NULL, &f, 4, NULL, err, sizeof err), GL_EINVAL);
  CHECK_CONTAINS(err, "no 10000 m tile fits");
  CHECK_EQ_INT(build(out, orthos, 1, -1, 80, NULL, &f, 4, NULL, err, sizeof err), GL_EINVAL);
  /* FAISS refusals come back as errors with FAISS's reason. */
  CHECK_EQ_INT(build(out, orthos, 1, 320, 320, "NoSuchIndex", &f, 16, NULL, err, sizeof err),
               GL_EINTERNAL);
  CHECK_CONTAINS(err, "FAISS");
  CHECK_EQ_INT(build(out, orthos, 1, 320, 320, "IVF1024,Flat", &f, 16, NULL, err, sizeof err),
               GL_EINTERNAL);
  CHECK_CONTAINS(err, "IVF1024,Flat");
  CHECK_EQ_INT(build(out, orthos, 1, 320, 320, "IDMap,Flat", &f, 16, NULL, err, sizeof err),
               GL_EINVAL);
  /* None of these left anything behind. */
  CHECK(!mt_exists(out));
  CHECK_EQ_INT(mt_count_entries(tmp, ".bad.map."), 0);
  /* A directory that is not a pack is never replaced. */
  char *dir = mt_join(tmp, "precious");
  CHECK_EQ_INT(mkdir(dir, 0755), 0);
  char *keep = mt_join(dir, "keep.txt");
  CHECK_EQ_INT(gl__map_write_file(keep, "x", 1), 0);
  CHECK_EQ_INT(build(dir, orthos, 1, 320, 320, NULL, &f, 16, NULL, err, sizeof err), GL_EINVAL);
  CHECK_CONTAINS(err, "is not a map pack");
  CHECK(mt_exists(keep));
  free(keep);
  free(dir);
  free(out);
  fake_fini(&f);
}

/* --- crashes and replacement ----------------------------------------------------- */

/* Runs a build in a child that hangs inside the encoder after `after`
 * batches, then SIGKILLs it there. */
static void killed_build(const char *out, double stride) {
  int fds[2];
  CHECK_EQ_INT(pipe(fds), 0);
  pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    struct fake f = {.notify_fd = fds[1], .hang_after = 3};
    const char *orthos[] = {naip2020, naip2009};
    char err[512];
    build(out, orthos, 2, 320, stride, NULL, &f, 8, NULL, err, sizeof err);
    _exit(2); /* only reached when the build failed before hanging */
  }
  close(fds[1]);
  char c;
  CHECK_EQ_INT(read(fds[0], &c, 1), 1);
  close(fds[0]);
  CHECK_EQ_INT(kill(pid, SIGKILL), 0);
  int status = 0;
  CHECK_EQ_INT(waitpid(pid, &status, 0), pid);
  CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
}

static void test_killed_build(void) {
  char *dir = mt_join(tmp, "crash");
  CHECK_EQ_INT(mkdir(dir, 0755), 0);
  char *out = mt_join(dir, "area.map");
  /* A build killed mid-way leaves no pack; what it leaves is its own
   * temporary directory and lock, nothing else. */
  killed_build(out, 160);
  CHECK(!mt_exists(out));
  CHECK_EQ_INT(mt_count_entries(dir, ".area.map.tmp-"), 2); /* dir + lock */
  CHECK_EQ_INT(mt_count_entries(dir, ""), 2);
  /* The next build removes them and succeeds. */
  struct fake f = {.notify_fd = -1};
  const char *orthos[] = {naip2020};
  char err[1024] = "";
  struct gl_map_build_stats st;
  CHECK_EQ_INT(build(out, orthos, 1, 320, 160, NULL, &f, 16, &st, err, sizeof err), 0);
  CHECK_EQ_INT(mt_count_entries(dir, ""), 1);
  CHECK(mt_exists(out));
  fake_fini(&f);
  struct stat before;
  char *mf = mt_join(out, "manifest.json");
  CHECK_EQ_INT(stat(mf, &before), 0);

  /* A build killed while replacing that pack leaves it whole. */
  killed_build(out, 320);
  struct gl_map *m = NULL;
  CHECK_EQ_INT(gl_map_open(out, MODEL_A, &m, err, sizeof err), 0);
  if (m) {
    CHECK_EQ_U64(gl_map_tile_count(m), st.tiles);
    gl_map_close(m);
  }
  /* Rebuilding replaces it: new content under the same name, nothing left
   * beside it. */
  f = (struct fake){.notify_fd = -1};
  const char *both[] = {naip2020, naip2009};
  struct gl_map_build_stats st2;
  CHECK_EQ_INT(build(out, both, 2, 320, 320, NULL, &f, 16, &st2, err, sizeof err), 0);
  CHECK_EQ_INT(mt_count_entries(dir, ""), 1);
  CHECK(gl_map_open(out, MODEL_A, &m, err, sizeof err) == 0 && m);
  if (m) {
    CHECK_EQ_U64(gl_map_tile_count(m), st2.tiles);
    CHECK(st2.tiles != st.tiles);
    gl_map_close(m);
  }
  struct stat after;
  CHECK_EQ_INT(stat(mf, &after), 0);
  CHECK(after.st_ino != before.st_ino);
  fake_fini(&f);

  free(mf);
  free(out);
  free(dir);
}

static void test_restore_old(void) {
  char *dir = mt_join(tmp, "restore");
  CHECK_EQ_INT(mkdir(dir, 0755), 0);
  char *out = mt_join(dir, "area.map");
  CHECK_EQ_INT(mt_copy_pack(naip_pack, out), 0);
  char *old = mt_join(dir, ".area.map.old-1-deadbeef0123");
  char *lock = mt_join(dir, ".area.map.tmp-1-deadbeef0123.lock");
  char *stale = mt_join(dir, ".area.map.tmp-1-deadbeef0123");
  CHECK_EQ_INT(rename(out, old), 0);
  CHECK_EQ_INT(gl__map_write_file(lock, "", 0), 0);
  CHECK_EQ_INT(mkdir(stale, 0755), 0);
  char *other = mt_join(dir, ".area.map.tmp-mine");
  CHECK_EQ_INT(mkdir(other, 0755), 0);
  /* A build that fails after cleaning (no tile fits) still restored the
   * old pack and removed the stale directory and lock. */
  struct fake f = {.notify_fd = -1};
  const char *orthos[] = {naip2020};
  char err[1024] = "";
  CHECK_EQ_INT(build(out, orthos, 1, 100000, 320, NULL, &f, 16, NULL, err, sizeof err), GL_EINVAL);
  CHECK(mt_exists(out));
  CHECK(!mt_exists(old));
  CHECK(!mt_exists(lock));
  CHECK(!mt_exists(stale));
  /* Names that merely share the prefix are never touched. */
  CHECK(mt_exists(other));
  struct gl_map *m = NULL;
  CHECK_EQ_INT(gl_map_open(out, MODEL_A, &m, err, sizeof err), 0);
  gl_map_close(m);
  fake_fini(&f);
  free(other);
  free(stale);
  free(lock);
  free(old);
  free(out);
  free(dir);
}

static void test_capture_dates(void) {
  char d[11];
  gl__map_capture_date("/x/m_4709963_se_14_1_20200831.tif", NULL, d);
  CHECK_EQ_STR(d, "2020-08-31");
  gl__map_capture_date("m_3807537_ne_18_060_20180827_20190211.tif", NULL, d);
  CHECK_EQ_STR(d, "2018-08-27");
  gl__map_capture_date("m_4709963_se_14_1_20201331.tif", NULL, d); /* month 13 */
  CHECK_EQ_STR(d, "");
  gl__map_capture_date("area_20200831.tif", NULL, d); /* not a NAIP name */
  CHECK_EQ_STR(d, "");
  /* TIFFTAG_DATETIME when the name says nothing. */
  char *p = mt_join(tmp, "dated.tif");
  const char *md[] = {"TIFFTAG_DATETIME=2017:06:05 10:11:12", NULL};
  GDALDatasetH ds = GDALCreate(GDALGetDriverByName("GTiff"), p, 8, 8, 3, GDT_Byte, NULL);
  GDALSetMetadata(ds, (char **)md, NULL);
  GDALClose(ds);
  ds = GDALOpen(p, GA_ReadOnly);
  gl__map_capture_date(p, ds, d);
  CHECK_EQ_STR(d, "2017-06-05");
  GDALClose(ds);
  free(p);
}

int main(int argc, char **argv) {
  naip_dir = argc > 1 ? argv[1] : "data/naip";
  naip2020 = mt_join(naip_dir, "m_4709963_se_14_1_20200831.tif");
  naip2009 = mt_join(naip_dir, "m_4709963_se_14_1_20090818.tif");
  if (!mt_exists(naip2020) || !mt_exists(naip2009)) {
    fprintf(stderr, "NAIP test data not found in %s\n", naip_dir);
    return 1;
  }
  tmp = mt_tmpdir("map");
  if (!tmp)
    return 1;
  gl__map_gdal_init();
  CPLPushErrorHandler(CPLQuietErrorHandler);
  /* The crash tests fork: they run first, before FAISS has started any
   * OpenMP threads in this process. */
  TRUN(test_killed_build);
  TRUN(test_capture_dates);
  TRUN(test_circle_boxes);
  TRUN(test_naip_build);
  if (naip_tiles) {
    TRUN(test_search_own);
    TRUN(test_prior);
    TRUN(test_threads);
    TRUN(test_corrupt);
    TRUN(test_restore_old);
  }
  TRUN(test_ramp_placement);
  TRUN(test_index_types);
  TRUN(test_rotations);
  TRUN(test_bad_builds);
  CPLPopErrorHandler();
  if (!gl_test_failures)
    gl__map_rmtree(tmp);
  else
    fprintf(stderr, "left %s for inspection\n", tmp);
  fake_fini(&naip_fake);
  free(naip_pack);
  free(naip2020);
  free(naip2009);
  free(tmp);
  return TEST_END();
}
