/* The picture of an evaluation run (see report_png.h): GDAL reads and warps
 * the background, OGR/OSR transforms WGS84 positions into its pixels, and
 * libspng writes the file. */
#include "report_png.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cpl_conv.h>
#include <cpl_error.h>
#include <gdal.h>
#include <gdalwarper.h>
#include <ogr_srs_api.h>
#include <spng.h>

#include "cli.h"
#include "core/err.h"
#include "map/map.h"

#define PNG_MIN_WIDTH 1000
#define PNG_MAX_SIDE 4000
#define PNG_MAX_SOURCES 64

struct rgb {
  uint8_t r, g, b;
};

static const struct rgb C_TRUTH = {0, 220, 0}, C_EST = {235, 20, 20}, C_LINE = {255, 230, 0},
                        C_OUTLINE = {0, 230, 255}, C_EDGE = {0, 0, 0},
                        C_TRACK = {40, 90, 255}, C_TRACK_DIM = {150, 170, 230};
/* Consecutive track positions farther apart than this are not joined (a
 * new flight, or a track that jumped). */
#define PNG_TRACK_JOIN_M 400.0
static const uint8_t GREY = 128;

struct canvas {
  uint8_t *rgb;
  int w, h;
  double x0, y1, px; /* canvas CRS: left edge, top edge, units per pixel */
};

static void put(struct canvas *c, int x, int y, struct rgb col) {
  if (x < 0 || y < 0 || x >= c->w || y >= c->h)
    return;
  uint8_t *p = c->rgb + ((size_t)y * (size_t)c->w + (size_t)x) * 3;
  p[0] = col.r;
  p[1] = col.g;
  p[2] = col.b;
}

/* Bresenham, clipped pixel by pixel (the lines are short). */
static void line(struct canvas *c, double fx0, double fy0, double fx1, double fy1, struct rgb col) {
  if (!(fabs(fx0) < 1e6 && fabs(fy0) < 1e6 && fabs(fx1) < 1e6 && fabs(fy1) < 1e6))
    return;
  int x0 = (int)lround(fx0), y0 = (int)lround(fy0), x1 = (int)lround(fx1), y1 = (int)lround(fy1);
  int dx = abs(x1 - x0), dy = -abs(y1 - y0), sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
  int e = dx + dy;
  for (;;) {
    put(c, x0, y0, col);
    if (x0 == x1 && y0 == y1)
      break;
    int e2 = 2 * e;
    if (e2 >= dy) {
      e += dy;
      x0 += sx;
    }
    if (e2 <= dx) {
      e += dx;
      y0 += sy;
    }
  }
}

/* A filled dot of radius r with a one-pixel dark rim. */
static void dot(struct canvas *c, double fx, double fy, int r, struct rgb col) {
  if (!(fabs(fx) < 1e6 && fabs(fy) < 1e6))
    return;
  int cx = (int)lround(fx), cy = (int)lround(fy);
  for (int y = -r - 1; y <= r + 1; y++)
    for (int x = -r - 1; x <= r + 1; x++) {
      int d2 = x * x + y * y;
      if (d2 <= r * r)
        put(c, cx + x, cy + y, col);
      else if (d2 <= (r + 1) * (r + 1))
        put(c, cx + x, cy + y, C_EDGE);
    }
}

/* The rasters the pack was built from that are still to be found (see
 * gl_map_source_files); missing ones are named on stderr. Returns how many
 * were found. */
static size_t find_sources(const char *pack_dir, const char *prog, char **found, size_t max) {
  struct gl_map_source_file *s = NULL;
  uint32_t n = 0;
  size_t k = 0;
  char err[512];
  if (gl_map_source_files(pack_dir, &s, &n, err, sizeof err) != GL_OK) {
    fprintf(stderr, "%s: report: %s\n", prog, err);
    return 0;
  }
  for (uint32_t i = 0; i < n; i++) {
    if (!s[i].found)
      fprintf(stderr, "%s: report: source raster %s is no longer there\n", prog, s[i].file);
    else if (k < max) {
      found[k++] = s[i].found;
      s[i].found = NULL;
    }
  }
  gl_map_source_files_free(s, n);
  return k;
}

