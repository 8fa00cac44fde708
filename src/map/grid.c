/* Tiling source rasters on a metric grid with GDAL, and converting grid
 * coordinates to WGS84 with PROJ.
 *
 * Tiles are defined by coordinates, never by pixel index: their corners lie
 * on multiples of the stride in the grid CRS, so the rasters of different
 * years, whose origins differ by metres, give tiles with the same
 * footprint, and each raster is resampled onto that footprint. */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cpl_conv.h>
#include <cpl_error.h>
#include <cpl_string.h>
#include <gdalwarper.h>

#include "core/err.h"
#include "map/map_internal.h"

static pthread_once_t gl__gdal_once = PTHREAD_ONCE_INIT;

static void gl__gdal_register(void) { GDALAllRegister(); }

void gl__map_gdal_init(void) { pthread_once(&gl__gdal_once, gl__gdal_register); }

/* "EPSG:26914" when the CRS has an authority code, else its name. */
static void gl__crs_name(OGRSpatialReferenceH srs, char *out, size_t n) {
  const char *auth = OSRGetAuthorityName(srs, NULL), *code = OSRGetAuthorityCode(srs, NULL);
  if (auth && code)
    snprintf(out, n, "%s:%s", auth, code);
  else
    snprintf(out, n, "%s", OSRGetName(srs) ? OSRGetName(srs) : "unnamed CRS");
}

/* The centre of a raster in WGS84 lon/lat (for picking a UTM zone). */
static int gl__raster_centre_lonlat(GDALDatasetH ds, OGRSpatialReferenceH srs, double *lon,
                                    double *lat) {
  double gt[6];
  if (GDALGetGeoTransform(ds, gt) != CE_None)
    return GL_EFORMAT;
  double c = GDALGetRasterXSize(ds) / 2.0, r = GDALGetRasterYSize(ds) / 2.0;
  double x = gt[0] + c * gt[1] + r * gt[2], y = gt[3] + c * gt[4] + r * gt[5];
  OGRSpatialReferenceH wgs = OSRNewSpatialReference(NULL);
  OGRSpatialReferenceH src = OSRClone(srs);
  OGRCoordinateTransformationH ct = NULL;
  int rc = GL_EFORMAT;
  if (!wgs || !src || OSRImportFromEPSG(wgs, 4326) != OGRERR_NONE)
    goto cleanup;
  OSRSetAxisMappingStrategy(wgs, OAMS_TRADITIONAL_GIS_ORDER);
  OSRSetAxisMappingStrategy(src, OAMS_TRADITIONAL_GIS_ORDER);
  ct = OCTNewCoordinateTransformation(src, wgs);
  if (!ct || !OCTTransform(ct, 1, &x, &y, NULL))
    goto cleanup;
  *lon = x;
  *lat = y;
  rc = 0;
cleanup:
  if (ct)
    OCTDestroyCoordinateTransformation(ct);
  OSRDestroySpatialReference(src);
  OSRDestroySpatialReference(wgs);
  return rc;
}

