/* The dense layer of a map pack: a feature map of each source raster for
 * the fine stage (src/loc/fine.h, step 3).
 *
 * Layout in the pack: one file dense-N.i8 per source N (in the manifest's
 * sources order), rows x cols cells of `channels` int8 values each, cells
 * row-major from the north-west corner, value = round(127 * x) of the
 * L2-normalised feature x (a cell with missing imagery is all zero). The
 * manifest's "dense" object holds the layer, stride, channels, cell size,
 * the geotransform of the cell grid in the pack's grid CRS
 * [x0, cell_m, 0, y0, 0, -cell_m] and each file's sha256 and byte count;
 * packs without it open without a fine stage. The cells are the model's
 * fine-stage cells (gl_nn_cells, nn.h): for a head that fuses a second
 * block, the joined cells, the layer the head's block, stride_px and
 * input_px the fused input's (16 and 128 for the shipped model) and
 * channels both blocks' (64 + 64). int8 rather than float16: the
 * cells are unit vectors, so a fixed scale loses nothing measurable (the
 * cosine of a cell with its int8 copy is above 0.9998) at half the size. */
#ifndef GL_MAP_DENSE_H
#define GL_MAP_DENSE_H

#include <stdint.h>

#include "map/map.h"

struct gl_map_dense {
  uint32_t layer;     /* backbone block the features come from */
  uint32_t stride_px; /* model pixels per cell */
  uint32_t channels;
  uint32_t input_px; /* the model input side the tiles were encoded at */
  double m_per_px;   /* metres per model pixel: tile_m / input_px */
  double cell_m;     /* stride_px * m_per_px */
  double x0, y0;     /* grid CRS: west and north edges of cell (0, 0) */
  uint32_t rows, cols;
  uint32_t years; /* layers, one per source raster */
  /* [years][rows][cols][channels] floats, unit cells or zero. */
  const float *cells;
};

/* The pack's dense layer, or NULL for a pack built without one. */
const struct gl_map_dense *gl_map_dense(const struct gl_map *m);

/* Tile id's centre in the pack's grid CRS (metres), with or without a dense
 * layer. Returns 0 or GL_EINVAL. */
int gl_map_tile_xy(const struct gl_map *m, int64_t id, double *x, double *y);

/* The tile whose centre is nearest to grid point (x, y) among the grid
 * places within one stride, or -1 when there is none. */
int64_t gl_map_tile_near(const struct gl_map *m, double x, double y);

/* Grid CRS <-> WGS84 degrees for this pack (thread-safe). Return 0 or
 * GL_EINVAL (no grid CRS: a pack without a dense layer) or GL_EINTERNAL. */
int gl_map_xy_to_wgs84(struct gl_map *m, double x, double y, double *lat, double *lon);
int gl_map_wgs84_to_xy(struct gl_map *m, double lat, double lon, double *x, double *y);

#endif
