/* Helpers shared by the files of the map module (not part of the API). */
#ifndef GL_MAP_INTERNAL_H
#define GL_MAP_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <gdal.h>
#include <ogr_srs_api.h>
#include <proj.h>

/* Names of the files inside a pack. */
#define GL__MAP_MANIFEST "manifest.json"
#define GL__MAP_TILES "tiles.sqlite"
#define GL__MAP_INDEX "index.faiss"
/* The value of the manifest's "format" key. */
#define GL__MAP_FORMAT_NAME "geoloc-map"
/* A manifest larger than this is not one of ours (the sources list of even a
 * country-sized map is far smaller); refusing it early keeps a corrupt file
 * from making us allocate without bound. */
#define GL__MAP_MANIFEST_MAX (16u * 1024u * 1024u)
/* Most source rasters (years) a pack holds per tile: every tile stores
 * rotations x years descriptors, so this bounds the vectors a tile costs
 * (decades of yearly imagery is a few dozen). */
#define GL__MAP_MAX_YEARS 256u

/* --- errors ------------------------------------------------------------- */

/* Failures use gl_fail and gl_err_prefix from core/err.h. */

/* --- files (fs.c) ---------------------------------------------------------- */

/* SHA-256 of everything readable from fd (from its current offset) as 64
 * lowercase hex digits; *bytes gets the length. Returns 0 or GL_EIO. */
int gl__map_sha256_fd(int fd, char out[65], uint64_t *bytes);
/* The same for the file at path: GL_ENOENT when it does not exist. */
int gl__map_sha256_file(const char *path, char out[65], uint64_t *bytes);

/* fsync()s the file or directory at path. Returns 0 or GL_EIO. */
int gl__map_fsync_path(const char *path);

/* Removes path and everything below it, never following symlinks. A path
 * that does not exist is success. Returns 0 or GL_EIO. */
int gl__map_rmtree(const char *path);

/* Writes len bytes to path (created or truncated, mode 0644) and fsyncs it.
 * Returns 0 or GL_EIO. */
int gl__map_write_file(const char *path, const void *data, size_t len);

/* Reads the whole file at path (at most max bytes) into a malloc'd,
 * NUL-terminated buffer. Returns 0, GL_ENOENT, GL_ETOOBIG, GL_EIO or
 * GL_ENOMEM. */
int gl__map_read_file(const char *path, size_t max, char **out, size_t *len);

/* --- geodesy (geo.c) -------------------------------------------------------- */

/* Up to two lat/lon boxes (two when the circle crosses the antimeridian)
 * that together contain every point within radius_m of (lat, lon):
 * box[i] = {min_lat, max_lat, min_lon, max_lon}. Returns the box count. */
int gl__map_circle_boxes(double lat, double lon, double radius_m, double box[2][4]);

/* --- tiling (grid.c) ----------------------------------------------------------- */

/* The metric grid every source is tiled on. */
struct gl__map_grid {
  OGRSpatialReferenceH srs; /* grid CRS, traditional GIS axis order */
  char *wkt;                /* its WKT2 (CPLFree) */
  char name[96];            /* "EPSG:26914", or the CRS name without an authority */
  PJ_CONTEXT *pj_ctx;
  PJ *to_wgs84; /* grid CRS -> WGS84, normalised to lon/lat order */
  double tile_m, stride_m;
};

/* One source raster seen through the grid CRS. */
struct gl__map_source {
  const char *path;
  GDALDatasetH ds;   /* as opened */
  GDALDatasetH view; /* ds itself, or a warped VRT of it in the grid CRS */
  bool warped;
  double gt[6]; /* geotransform of view: north-up */
  int xsize, ysize;
  bool all_valid; /* the view has no nodata/alpha mask */
  char sha256[65];
  uint64_t bytes;
  char date[11];      /* capture date "YYYY-MM-DD" or "" */
  char crs_name[96];  /* the raster's own CRS */
  /* Tiles on the grid inside the view: corners at (col * stride, row *
   * stride), columns col0 .. col0 + ncols - 1 west to east, rows from
   * row_top down to row_top - nrows + 1 (north to south). */
  int64_t col0, ncols, row_top, nrows;
};

