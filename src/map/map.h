/* Map packs: geo-referenced tile descriptors and the search over them.
 *
 * A pack is a directory NAME.map/ holding
 *   manifest.json  format version, model sha256, descriptor size, index type,
 *                  tiling, source rasters with their sha256, counts, and the
 *                  sha256 of each other file;
 *   tiles.sqlite   one row per tile (centre and bounds in WGS84, metres per
 *                  pixel, source raster and capture date of the first source
 *                  that covers the place) with an R*Tree on the bounds for
 *                  prior queries;
 *   index.faiss    the descriptors in a FAISS IndexIDMap keyed by vector id.
 *   dense-N.i8     the dense layer of source N for the fine stage (dense.h),
 *                  when the pack was built with one.
 *
 * Tiles and years. A tile is a place on the metric grid (its lower-left
 * corner); the grid is shared by all source rasters, so the rasters of
 * several years of one area give the same places, and the pack holds ONE
 * tile per place: a multi-year map. Every tile holds per_tile = rotations
 * x years descriptors, years being the number of sources (the manifest's
 * tiling.years; packs without it hold 1) and rotations the headings each
 * is encoded at: tile t, source y (its position in the manifest's sources
 * list), heading r is vector id (t - 1) * per_tile + y * rotations + r + 1,
 * so the tile of vector v is (v - 1) / per_tile + 1. A source that does not
 * cover a place (outside its extent, or nodata there) holds a copy of the
 * descriptors of the first source that does. Every search scores a tile by
 * its best vector: the best heading of its best year. Sources are years by
 * position, not by date: rasters of one year that lie side by side are two
 * "years" too, each holding copies where it does not reach.
 *
 * Tile ids run from 1 to the tile count in grid order: rows north to
 * south, each row west to east.
 *
 * Building writes into a temporary directory beside the target and renames
 * it into place, so a crash never leaves a half-built pack. Opening verifies
 * the manifest, every checksum and (when asked) the model. */
#ifndef GL_MAP_MAP_H
#define GL_MAP_MAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "img/img.h"

/* The pack format this code writes and the only one it reads. */
#define GL_MAP_FORMAT_VERSION 1

/* --- encoders ------------------------------------------------------------- */

/* What turns tiles into descriptors. The builder hands encode() batches of
 * at most max_batch RGB8 images of exactly width x height pixels and expects
 * n * dim floats back, each descriptor L2-normalised. encode returns 0 or a
 * negative GL_E* code. */
struct gl_map_encoder {
  uint32_t width, height; /* model input size in pixels */
  uint32_t dim;           /* floats per descriptor */
  uint32_t max_batch;     /* images per encode() call, >= rotations */
  /* Headings each tile is encoded at: 1, 2 or 4 (0 means 1). With more
   * than one the builder also hands encode() the square tile turned by
   * 360/rotations degree steps, and the pack holds every heading. */
  uint32_t rotations;
  char model_sha256[65];  /* 64 lowercase hex digits: the model the pack is bound to */
  int (*encode)(void *ctx, const struct gl_image *images, uint32_t n, float *out);
  void *ctx;
  /* The dense layer (dense.h), when dense_layer is not 0: the backbone
   * block, its stride in pixels and channels, the block and margin of the
   * tiled pass, and features_tiled, which fills out with the L2-normalised
   * cells of an image whose sides are multiples of the stride
   * (gl_nn_engine_features_tiled). */
  uint32_t dense_layer, dense_stride, dense_channels, dense_block, dense_margin;
  /* The side of the square input the layer's cells are computed at (the
   * canvas is read at tile_m / dense_size metres a pixel; 0: width). */
  uint32_t dense_size;
  int (*features_tiled)(void *ctx, const struct gl_image *image, float *out);
};

/* Loads the model file at model_path and plans a CPU engine for it
 * (threads: 0 for all cores; max_batch: 0 for 16, rounded up to a multiple
 * of the rotations), filling *enc. The tile size is the model's input_size
 * from its config, the rotations its ref_rotations. Release with
 * gl_map_encoder_fini. Returns 0 or the engine's error (err says what). */
int gl_map_encoder_init_model(struct gl_map_encoder *enc, const char *model_path, uint32_t threads,
                              uint32_t max_batch, char *err, size_t errlen);

/* Adds the dense layer of backbone block `layer` (1..17, or
 * GL_MAP_DENSE_MODEL_LAYER: the model's dense head's block, else 6; fine.h)
 * to an encoder from gl_map_encoder_init_model: packs built with it carry
 * the layer, computed at the fine stage's input size for that block
 * (gl_nn_model_fine_size). Returns 0, GL_EINVAL (no such layer, or a
 * model whose fine-stage input is not a multiple of its stride) or the
 * engine's error. */