/* Warps each source's first three bands onto the canvas (MEM dataset mem);
 * returns how many were drawn. */
static size_t draw_sources(GDALDatasetH mem, char **paths, size_t n, const char *prog) {
  size_t drawn = 0;
  for (size_t i = 0; i < n; i++) {
    GDALDatasetH src = GDALOpenEx(paths[i], GDAL_OF_RASTER | GDAL_OF_READONLY, NULL, NULL, NULL);
    if (!src || GDALGetRasterCount(src) < 3) {
      fprintf(stderr, "%s: report: %s: %s\n", prog, paths[i],
              src ? "fewer than three bands" : CPLGetLastErrorMsg());
      if (src)
        GDALClose(src);
      continue;
    }
    GDALWarpOptions *wo = GDALCreateWarpOptions();
    wo->nBandCount = 3;
    wo->panSrcBands = CPLMalloc(3 * sizeof(int));
    wo->panDstBands = CPLMalloc(3 * sizeof(int));
    for (int b = 0; b < 3; b++)
      wo->panSrcBands[b] = wo->panDstBands[b] = b + 1;
    /* Without INIT_DEST the warper overlays: pixels the source does not
     * cover keep what is there (grey, or an earlier source). */
    CPLErr e = GDALReprojectImage(src, NULL, mem, NULL, GRA_Bilinear, 0, 0.125, NULL, NULL, wo);
    GDALDestroyWarpOptions(wo);
    if (e == CE_None)
      drawn++;
    else
      fprintf(stderr, "%s: report: cannot draw %s: %s\n", prog, paths[i], CPLGetLastErrorMsg());
    GDALClose(src);
  }
  return drawn;
}

/* Marks the pixels the tiles cover and draws the border of that region. */
static int outline(struct canvas *c, const double *tx, const double *ty, size_t n_tiles) {
  uint8_t *mask = calloc((size_t)c->w * (size_t)c->h, 1);
  if (!mask)
    return GL_ENOMEM;
  for (size_t t = 0; t < n_tiles; t++) {
    double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
    for (int k = 0; k < 4; k++) {
      double x = (tx[t * 4 + k] - c->x0) / c->px, y = (c->y1 - ty[t * 4 + k]) / c->px;
      xmin = fmin(xmin, x);
      xmax = fmax(xmax, x);
      ymin = fmin(ymin, y);
      ymax = fmax(ymax, y);
    }
    if (!isfinite(xmin + xmax + ymin + ymax))
      continue;
    int x0 = (int)fmax(0, floor(xmin)), x1 = (int)fmin(c->w - 1, ceil(xmax) - 1);
    int y0 = (int)fmax(0, floor(ymin)), y1 = (int)fmin(c->h - 1, ceil(ymax) - 1);
    for (int y = y0; y <= y1; y++)
      memset(mask + (size_t)y * (size_t)c->w + (size_t)x0, 1, x1 >= x0 ? (size_t)(x1 - x0 + 1) : 0);
  }
  /* A covered pixel within two pixels of an uncovered one (or of the
   * picture's edge) is on the border: a line two pixels wide. */
  for (int y = 0; y < c->h; y++)
    for (int x = 0; x < c->w; x++) {
      if (!mask[(size_t)y * (size_t)c->w + (size_t)x])
        continue;
      bool edge = false;
      for (int dy = -2; dy <= 2 && !edge; dy++)
        for (int dx = -2; dx <= 2 && !edge; dx++) {
          int xx = x + dx, yy = y + dy;
          edge = xx < 0 || yy < 0 || xx >= c->w || yy >= c->h ||
                 !mask[(size_t)yy * (size_t)c->w + (size_t)xx];
        }
      if (edge)
        put(c, x, y, C_OUTLINE);
    }
  free(mask);
  return 0;
}