int gl__map_grid_init(struct gl__map_grid *g, GDALDatasetH first, double tile_m, double stride_m,
                      char *err, size_t errlen) {
  memset(g, 0, sizeof *g);
  g->tile_m = tile_m;
  g->stride_m = stride_m;
  int rc = GL_EFORMAT;
  OGRSpatialReferenceH srs = GDALGetSpatialRef(first);
  if (!srs)
    return gl_fail(err, errlen, GL_EFORMAT, "%s has no coordinate reference system",
                        GDALGetDescription(first));
  if (OSRIsProjected(srs) && fabs(OSRGetLinearUnits(srs, NULL) - 1.0) < 1e-12) {
    g->srs = OSRClone(srs);
  } else {
    /* A geographic (or non-metre) first raster: tile in its WGS84 UTM
     * zone, where a metre is a metre to within 0.04 % across the zone. */
    double lon, lat;
    if (gl__raster_centre_lonlat(first, srs, &lon, &lat) != 0)
      return gl_fail(err, errlen, GL_EFORMAT, "%s: cannot locate the raster centre: %s",
                          GDALGetDescription(first), CPLGetLastErrorMsg());
    int zone = (int)floor((lon + 180.0) / 6.0) + 1;
    zone = zone < 1 ? 1 : zone > 60 ? 60 : zone;
    g->srs = OSRNewSpatialReference(NULL);
    if (g->srs && OSRImportFromEPSG(g->srs, (lat >= 0 ? 32600 : 32700) + zone) != OGRERR_NONE) {
      rc = gl_fail(err, errlen, GL_EINTERNAL, "cannot create UTM zone %d: %s", zone,
                        CPLGetLastErrorMsg());
      goto fail;
    }
  }
  if (!g->srs) {
    rc = gl_fail(err, errlen, GL_ENOMEM, "out of memory");
    goto fail;
  }
  OSRSetAxisMappingStrategy(g->srs, OAMS_TRADITIONAL_GIS_ORDER);
  gl__crs_name(g->srs, g->name, sizeof g->name);
  const char *wkt_opts[] = {"FORMAT=WKT2_2019", NULL};
  if (OSRExportToWktEx(g->srs, &g->wkt, wkt_opts) != OGRERR_NONE || !g->wkt) {
    rc = gl_fail(err, errlen, GL_EINTERNAL, "cannot export the grid CRS %s as WKT", g->name);
    goto fail;
  }
  g->pj_ctx = proj_context_create();
  if (!g->pj_ctx) {
    rc = gl_fail(err, errlen, GL_ENOMEM, "cannot create a PROJ context");
    goto fail;
  }
  if (!(g->to_wgs84 = gl__map_pj_to_wgs84(g->pj_ctx, g->wkt))) {
    rc = gl_fail(err, errlen, GL_EINTERNAL, "PROJ: no transformation from %s to WGS84: %s",
                      g->name, proj_context_errno_string(g->pj_ctx, proj_context_errno(g->pj_ctx)));
    goto fail;
  }
  return 0;
fail:
  gl__map_grid_fini(g);
  return rc;
}

PJ *gl__map_pj_to_wgs84(PJ_CONTEXT *ctx, const char *wkt) {
  PJ *src = proj_create(ctx, wkt), *dst = proj_create(ctx, "EPSG:4326"), *raw = NULL, *out = NULL;
  if (src && dst)
    raw = proj_create_crs_to_crs_from_pj(ctx, src, dst, NULL, NULL);
  /* Normalised for visualisation: input (easting, northing) and output
   * (lon, lat) whatever axis order the CRS definitions declare, the same
   * convention as GDAL geotransforms and OAMS_TRADITIONAL_GIS_ORDER. */
  if (raw)
    out = proj_normalize_for_visualization(ctx, raw);
  proj_destroy(raw);
  proj_destroy(src);
  proj_destroy(dst);
  return out;
}

void gl__map_grid_fini(struct gl__map_grid *g) {
  proj_destroy(g->to_wgs84);
  if (g->pj_ctx)
    proj_context_destroy(g->pj_ctx);
  CPLFree(g->wkt);
  if (g->srs)
    OSRDestroySpatialReference(g->srs);
  memset(g, 0, sizeof *g);
}

int gl__map_grid_to_wgs84(const struct gl__map_grid *g, double x, double y, double *lat,
                          double *lon) {
  PJ_COORD c = proj_coord(x, y, 0, 0);
  PJ_COORD r = proj_trans(g->to_wgs84, PJ_FWD, c);
  if (!isfinite(r.lpzt.lam) || !isfinite(r.lpzt.phi) || r.v[0] == HUGE_VAL)
    return GL_EINTERNAL;
  *lon = r.v[0];
  *lat = r.v[1];
  return 0;
}

static bool gl__valid_date(int y, int m, int d) {
  static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return y >= 1900 && y <= 2999 && m >= 1 && m <= 12 && d >= 1 && d <= mdays[m - 1];
}