#define GL_MAP_DENSE_MODEL_LAYER UINT32_MAX
int gl_map_encoder_enable_dense(struct gl_map_encoder *enc, uint32_t layer, char *err,
                                size_t errlen);

/* Releases what gl_map_encoder_init_model acquired; safe on a zeroed struct. */
void gl_map_encoder_fini(struct gl_map_encoder *enc);

/* --- building --------------------------------------------------------------- */

/* Where a build is; passed to the progress callback. */
struct gl_map_progress {
  /* "tiles" while encoding, "dense" while computing the dense layer (when
   * the encoder has one), then "index", "write", "done". */
  const char *stage;
  /* Places read so far (made tiles + skipped), each read from every source
   * that covers it. */
  uint64_t done;
  /* Places on the grid that at least one source's extent holds (inside the
   * bbox, if any), each counted once however many sources cover it. */
  uint64_t total;
  /* Places left out: every source that covers them has nodata pixels there. */
  uint64_t skipped;
  double elapsed_s;       /* since the build started */
};

struct gl_map_build_opts {
  /* Source rasters (any GDAL-readable georeferenced raster, any CRS, first
   * three bands 8-bit RGB), 1 <= n_orthos <= 256. Each is a year of every
   * tile (see the file comment): several years of one area make a
   * multi-year map with one tile per place. */
  const char *const *orthos;
  uint32_t n_orthos;
  double tile_m;          /* tile side in metres, > 0 */
  double stride_m;        /* grid step in metres, > 0 */
  const char *index_type; /* FAISS index_factory string; NULL means "Flat" */
  const char *out;        /* the pack directory to create or replace */
  /* When has_bbox, only places whose tile centre (WGS84, the value written
   * to tiles.sqlite) lies inside bbox = {west, south, east, north} degrees,
   * edges included, are cut; the others are neither read (from any
   * source) nor counted.
   * west < east (a box across the antimeridian is not supported), south <
   * north, longitudes in [-180, 180], latitudes in [-90, 90]. */
  bool has_bbox;
  double bbox[4];
  /* Called after every batch and at each stage change; may be NULL. */
  void (*progress_cb)(void *ctx, const struct gl_map_progress *p);
  void *progress_ctx;
};

/* Result counts of a build. */
struct gl_map_build_stats {
  uint64_t tiles;   /* tiles in the pack: places some source covers with valid pixels */
  uint64_t skipped; /* places left out (nodata in every source that covers them) */
  double seconds;
};

/* Builds the pack o->out from o->orthos with enc (see the file comment for
 * the layout). The grid is metric: tile corners lie on multiples of
 * stride_m in the grid CRS, which is the first raster's CRS when it is
 * projected in metres and otherwise the WGS84 UTM zone of its centre;
 * rasters in another CRS are warped into the grid CRS. A source covers a
 * place when the tile lies wholly inside the raster and holds no nodata
 * pixel there; a place no source covers is skipped, and a source that does
 * not cover a tile gets copies (see the file comment). Each tile is
 * resampled (bilinear) to enc->width x enc->height pixels. With a bbox, a
 * grid that keeps no place is GL_EINVAL, and the box is recorded in the
 * manifest (tiling.bbox). The manifest lists every source with its sha256,
 * capture date, the places it covered and those it had nodata at.
 *
 * Stale temporary directories of earlier builds of the same target that
 * were killed are removed first. An existing pack at o->out is replaced
 * atomically; anything else there is refused.
 *
 * Returns 0; GL_EINVAL (bad options, or o->out exists and is not a pack),
 * GL_ENOENT or GL_EFORMAT (unreadable or unsuitable raster), GL_ENOTSUP
 * (raster that is not 8-bit RGB), GL_EIO, GL_ENOMEM, GL_EINTERNAL (FAISS),
 * or the encoder's code; err says what failed. */
int gl_map_build(const struct gl_map_build_opts *o, const struct gl_map_encoder *enc,
                 struct gl_map_build_stats *stats, char *err, size_t errlen);

/* --- opening and searching -------------------------------------------------- */

struct gl_map;

/* Opens the pack at path: reads manifest.json, checks the format version,
 * that every listed file exists and has its recorded sha256, that the
 * tiles table and the index agree with the counts, and, when model_sha256
 * is not NULL, that the pack was built with that model. Returns 0 with *out
 * set (reference count 1), GL_ENOENT (no pack or a missing file),
 * GL_EFORMAT (corrupt or inconsistent pack, checksum mismatch; err names the
 * file and what differs), GL_EINVAL (built with another model; err gives
 * both hashes), GL_EIO or GL_ENOMEM. */
