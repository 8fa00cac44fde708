/* The whole pipeline in this process, for `geoloc locate` and `geoloc
 * eval`: frames turned north-up when their heading is known, the global
 * descriptor and search, then the fine stage when the map has a dense layer
 * (clustering of the global matches when it has none or it is disabled). */
#ifndef GL_TOOLS_INPROC_H
#define GL_TOOLS_INPROC_H

#include <stdbool.h>
#include <stdint.h>

#include "client/report.h"
#include "img/img.h"
#include "loc/fine.h"
#include "loc/locate.h"
#include "map/map.h"
#include "nn/nn.h"
#include "track/track.h"

#define GL_CLI_INPROC_MAX_PIXELS (4096u * 4096u)

struct gl_cli_inproc {
  struct gl_nn_model *model;
  struct gl_nn_engine *engine;
  struct gl_map *map;
  struct gl_loc_locator *loc;
  struct gl_loc_fine_frame *fine; /* NULL: no fine stage */
  uint32_t batch, tiles, dim, S;
  uint32_t crop_side; /* the most a frame with a camera is cropped to (gl_loc_crop_side) */
  float *desc;
  uint8_t *northup;            /* [batch][S][S][3] */
  struct gl_image *enc;        /* [batch]: what the global stage encodes */
  struct gl_loc_estimate *est; /* scratch for one frame */
  /* Tracking (gl_cli_inproc_track): the filter, and for each run the
   * frames' capture times and velocities ({north, east}, NaN when unknown)
   * that the caller sets, and the fixes it reads in its callback. */
  struct gl_track *track;
  const uint64_t *times;
  const double (*vels)[2];
  struct gl_track_fix *fix; /* [batch] */
  double track_s;           /* time spent tracking, seconds */
};

/* Loads model and map, plans the engines; fine NULL disables the fine
 * stage. Prints what failed to stderr with prog's prefix. */
int gl_cli_inproc_open(struct gl_cli_inproc *ip, const char *prog, const char *model_path,
                       const char *map_path, uint32_t threads, uint32_t batch, uint32_t tiles,
                       const struct gl_loc_fine_params *fine);
void gl_cli_inproc_close(struct gl_cli_inproc *ip);

/* Tracks the frames of the following runs as one flight (needs the fine
 * stage and the map's dense layer); gl_track_reset(ip->track) starts
 * another. Prints what failed. */
int gl_cli_inproc_track(struct gl_cli_inproc *ip, const char *prog,
                        const struct gl_track_params *p);

/* Localizes n <= batch decoded frames (headings[i] NaN when unknown;
 * priors NULL or n entries) and calls done(ctx, i, rc, cand, n_cand) for
 * each, best candidate first (at most max_out <= 128). */
typedef void (*gl_cli_inproc_cb)(void *ctx, uint32_t i, int rc, const char *err,
                                 const struct gl_report_candidate *cand, size_t n);
void gl_cli_inproc_run(struct gl_cli_inproc *ip, const struct gl_image *frames,
                       const double *headings, uint32_t n, const struct gl_map_prior *priors,
                       size_t max_out, gl_cli_inproc_cb done, void *ctx);

#endif