/* "YYYY-MM-DD" of a date gl__valid_date accepted (so every field fits). */
static void gl__format_date(char out[11], int y, int m, int d) {
  char buf[32];
  snprintf(buf, sizeof buf, "%04d-%02d-%02d", y, m, d);
  memcpy(out, buf, 10);
  out[10] = 0;
}

void gl__map_capture_date(const char *path, GDALDatasetH ds, char out[11]) {
  out[0] = 0;
  /* NAIP: m_<quad>_<quarter>_<zone>_<res>_YYYYMMDD.tif (older files add
   * a processing date: ..._YYYYMMDD_YYYYMMDD.tif; the first is the
   * capture). Scan the name for the first '_' + 8 digits + '_' or '.'. */
  const char *base = strrchr(path, '/');
  base = base ? base + 1 : path;
  if (strncmp(base, "m_", 2) == 0) {
    for (const char *p = strchr(base, '_'); p; p = strchr(p + 1, '_')) {
      int i = 1;
      while (i <= 8 && isdigit((unsigned char)p[i]))
        i++;
      if (i != 9 || (p[9] != '_' && p[9] != '.'))
        continue;
      int y = (p[1] - '0') * 1000 + (p[2] - '0') * 100 + (p[3] - '0') * 10 + (p[4] - '0');
      int m = (p[5] - '0') * 10 + (p[6] - '0'), d = (p[7] - '0') * 10 + (p[8] - '0');
      if (gl__valid_date(y, m, d)) {
        gl__format_date(out, y, m, d);
        return;
      }
    }
  }
  /* TIFF DateTime is "YYYY:MM:DD HH:MM:SS". */
  const char *dt = ds ? GDALGetMetadataItem(ds, "TIFFTAG_DATETIME", NULL) : NULL;
  int y, m, d;
  if (dt && sscanf(dt, "%4d:%2d:%2d", &y, &m, &d) == 3 && gl__valid_date(y, m, d))
    gl__format_date(out, y, m, d);
}

/* A warped VRT of s->ds in the grid CRS with an alpha band, so that the
 * collars a reprojection creates read as nodata through the mask band. */
static int gl__make_warped_view(struct gl__map_source *s, const struct gl__map_grid *g, char *err,
                                size_t errlen) {
  GDALWarpOptions *wo = GDALCreateWarpOptions();
  if (!wo)
    return gl_fail(err, errlen, GL_ENOMEM, "out of memory");
  wo->nBandCount = 3;
  wo->panSrcBands = CPLMalloc(3 * sizeof(int));
  wo->panDstBands = CPLMalloc(3 * sizeof(int));
  for (int i = 0; i < 3; i++)
    wo->panSrcBands[i] = wo->panDstBands[i] = i + 1;
  wo->nDstAlphaBand = 4;
  for (int i = 1; i <= GDALGetRasterCount(s->ds); i++)
    if (GDALGetRasterColorInterpretation(GDALGetRasterBand(s->ds, i)) == GCI_AlphaBand)
      wo->nSrcAlphaBand = i;
  /* Resample once at about the source resolution here; tiles are then
   * resampled to the model input like native rasters. */
  s->view = GDALAutoCreateWarpedVRTEx(s->ds, NULL, g->wkt, GRA_Bilinear, 0.125, wo, NULL);
  GDALDestroyWarpOptions(wo);
  if (!s->view)
    return gl_fail(err, errlen, GL_EFORMAT, "cannot warp it into the grid CRS %s: %s",
                        g->name, CPLGetLastErrorMsg());
  s->warped = true;
  return 0;
}

