#include "inproc.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/err.h"
#include "loc/load.h"
#include "map/dense.h"

#define GL__MAX_OUT 128

static double gl__now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

int gl_cli_inproc_open(struct gl_cli_inproc *ip, const char *prog, const char *model_path,
                       const char *map_path, uint32_t threads, uint32_t batch, uint32_t tiles,
                       const struct gl_loc_fine_params *fine) {
  char err[512];
  int rc;
  memset(ip, 0, sizeof *ip);
  ip->batch = batch;
  ip->tiles = tiles;
  if ((rc = gl_loc_load_model(model_path, &ip->model, err, sizeof err))) {
    fprintf(stderr, "%s: %s: %s\n", prog, model_path, err);
    return rc;
  }
  if ((rc = gl_loc_load_map(ip->model, map_path, &ip->map, err, sizeof err))) {
    fprintf(stderr, "%s: %s: %s\n", prog, map_path, err);
    return rc;
  }
  struct gl_nn_engine_opts eo = {.backend = GL_NN_BACKEND_CPU,
                                 .max_batch = batch,
                                 .threads = threads,
                                 .max_input_pixels = GL_CLI_INPROC_MAX_PIXELS};
  if ((rc = gl_loc_load_engine(ip->model, &eo, false, &ip->engine, NULL, 0, err, sizeof err))) {
    fprintf(stderr, "%s: engine: %s\n", prog, err);
    return rc;
  }
  bool used = false;
  if (fine && (rc = gl_loc_load_fine(ip->model, ip->map, fine, threads, &ip->fine, &used, err,
                                     sizeof err))) {
    fprintf(stderr, "%s: fine stage: %s\n", prog, err);
    return rc;
  }
  if (!used) {
    /* A map without a dense layer is the usual way to go without the fine
     * stage; one whose layer does not fit the model deserves a word. */
    if (fine && gl_map_dense(ip->map))
      fprintf(stderr, "%s: %s: %s; the global stage only\n", prog, map_path, err);
    gl_loc_fine_frame_destroy(ip->fine);
    ip->fine = NULL;
  }
  ip->dim = gl_nn_model_descriptor_dim(ip->model);
  ip->S = gl_nn_model_input_size(ip->model);
  ip->crop_side = gl_loc_crop_side(ip->model);
  ip->desc = malloc((size_t)batch * ip->dim * sizeof(float));
  ip->northup = malloc((size_t)batch * ip->S * ip->S * 3);
  ip->enc = calloc(batch, sizeof *ip->enc);
  ip->est = calloc(GL__MAX_OUT, sizeof *ip->est);
  if (!ip->desc || !ip->northup || !ip->enc || !ip->est ||
      (rc = gl_loc_locator_create(tiles, &ip->loc))) {
    fprintf(stderr, "%s: out of memory\n", prog);
    return GL_ENOMEM;
  }
  return 0;
}

int gl_cli_inproc_track(struct gl_cli_inproc *ip, const char *prog,
                        const struct gl_track_params *p) {
  char err[512];
  uint32_t rows, cols;
  double cell;
  if (!ip->fine || gl_track_grid(ip->map, ip->fine, &rows, &cols, &cell)) {
    fprintf(stderr, "%s: tracking needs the fine stage and a map with a dense layer\n", prog);
    return GL_EINVAL;
  }
  int rc = gl_track_create(p, rows, cols, cell, &ip->track, err, sizeof err);
  if (rc) {
    fprintf(stderr, "%s: tracking: %s\n", prog, err);
    return rc;
  }
  if (!(ip->fix = calloc(ip->batch, sizeof *ip->fix))) {
    fprintf(stderr, "%s: out of memory\n", prog);
    return GL_ENOMEM;
  }
  return 0;
}

void gl_cli_inproc_close(struct gl_cli_inproc *ip) {
  gl_track_destroy(ip->track);
  free(ip->fix);
  gl_loc_fine_frame_destroy(ip->fine);
  gl_loc_locator_destroy(ip->loc);
  free(ip->desc);
  free(ip->northup);
  free(ip->enc);
  free(ip->est);
  gl_nn_engine_destroy(ip->engine);
  gl_map_close(ip->map);
  gl_nn_model_destroy(ip->model);
  memset(ip, 0, sizeof *ip);
}

void gl_cli_inproc_run(struct gl_cli_inproc *ip, const struct gl_image *frames,
                       const double *headings, uint32_t n, const struct gl_map_prior *priors,
                       size_t max_out, gl_cli_inproc_cb done, void *ctx) {
  char err[512] = "";
  struct gl_report_candidate cand[GL__MAX_OUT];
  if (max_out > GL__MAX_OUT)
    max_out = GL__MAX_OUT;
  /* A frame with a compass heading is encoded north-up, as the map is. */
  for (uint32_t i = 0; i < n; i++) {
    ip->enc[i] = frames[i];
    if (headings && !isnan(headings[i])) {
      ip->enc[i] = (struct gl_image){ip->northup + (size_t)i * ip->S * ip->S * 3, ip->S, ip->S};
      gl_img_warp(&frames[i], headings[i], ip->S, ip->S, ip->enc[i].rgb);
    }
  }
  int rc = gl_nn_engine_encode(ip->engine, ip->enc, n, ip->desc);
  if (rc)
    snprintf(err, sizeof err, "inference: %s", gl_strerror(rc));
  else
    rc = gl_loc_locator_search(ip->loc, ip->map, ip->desc, n, ip->tiles, priors, err, sizeof err);
  for (uint32_t i = 0; i < n; i++) {
    size_t ne = 0;
    int frc = rc;
    if (!frc && ip->fine) {
      uint32_t nh;
      const struct gl_map_hit *hits = gl_loc_locator_hits(ip->loc, i, &nh);
      frc = gl_loc_fine_frame(ip->fine, ip->map, &frames[i], headings ? headings[i] : NAN, hits, nh,
                              priors ? &priors[i] : NULL, ip->est, max_out, &ne, err, sizeof err);
    } else if (!frc) {
      frc = gl_loc_locator_cluster(ip->loc, i, 0, ip->est, max_out, &ne, err, sizeof err);
    }
    if (!frc && ip->track && ip->times) {
      double t0 = gl__now_s();
      const double *v = ip->vels && !isnan(ip->vels[i][0]) ? ip->vels[i] : NULL;
      frc = gl_track_frame(ip->track, ip->fine, ip->map, ip->times[i], v,
                           ne ? ip->est[0].lat : NAN, ne ? ip->est[0].lon : NAN,
                           ne ? ip->est[0].confidence : NAN, &ip->fix[i], err, sizeof err);
      ip->track_s += gl__now_s() - t0;
    }
    for (size_t k = 0; k < ne; k++)
      cand[k] = (struct gl_report_candidate){ip->est[k].lat,
                                             ip->est[k].lon,
                                             (float)ip->est[k].best_score,
                                             (float)ip->est[k].confidence,
                                             (float)ip->est[k].radius_m,
                                             (uint64_t)ip->est[k].tile_id,
                                             (float)ip->est[k].heading_deg};
    done(ctx, i, frc, err, cand, frc ? 0 : ne);
  }
}