/* Picks the grid CRS from the first source raster (see gl_map_build) and
 * prepares the transform to WGS84. Returns 0 or an error with err set. */
int gl__map_grid_init(struct gl__map_grid *g, GDALDatasetH first, double tile_m, double stride_m,
                      char *err, size_t errlen);
void gl__map_grid_fini(struct gl__map_grid *g);

/* Opens path into *s (zeroed first): checks for three 8-bit bands, hashes
 * the file, reads the capture date, sets up the view in the grid CRS and
 * the tile range. Returns 0 or an error with err set. */
int gl__map_source_open(struct gl__map_source *s, const char *path, const struct gl__map_grid *g,
                        char *err, size_t errlen);
void gl__map_source_close(struct gl__map_source *s);

/* Reads the north-up window of wm x hm metres whose top-left corner is
 * (x0, ytop) in the grid CRS into rgb, w x h pixels in rows of `stride`
 * pixels, resampled bilinearly (antialiased when downsampling); with mask
 * not NULL, also each pixel's validity there (0: nodata; 1 everywhere for a
 * raster without nodata), same layout, one byte a pixel. The window must lie
 * inside the raster. Returns 0 or an error with err set. */
int gl__map_source_read(const struct gl__map_source *s, double x0, double ytop, double wm,
                        double hm, uint32_t w, uint32_t h, size_t stride, uint8_t *rgb,
                        uint8_t *mask, char *err, size_t errlen);

/* Reads the tile with lower-left corner (x0, y0) in the grid CRS into rgb
 * (w * h * 3 bytes), resampled bilinearly to w x h pixels. *valid is false
 * when the tile holds nodata pixels. Returns 0 or GL_EIO with err set. */
int gl__map_source_read_tile(const struct gl__map_source *s, const struct gl__map_grid *g,
                             double x0, double y0, uint32_t w, uint32_t h, uint8_t *rgb,
                             uint8_t *mask_scratch, bool *valid, char *err, size_t errlen);

/* A PROJ transformation from the CRS of wkt to WGS84, normalised to
 * (easting, northing) -> (lon, lat) order, in ctx; NULL when PROJ cannot
 * make one. */
PJ *gl__map_pj_to_wgs84(PJ_CONTEXT *ctx, const char *wkt);

/* Converts grid CRS coordinates to WGS84 degrees. Returns 0 or GL_EINTERNAL. */
int gl__map_grid_to_wgs84(const struct gl__map_grid *g, double x, double y, double *lat,
                          double *lon);

/* Capture date "YYYY-MM-DD" of a raster into out: from a NAIP file name
 * (m_..._YYYYMMDD.tif), else from TIFFTAG_DATETIME, else "". */
void gl__map_capture_date(const char *path, GDALDatasetH ds, char out[11]);

/* Makes sure GDAL's drivers are registered (once per process). */
void gl__map_gdal_init(void);

/* --- the dense layer (dense.c) ------------------------------------------------ */

struct gl_map;
struct gl_map_encoder;
struct gl__map_dense_ctx;
typedef struct cJSON cJSON;

/* Computes the dense layer of every source over the cells covering ext =
 * {xmin, ymin, xmax, ymax} (grid CRS) with enc->features_tiled, writes
 * dense-N.i8 files into dir and returns the manifest's "dense" object in
 * *out. Returns 0 or an error with err set. */
int gl__map_dense_write(const struct gl__map_grid *g, const struct gl__map_source *src,
                        uint32_t n_src, const struct gl_map_encoder *enc, const double ext[4],
                        const char *dir, cJSON **out, char *err, size_t errlen);
/* Loads and verifies the dense layer the manifest root describes (*out
 * stays NULL for a pack without one); gx/gy are the tile centres in the
 * grid CRS by id - 1, which must outlive it (the map's). */
int gl__map_dense_load(const char *pack, const cJSON *root, uint64_t n_tiles, const double *gx,
                       const double *gy, struct gl__map_dense_ctx **out, char *err,
                       size_t errlen);
void gl__map_dense_free(struct gl__map_dense_ctx *d);
/* The dense context of an open pack, or NULL (pack.c). */
struct gl__map_dense_ctx *gl__map_dense_of(const struct gl_map *m);

#endif