int gl__map_source_open(struct gl__map_source *s, const char *path, const struct gl__map_grid *g,
                        char *err, size_t errlen) {
  int rc;
  memset(s, 0, sizeof *s);
  s->path = path;
  struct stat st;
  if (stat(path, &st) != 0)
    return gl_fail(err, errlen, errno == ENOENT ? GL_ENOENT : GL_EIO, "%s: %s", path,
                        strerror(errno));
  CPLErrorReset();
  s->ds = GDALOpenEx(path, GDAL_OF_RASTER | GDAL_OF_READONLY, NULL, NULL, NULL);
  if (!s->ds)
    return gl_fail(err, errlen, GL_EFORMAT, "%s: not a raster GDAL can read: %s", path,
                        CPLGetLastErrorMsg());
  if (GDALGetRasterCount(s->ds) < 3) {
    rc = gl_fail(err, errlen, GL_ENOTSUP, "%s: %d band(s); the first three must be R, G, B",
                      path, GDALGetRasterCount(s->ds));
    goto fail;
  }
  for (int b = 1; b <= 3; b++) {
    GDALDataType t = GDALGetRasterDataType(GDALGetRasterBand(s->ds, b));
    if (t != GDT_Byte) {
      /* Scaling 16-bit or float imagery to 8 bits needs a choice (the
       * range, a stretch) that belongs to the user, not to a silent clamp. */
      rc = gl_fail(err, errlen, GL_ENOTSUP,
                        "%s: band %d is %s; only 8-bit (Byte) RGB is supported (convert with "
                        "gdal_translate -ot Byte -scale)",
                        path, b, GDALGetDataTypeName(t));
      goto fail;
    }
  }
  double gt[6];
  OGRSpatialReferenceH srs = GDALGetSpatialRef(s->ds);
  if (GDALGetGeoTransform(s->ds, gt) != CE_None || !srs) {
    rc = gl_fail(err, errlen, GL_EFORMAT, "%s: not georeferenced (no geotransform or CRS)",
                      path);
    goto fail;
  }
  gl__crs_name(srs, s->crs_name, sizeof s->crs_name);
  if ((rc = gl__map_sha256_file(path, s->sha256, &s->bytes)) != 0) {
    gl_fail(err, errlen, rc, "%s: cannot read it to checksum it", path);
    goto fail;
  }
  gl__map_capture_date(path, s->ds, s->date);

  bool north_up = gt[2] == 0 && gt[4] == 0 && gt[1] > 0 && gt[5] < 0;
  if (north_up && OSRIsSame(srs, g->srs)) {
    s->view = s->ds;
  } else if ((rc = gl__make_warped_view(s, g, err, errlen)) != 0) {
    gl_err_prefix(err, errlen, path);
    goto fail;
  }
  if (GDALGetGeoTransform(s->view, s->gt) != CE_None || s->gt[2] != 0 || s->gt[4] != 0 ||
      !(s->gt[1] > 0) || !(s->gt[5] < 0)) {
    rc = gl_fail(err, errlen, GL_EFORMAT, "%s: unusable geotransform in the grid CRS", path);
    goto fail;
  }
  s->xsize = GDALGetRasterXSize(s->view);
  s->ysize = GDALGetRasterYSize(s->view);
  s->all_valid = (GDALGetMaskFlags(GDALGetRasterBand(s->view, 1)) & GMF_ALL_VALID) != 0;

  /* Tiles wholly inside the extent; the epsilon absorbs the rounding of
   * coordinates that sit exactly on a grid line. */
  const double eps = 1e-9;
  double xmin = s->gt[0], xmax = s->gt[0] + s->xsize * s->gt[1];
  double ymax = s->gt[3], ymin = s->gt[3] + s->ysize * s->gt[5];
  double c0 = ceil(xmin / g->stride_m - eps), c1 = floor((xmax - g->tile_m) / g->stride_m + eps);
  double r1 = floor((ymax - g->tile_m) / g->stride_m + eps), r0 = ceil(ymin / g->stride_m - eps);
  s->col0 = (int64_t)c0;
  s->ncols = c1 >= c0 ? (int64_t)(c1 - c0) + 1 : 0;
  s->row_top = (int64_t)r1;
  s->nrows = r1 >= r0 ? (int64_t)(r1 - r0) + 1 : 0;
  return 0;
fail:
  gl__map_source_close(s);
  return rc;
}

void gl__map_source_close(struct gl__map_source *s) {
  if (s->view && s->view != s->ds)
    GDALClose(s->view);
  if (s->ds)
    GDALClose(s->ds);
  s->view = s->ds = NULL;
}

