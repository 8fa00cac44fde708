/* The picture of an evaluation run (`geoloc eval --report`, `geoloc query
 * --labels --report`): true positions and estimates over the map. */
#ifndef GL_TOOLS_REPORT_PNG_H
#define GL_TOOLS_REPORT_PNG_H

#include <stddef.h>
#include <stdint.h>

#include "loc/eval.h"

/* The WGS84 bounds of one map tile. */
struct gl_cli_png_tile {
  double min_lat, max_lat, min_lon, max_lon;
};

/* Writes a PNG to out: the map's source rasters as the background (read
 * with GDAL from the paths manifest.json records, or beside the pack when
 * only the file name is known; without pack_dir, or when no raster is
 * found, a grey background, which is said on stderr), the outline of the
 * region the tiles cover (cyan), each frame's true position (green), its
 * estimate (red) and a yellow line between them, and for frames with a
 * track (gl_eval_frame.track_status) the track: a blue line through its
 * positions and a dot at each, bright where it was LOCKED. The picture covers the
 * tiles and every drawn point with a margin, in the first raster's CRS (a
 * local azimuthal equidistant projection without one), and is at least
 * 1000 pixels wide: the raster's own resolution when that is wider, up to
 * 4000. Messages start with prog. Returns 0 with *width and *height set,
 * or a GL_E* code after printing what went wrong. */
int gl_cli_report_png(const char *out, const char *pack_dir, const struct gl_cli_png_tile *tiles,
                      size_t n_tiles, const struct gl_eval_frame *frames, size_t n_frames,
                      const char *prog, uint32_t *width, uint32_t *height);

#endif
