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

/* --- manifest.json (manifest.c: its one reader and writer) ---------------------- */

typedef struct cJSON cJSON;

/* The files a pack of this format version holds besides the manifest and
 * the dense layers, in the order the manifest lists them. */
enum { GL__MAP_N_FILES = 2 };
extern const char *const gl__map_pack_files[GL__MAP_N_FILES];

struct gl__manifest_tiling {
  const char *crs, *crs_wkt; /* the grid CRS: name ("EPSG:26914"), WKT2 */
  double tile_m, stride_m, m_per_px;
  uint32_t tile_px[2];       /* width, height the tiles were encoded at */
  const char *resampling;
  uint32_t rotations, years; /* descriptors per tile: rotations x years */
  bool has_bbox;
  double bbox[4]; /* west, south, east, north */
};

struct gl__manifest_source {
  const char *file, *path, *crs, *capture_date; /* capture_date may be NULL */
  char sha256[65];
  uint64_t bytes, places, skipped;
  uint64_t tiles; /* packs before multi-year ones: its tiles instead of places */
  bool warped;
};

struct gl__manifest_counts {
  uint64_t tiles, sources, skipped;
};

struct gl__manifest_layer {
  uint32_t source;
  char file[32];
  char sha256[65];
  uint64_t bytes, valid_cells;
};

struct gl__manifest_dense {
  uint32_t layer, stride_px, channels, input_px;
  double m_per_px, cell_m;
  uint32_t rows, cols;
  double geotransform[6];
  const char *encoding;
  uint32_t block_px, margin_px;
  uint32_t n_layers;
  struct gl__manifest_layer *layers;
};

struct gl__manifest_file {
  char sha256[65];
  uint64_t bytes;
};

/* manifest.json, field by field (the keys: manifest.c's tables). */
struct gl__manifest {
  const char *format;
  uint32_t format_version;
  const char *generator, *created;
  char model_sha256[65];
  uint32_t descriptor_dim;
  const char *metric, *index_type;
  uint64_t index_nprobe; /* 0: not an IVF index */
  struct gl__manifest_tiling tiling;
  uint32_t n_sources;
  struct gl__manifest_source *sources;
  struct gl__manifest_counts counts;
  bool has_dense;
  struct gl__manifest_dense dense;
  struct gl__manifest_file files[GL__MAP_N_FILES]; /* by gl__map_pack_files */
  cJSON *root; /* a read manifest: owns its strings */
};

/* Reads and checks manifest.json of the pack directory path into *m (free
 * with gl__manifest_free, also after a failure). Returns 0 or an error with
 * err set. */
int gl__manifest_read(const char *path, struct gl__manifest *m, char *err, size_t errlen);
void gl__manifest_free(struct gl__manifest *m);
/* Writes m as the file at path (fsynced). */
int gl__manifest_write(const char *path, const struct gl__manifest *m, char *err, size_t errlen);

/* --- tiles.sqlite (tiles.c: its schema and every statement on it) ------------- */

typedef struct sqlite3 sqlite3;
typedef struct sqlite3_stmt sqlite3_stmt;
struct gl_map_tile;

/* An open tiles.sqlite: written by the builder or read by an open pack
 * (whose statements are used under the pack's lock). */
struct gl__tiles {
  sqlite3 *db;
  sqlite3_stmt *ins_source, *ins_tile, *ins_rtree; /* writing */
  sqlite3_stmt *q_box, *q_tile;                     /* reading */
};

/* A row of the tiles table. */
struct gl__tile_row {
  double lat, lon, min_lat, max_lat, min_lon, max_lon; /* WGS84 */
  double grid_x, grid_y;                               /* the centre in the grid CRS */
  double m_per_px;
  int64_t source_id; /* the first source covering the tile: its position + 1 */
  const char *source, *capture_date; /* its file name and date ("" or NULL: none) */
};

/* Creates the file at path with the schema and opens a transaction. */
int gl__tiles_create(struct gl__tiles *t, const char *path, char *err, size_t errlen);
int gl__tiles_add_source(struct gl__tiles *t, int64_t id, const char *file, const char *path,
                         const char *sha256, const char *crs, const char *date, char *err,
                         size_t errlen);
int gl__tiles_add(struct gl__tiles *t, int64_t id, const struct gl__tile_row *r, char *err,
                  size_t errlen);
/* Commits and closes (the caller fsyncs the file). */
int gl__tiles_commit(struct gl__tiles *t, char *err, size_t errlen);
/* Opens the file at path read-only. */
int gl__tiles_open(struct gl__tiles *t, const char *path, char *err, size_t errlen);
/* The number of rows of the tiles table into *n. */
int gl__tiles_count(struct gl__tiles *t, uint64_t *n, char *err, size_t errlen);
/* Reads the centres of tiles 1..n by id - 1; fails unless the ids are
 * exactly 1..n. */
int gl__tiles_centres(struct gl__tiles *t, uint64_t n, double *lat, double *lon, double *gx,
                      double *gy, char *err, size_t errlen);
/* Tile id's row into out (id, bounds, m_per_px, source, capture date):
 * 0, or GL_EIO when it is not there. */
int gl__tiles_get(struct gl__tiles *t, int64_t id, struct gl_map_tile *out);
/* Calls fn with the id of every tile whose bounds meet box = {min_lat,
 * max_lat, min_lon, max_lon}; stops at fn's first nonzero return, which it
 * returns. */
int gl__tiles_box(struct gl__tiles *t, const double box[4], int (*fn)(void *ctx, int64_t id),
                  void *ctx, char *err, size_t errlen);
void gl__tiles_close(struct gl__tiles *t);

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
 * Returns 0 or GL_EIO with errno saying why (ENOSPC for a full disk). */
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
/* Computes the dense layer of every source over the cells covering ext =
 * {xmin, ymin, xmax, ymax} (grid CRS) with enc->features_tiled, writes
 * dense-N.i8 files into dir and describes them in *out (its layers
 * malloc'd: the caller frees them). Returns 0 or an error with err set. */
int gl__map_dense_write(const struct gl__map_grid *g, const struct gl__map_source *src,
                        uint32_t n_src, const struct gl_map_encoder *enc, const double ext[4],
                        const char *dir, struct gl__manifest_dense *out, char *err,
                        size_t errlen);
/* Loads and verifies the dense layer the manifest describes (*out stays
 * NULL for a pack without one); gx/gy are the tile centres in the grid CRS
 * by id - 1, which must outlive it (the map's). */
int gl__map_dense_load(const char *pack, const struct gl__manifest *mf, uint64_t n_tiles,
                       const double *gx, const double *gy, struct gl__map_dense_ctx **out,
                       char *err, size_t errlen);
void gl__map_dense_free(struct gl__map_dense_ctx *d);
/* The dense context of an open pack, or NULL (pack.c). */
struct gl__map_dense_ctx *gl__map_dense_of(const struct gl_map *m);

#endif