int gl_map_open(const char *path, const char *model_sha256, struct gl_map **out, char *err,
                size_t errlen);

/* Reference counting: a map shared by threads (the daemon swaps maps on
 * reload while searches run) lives until its last reference goes. */
struct gl_map *gl_map_ref(struct gl_map *m);
/* Drops one reference; the last frees the map. NULL is ignored. */
void gl_map_close(struct gl_map *m);

uint64_t gl_map_tile_count(const struct gl_map *m);
uint32_t gl_map_descriptor_dim(const struct gl_map *m);
const char *gl_map_model_sha256(const struct gl_map *m);
const char *gl_map_index_type(const struct gl_map *m);
double gl_map_tile_m(const struct gl_map *m);
double gl_map_stride_m(const struct gl_map *m);
/* Headings and years (sources) whose descriptors each tile holds: the
 * index holds tile count x rotations x years vectors. */
uint32_t gl_map_rotations(const struct gl_map *m);
uint32_t gl_map_years(const struct gl_map *m);

/* One tile, as stored in tiles.sqlite. */
struct gl_map_tile {
  int64_t id;
  double lat, lon;                         /* centre, WGS84 degrees */
  double min_lat, max_lat, min_lon, max_lon; /* bounds, WGS84 degrees */
  double m_per_px;                         /* metres per pixel of the encoded tile */
  /* File name and capture date ("YYYY-MM-DD", or "" when unknown) of the
   * first source that covers the place (a multi-year tile has others). */
  char source[256];
  char capture_date[11];
};

/* Fills *out for tile id. Returns 0, GL_EINVAL (no such id) or GL_EIO. */
int gl_map_tile_get(struct gl_map *m, int64_t id, struct gl_map_tile *out);

/* A search prior: only tiles whose centre lies within radius_m metres
 * (geodesic distance on WGS84) of (lat, lon) are candidates. A radius <= 0
 * means no prior. */
struct gl_map_prior {
  double lat, lon, radius_m;
};

struct gl_map_hit {
  int64_t tile_id; /* -1 for an empty slot */
  float score;     /* inner product of unit descriptors: cosine similarity */
  double lat, lon; /* tile centre, WGS84 degrees */
};

/* Searches the top k tiles for each of n queries (n * dim floats, each
 * L2-normalised), best first, into hits[i * k .. i * k + k - 1]; a tile
 * scores as its best vector (heading and year) on every path. priors is
 * NULL or n entries. counts (NULL or n entries) receives the number of
 * hits found per query; slots past it have tile_id -1.
 *
 * Without a prior the FAISS index answers. With one, FAISS 1.7.3's C API
 * has no SearchParameters/IDSelector search, so the candidates come from
 * the R*Tree and the exact circle test, and their scores are inner products
 * with the descriptors the index reconstructs (exact for Flat and HNSW, the
 * quantized vector the index itself scores for IVF/PQ).
 *
 * Safe to call from several threads at once. Returns 0, GL_EINVAL (bad
 * arguments), GL_ENOTSUP (a prior on an index type that cannot reconstruct
 * its vectors), GL_ENOMEM, GL_EIO or GL_EINTERNAL. */
int gl_map_search(struct gl_map *m, const float *queries, uint32_t n, uint32_t k,
                  const struct gl_map_prior *priors, struct gl_map_hit *hits, uint32_t *counts,
                  char *err, size_t errlen);

/* Geodesic distance in metres between two WGS84 points (PROJ geod_inverse). */
double gl_map_distance_m(double lat1, double lon1, double lat2, double lon2);

/* --- inspection ---------------------------------------------------------------- */

/* True when path is a directory holding a manifest.json (for `geoloc
 * inspect`, which also inspects model files). */
bool gl_map_is_pack(const char *path);

/* Where the source rasters of the pack at path are now, in the manifest's
 * order (reads the manifest only): the path recorded when the pack was
 * built if the file is still there, else the file of that name beside the
 * pack, else NULL (found is malloc'd). For drawing a map's background. */
struct gl_map_source_file {
  char file[256]; /* the raster's file name */
  char *found;
};
int gl_map_source_files(const char *path, struct gl_map_source_file **out, uint32_t *n, char *err,
                        size_t errlen);
void gl_map_source_files_free(struct gl_map_source_file *s, uint32_t n);

/* Prints a summary of the pack at path to f: format, model, descriptor
 * size, index, tiling, rotations, years, sources with dates and the places
 * they cover, files with sizes, and whether the checksums verify. Returns 0
 * when the pack verifies, else the gl_map_open error (the summary is still
 * printed as far as the manifest could be read; err says what is wrong). */
int gl_map_inspect(const char *path, FILE *f, char *err, size_t errlen);

#endif