/* Snaps values within a micro-pixel of an integer onto it, so that a
 * window that is meant to be integral takes GDAL's exact copy path. */
static double gl__snap(double v) {
  double r = nearbyint(v);
  return fabs(v - r) < 1e-6 ? r : v;
}

int gl__map_source_read(const struct gl__map_source *s, double x0, double ytop, double wm,
                        double hm, uint32_t w, uint32_t h, size_t stride, uint8_t *rgb,
                        uint8_t *mask, char *err, size_t errlen) {
  double px = gl__snap((x0 - s->gt[0]) / s->gt[1]);
  double py = gl__snap((ytop - s->gt[3]) / s->gt[5]);
  double pw = gl__snap(wm / s->gt[1]), ph = gl__snap(hm / -s->gt[5]);
  int ix0 = (int)floor(px), iy0 = (int)floor(py);
  int ix1 = (int)ceil(px + pw), iy1 = (int)ceil(py + ph);
  if (ix0 < 0)
    ix0 = 0;
  if (iy0 < 0)
    iy0 = 0;
  if (ix1 > s->xsize)
    ix1 = s->xsize;
  if (iy1 > s->ysize)
    iy1 = s->ysize;
  if (ix1 <= ix0 || iy1 <= iy0)
    return gl_fail(err, errlen, GL_EINTERNAL, "%s: window at %.3f,%.3f is outside the raster",
                   s->path, x0, ytop);
  GDALRasterIOExtraArg ex;
  INIT_RASTERIO_EXTRA_ARG(ex);
  /* GDAL widens the bilinear kernel when it downsamples (it shares the
   * overview code), so this also antialiases windows larger than w x h. */
  ex.eResampleAlg = GRIORA_Bilinear;
  ex.bFloatingPointWindowValidity = TRUE;
  ex.dfXOff = px;
  ex.dfYOff = py;
  ex.dfXSize = pw;
  ex.dfYSize = ph;
  int bands[3] = {1, 2, 3};
  CPLErrorReset();
  if (GDALDatasetRasterIOEx(s->view, GF_Read, ix0, iy0, ix1 - ix0, iy1 - iy0, rgb, (int)w, (int)h,
                            GDT_Byte, 3, bands, 3, (GSpacing)stride * 3, 1, &ex) != CE_None)
    return gl_fail(err, errlen, GL_EIO, "%s: reading the window at %.3f,%.3f failed: %s",
                   s->path, x0, ytop, CPLGetLastErrorMsg());
  if (!mask)
    return 0;
  if (s->all_valid) {
    for (uint32_t i = 0; i < h; i++)
      memset(mask + (size_t)i * stride, 1, w);
    return 0;
  }
  /* Nearest for the mask: any nodata source pixel that a window pixel maps
   * onto marks it. */
  ex.eResampleAlg = GRIORA_NearestNeighbour;
  GDALRasterBandH mb = GDALGetMaskBand(GDALGetRasterBand(s->view, 1));
  if (GDALRasterIOEx(mb, GF_Read, ix0, iy0, ix1 - ix0, iy1 - iy0, mask, (int)w, (int)h, GDT_Byte,
                     1, (GSpacing)stride, &ex) != CE_None)
    return gl_fail(err, errlen, GL_EIO, "%s: reading the mask at %.3f,%.3f failed: %s", s->path,
                   x0, ytop, CPLGetLastErrorMsg());
  return 0;
}

int gl__map_source_read_tile(const struct gl__map_source *s, const struct gl__map_grid *g,
                             double x0, double y0, uint32_t w, uint32_t h, uint8_t *rgb,
                             uint8_t *mask_scratch, bool *valid, char *err, size_t errlen) {
  int rc = gl__map_source_read(s, x0, y0 + g->tile_m, g->tile_m, g->tile_m, w, h, w, rgb,
                               s->all_valid ? NULL : mask_scratch, err, errlen);
  *valid = true;
  for (size_t i = 0; !rc && !s->all_valid && i < (size_t)w * h; i++)
    if (mask_scratch[i] == 0) {
      *valid = false;
      break;
    }
  return rc;
}