static int write_png(const char *path, const struct canvas *c, const char *prog) {
  FILE *f = fopen(path, "wb");
  if (!f) {
    fprintf(stderr, "%s: report: %s: cannot create it\n", prog, path);
    return GL_EIO;
  }
  spng_ctx *ctx = spng_ctx_new(SPNG_CTX_ENCODER);
  int r = ctx ? spng_set_png_file(ctx, f) : SPNG_EMEM;
  struct spng_ihdr ihdr = {.width = (uint32_t)c->w,
                           .height = (uint32_t)c->h,
                           .bit_depth = 8,
                           .color_type = SPNG_COLOR_TYPE_TRUECOLOR};
  if (!r)
    r = spng_set_ihdr(ctx, &ihdr);
  if (!r)
    r = spng_encode_image(ctx, c->rgb, (size_t)c->w * (size_t)c->h * 3, SPNG_FMT_PNG,
                          SPNG_ENCODE_FINALIZE);
  spng_ctx_free(ctx);
  if (fclose(f) != 0 && !r)
    r = SPNG_EIO;
  if (r) {
    fprintf(stderr, "%s: report: %s: %s\n", prog, path, spng_strerror(r));
    remove(path);
    return GL_EIO;
  }
  return 0;
}

int gl_cli_report_png(const char *out, const char *pack_dir, const struct gl_cli_png_tile *tiles,
                      size_t n_tiles, const struct gl_eval_frame *frames, size_t n_frames,
                      const char *prog, uint32_t *width, uint32_t *height) {
  int rc = GL_ENOMEM;
  char *sources[PNG_MAX_SOURCES];
  size_t n_src = 0;
  GDALDatasetH first = NULL, mem = NULL;
  OGRSpatialReferenceH wgs = NULL, srs = NULL;
  OGRCoordinateTransformationH ct = NULL;
  struct canvas c = {0};
  /* Points to place: 4 corners per tile, then truth, estimate and track
   * per frame. */
  size_t np = n_tiles * 4 + n_frames * 3;
  double *x = malloc((np ? np : 1) * sizeof *x), *y = malloc((np ? np : 1) * sizeof *y);
  int *ok = malloc((np ? np : 1) * sizeof *ok);
  GDALAllRegister();
  CPLPushErrorHandler(CPLQuietErrorHandler);
  if (!x || !y || !ok)
    goto nomem;
  for (size_t t = 0; t < n_tiles; t++) {
    const struct gl_cli_png_tile *b = &tiles[t];
    double lon[4] = {b->min_lon, b->max_lon, b->max_lon, b->min_lon};
    double lat[4] = {b->min_lat, b->min_lat, b->max_lat, b->max_lat};
    for (int k = 0; k < 4; k++) {
      x[t * 4 + k] = lon[k];
      y[t * 4 + k] = lat[k];
    }
  }
  double lat_sum = 0, lon_sum = 0;
  size_t n_sum = 0;
  for (size_t i = 0; i < n_frames; i++) {
    size_t k = n_tiles * 4 + i * 2;
    x[k] = frames[i].truth_lon;
    y[k] = frames[i].truth_lat;
    x[k + 1] = frames[i].has_estimate ? frames[i].est_lon : NAN;
    y[k + 1] = frames[i].has_estimate ? frames[i].est_lat : NAN;
    size_t kt = n_tiles * 4 + n_frames * 2 + i;
    x[kt] = frames[i].track_status ? frames[i].track_lon : NAN;
    y[kt] = frames[i].track_status ? frames[i].track_lat : NAN;
    lat_sum += frames[i].truth_lat;
    lon_sum += frames[i].truth_lon;
    n_sum++;
  }
  for (size_t t = 0; t < n_tiles; t++) {
    lat_sum += (tiles[t].min_lat + tiles[t].max_lat) / 2;
    lon_sum += (tiles[t].min_lon + tiles[t].max_lon) / 2;
    n_sum++;
  }

  /* The canvas CRS: the first raster's, or a local azimuthal equidistant
   * projection about the points' mean (metres, no raster to match). */
  if (pack_dir)
    n_src = find_sources(pack_dir, prog, sources, PNG_MAX_SOURCES);
  for (size_t i = 0; i < n_src && !first; i++) {
    first = GDALOpenEx(sources[i], GDAL_OF_RASTER | GDAL_OF_READONLY, NULL, NULL, NULL);
    if (first && !GDALGetSpatialRef(first)) {
      GDALClose(first);
      first = NULL;
    }
  }
  double gt[6] = {0, 1, 0, 0, 0, -1};
  wgs = OSRNewSpatialReference(NULL);
  if (!wgs || OSRImportFromEPSG(wgs, 4326) != OGRERR_NONE)
    goto gdal_fail;
  OSRSetAxisMappingStrategy(wgs, OAMS_TRADITIONAL_GIS_ORDER);
  if (first) {
    srs = OSRClone(GDALGetSpatialRef(first));
    GDALGetGeoTransform(first, gt);
  } else {
    srs = OSRNewSpatialReference(NULL);
    if (srs && (OSRSetWellKnownGeogCS(srs, "WGS84") != OGRERR_NONE ||
                OSRSetAE(srs, n_sum ? lat_sum / (double)n_sum : 0,
                         n_sum ? lon_sum / (double)n_sum : 0, 0, 0) != OGRERR_NONE))
      goto gdal_fail;
  }
  if (!srs)
    goto gdal_fail;
  OSRSetAxisMappingStrategy(srs, OAMS_TRADITIONAL_GIS_ORDER);
  if (!(ct = OCTNewCoordinateTransformation(wgs, srs)))
    goto gdal_fail;
  for (size_t i = 0; i < np; i++)
    ok[i] = isfinite(x[i]) && isfinite(y[i]);
  if (np && !OCTTransformEx(ct, (int)np, x, y, NULL, ok)) {
    /* Some points may fail alone (far outside the CRS's area); they are
     * left out, as OCTTransformEx marks them. */
  }
  double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
  for (size_t i = 0; i < np; i++) {
    if (!ok[i] || !isfinite(x[i]) || !isfinite(y[i])) {
      x[i] = y[i] = NAN;
      continue;
    }
    xmin = fmin(xmin, x[i]);
    xmax = fmax(xmax, x[i]);
    ymin = fmin(ymin, y[i]);
    ymax = fmax(ymax, y[i]);
  }
  if (!isfinite(xmin)) {
    fprintf(stderr, "%s: report: nothing to draw\n", prog);
    rc = GL_EINVAL;
    goto cleanup;
  }
  /* A margin of 4 % of the larger side, and at least 50 CRS units. */
  double margin = fmax(0.04 * fmax(xmax - xmin, ymax - ymin), 50);
  xmin -= margin;
  xmax += margin;
  ymin -= margin;
  ymax += margin;
  double native = first ? fabs(gt[1]) : 0;
  double w = native > 0 ? (xmax - xmin) / native : PNG_MIN_WIDTH;
  w = fmin(fmax(w, PNG_MIN_WIDTH), PNG_MAX_SIDE);
  c.px = (xmax - xmin) / w;
  if ((ymax - ymin) / c.px > PNG_MAX_SIDE)
    c.px = (ymax - ymin) / PNG_MAX_SIDE; /* a very tall picture: the height bounds it */
  c.w = (int)fmax(1, ceil((xmax - xmin) / c.px - 1e-9));
  c.h = (int)fmax(1, ceil((ymax - ymin) / c.px - 1e-9));
  c.x0 = xmin;
  c.y1 = ymax;

  /* The background: grey, then each source warped onto it. */
  GDALDriverH drv = GDALGetDriverByName("MEM");
  char *wkt = NULL;
  if (!drv || !(mem = GDALCreate(drv, "", c.w, c.h, 3, GDT_Byte, NULL)) ||
      OSRExportToWkt(srs, &wkt) != OGRERR_NONE) {
    CPLFree(wkt);
    goto gdal_fail;
  }
  double cgt[6] = {c.x0, c.px, 0, c.y1, 0, -c.px};
  GDALSetGeoTransform(mem, cgt);
  GDALSetProjection(mem, wkt);
  CPLFree(wkt);
  for (int b = 1; b <= 3; b++)
    GDALFillRaster(GDALGetRasterBand(mem, b), GREY, 0);
  size_t drawn = draw_sources(mem, sources, n_src, prog);
  if (!(c.rgb = malloc((size_t)c.w * (size_t)c.h * 3)))
    goto nomem;
  if (GDALDatasetRasterIO(mem, GF_Read, 0, 0, c.w, c.h, c.rgb, c.w, c.h, GDT_Byte, 3, NULL, 3,
                          c.w * 3, 1) != CE_None)
    goto gdal_fail;
  if (!drawn)
    fprintf(stderr, "%s: report: %s; drawing on a grey background\n", prog,
            !pack_dir ? "no map pack given (--pack), so no map background"
                      : "no source raster of the map could be read");

  if ((rc = outline(&c, x, y, n_tiles)))
    goto nomem;
  for (size_t i = 0; i < n_frames; i++) {
    size_t k = n_tiles * 4 + i * 2;
    line(&c, (x[k] - c.x0) / c.px, (c.y1 - y[k]) / c.px, (x[k + 1] - c.x0) / c.px,
         (c.y1 - y[k + 1]) / c.px, C_LINE);
  }
  for (size_t i = 0; i < n_frames; i++) {
    size_t k = n_tiles * 4 + i * 2;
    dot(&c, (x[k] - c.x0) / c.px, (c.y1 - y[k]) / c.px, 4, C_TRUTH);
  }
  for (size_t i = 0; i < n_frames; i++) {
    size_t k = n_tiles * 4 + i * 2 + 1;
    dot(&c, (x[k] - c.x0) / c.px, (c.y1 - y[k]) / c.px, 3, C_EST);
  }
  /* The track: a line through its positions, a dot where it was locked. */
  const size_t kt = n_tiles * 4 + n_frames * 2;
  for (size_t i = 1; i < n_frames; i++) {
    const struct gl_eval_frame *a = &frames[i - 1], *b = &frames[i];
    if (a->track_status && b->track_status &&
        gl_map_distance_m(a->track_lat, a->track_lon, b->track_lat, b->track_lon) <
            PNG_TRACK_JOIN_M)
      line(&c, (x[kt + i - 1] - c.x0) / c.px, (c.y1 - y[kt + i - 1]) / c.px,
           (x[kt + i] - c.x0) / c.px, (c.y1 - y[kt + i]) / c.px, C_TRACK);
  }
  for (size_t i = 0; i < n_frames; i++)
    if (frames[i].track_status)
      dot(&c, (x[kt + i] - c.x0) / c.px, (c.y1 - y[kt + i]) / c.px, 2,
          frames[i].track_status == 2 ? C_TRACK : C_TRACK_DIM);
  if ((rc = write_png(out, &c, prog)))
    goto cleanup;
  *width = (uint32_t)c.w;
  *height = (uint32_t)c.h;
  rc = 0;
  goto cleanup;
nomem:
  fprintf(stderr, "%s: report: out of memory\n", prog);
  rc = GL_ENOMEM;
  goto cleanup;
gdal_fail:
  fprintf(stderr, "%s: report: GDAL: %s\n", prog, CPLGetLastErrorMsg());
  rc = GL_EINTERNAL;
cleanup:
  free(c.rgb);
  if (mem)
    GDALClose(mem);
  if (ct)
    OCTDestroyCoordinateTransformation(ct);
  if (srs)
    OSRDestroySpatialReference(srs);
  if (wgs)
    OSRDestroySpatialReference(wgs);
  if (first)
    GDALClose(first);
  for (size_t i = 0; i < n_src; i++)
    free(sources[i]);
  free(x);
  free(y);
  free(ok);
  CPLPopErrorHandler();
  return rc;
}
