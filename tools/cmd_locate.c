/* geoloc locate: the whole pipeline in-process, without a daemon. */
#include <getopt.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "camera.h"
#include "cli.h"
#include "client/report.h"
#include "commands.h"
#include "core/err.h"
#include "img/footprint.h"
#include "img/img.h"
#include "loc/locate.h"
#include "map/map.h"
#include "nn/nn.h"
#include "inproc.h"

#define LOCATE_MAX_TOP_K 100

static void usage(FILE *f) {
  fprintf(f, "usage: geoloc locate --model M.safetensors --map NAME.map [options] IMAGE...\n"
             "\n"
             "Localizes each JPEG/PNG image against a map pack in this process (no\n"
             "geolocd) and prints its ranked estimates: the global descriptor's nearest\n"
             "tiles, then (when the pack has a dense layer) the fine stage's alignment of\n"
             "the frame's features with the map's over headings and shifts.\n"
             "\n"
             "  --prior LAT,LON,R   search only within R metres of (LAT, LON)\n"
             "  --top-k K           estimates per image (default 5, at most 100)\n"
             "  --tiles N           nearest tiles clustered into estimates (default 64)\n"
             "  --threads N         CPU threads (default: all cores)\n"
             "  --format F          table (default), csv or geojson\n"
             "  --heading DEG       the camera's compass heading (degrees clockwise from\n"
             "                      north of the image's top; default: the photo's): the\n"
             "                      frame is turned north-up and the fine stage scans only\n"
             "                      headings near it\n"
             GL_CLI_CAMERA_USAGE
             GL_CLI_FINE_USAGE
             "\n"
             "A photo carrying a GPS position (EXIF) gets a line on stderr saying how far the\n"
             "best estimate is from it.\n"
             "\n"
             "Exit status: 0 when every image got an estimate, 1 otherwise.\n");
}

static uint64_t now_us(clockid_t id) { return gl_cli_clock_us(id); }

struct locate_ctx {
  struct gl_report report;
  enum gl_report_format fmt;
  const char *path;
  uint64_t t0;
  size_t ok, failed;
  struct gl_cli_photo photo; /* the current image's */
};

static void locate_done(void *ctx, uint32_t i, int rc, const char *err,
                        const struct gl_report_candidate *cand, size_t n) {
  struct locate_ctx *c = ctx;
  (void)i;
  if (rc != GL_OK) {
    fprintf(stderr, "geoloc locate: %s: %s\n", c->path, err);
    gl_report_frame(&c->report, c->path, "ERROR", NULL, 0, now_us(CLOCK_REALTIME), 0);
    c->failed++;
    return;
  }
  n ? c->ok++ : c->failed++;
  gl_report_frame(&c->report, c->path, n ? "OK" : "NO_MATCH", cand, n, now_us(CLOCK_REALTIME),
                  (double)(now_us(CLOCK_MONOTONIC) - c->t0) / 1000.0);
  if (n)
    gl_cli_photo_compare("geoloc locate", c->path, &c->photo, cand[0].lat, cand[0].lon);
}

/* A frame refused before it was localized: reported with the status the
 * daemon would answer. */
static void locate_refused(struct locate_ctx *c, const char *status) {
  gl_report_frame(&c->report, c->path, status, NULL, 0, now_us(CLOCK_REALTIME), 0);
  c->failed++;
}

struct locate_opts {
  const char *model_path, *map_path;
  struct gl_map_prior prior;
  bool have_prior;
  uint32_t top_k, tiles, threads;
  enum gl_report_format fmt;
  struct gl_loc_fine_params fine;
  bool no_fine;
  double heading; /* NaN: each photo's */
  struct gl_cli_camera camera;
  char **images;
  int n_images;
};

static int locate_option(void *opts, int o, const char *flag, const char *arg) {
  struct locate_opts *lo = opts;
  switch (o) {
  case 'H':
    return gl_cli_double(flag, arg, -360, 720, &lo->heading);
  case 1000:
  case 1001:
  case 1002:
  case 1003:
  case 1004:
  case 1005:
    return gl_cli_fine_option(o, flag, arg, &lo->fine, &lo->no_fine);
  case 1100:
  case 1101:
  case 1102:
  case 1103:
  case 1104:
    return gl_cli_camera_option(o, flag, arg, &lo->camera);
  case 'm':
    lo->model_path = arg;
    return GL_OK;
  case 'p':
    lo->map_path = arg;
    return GL_OK;
  case 'r':
    if (gl_cli_parse_prior(arg, &lo->prior.lat, &lo->prior.lon, &lo->prior.radius_m) != GL_OK) {
      fprintf(stderr, "geoloc locate: --prior wants LAT,LON,RADIUS_M, got '%s'\n", arg);
      return GL_EINVAL;
    }
    lo->have_prior = true;
    return GL_OK;
  case 'k':
    return gl_cli_u32(flag, arg, 1, LOCATE_MAX_TOP_K, &lo->top_k);
  case 't':
    return gl_cli_u32(flag, arg, 1, 1024, &lo->tiles);
  case 'j':
    return gl_cli_u32(flag, arg, 0, GL_CLI_MAX_THREADS, &lo->threads);
  case 'f':
    if (gl_report_format_parse(arg, &lo->fmt) != GL_OK || lo->fmt == GL_REPORT_NMEA ||
        lo->fmt == GL_REPORT_MAVLINK) {
      fprintf(stderr, "geoloc locate: --format: table, csv or geojson, not '%s'\n", arg);
      return GL_EINVAL;
    }
    return GL_OK;
  }
  return GL_EINVAL;
}

static int locate_parse(int argc, char **argv, struct locate_opts *lo) {
  static const struct option opts[] = {
      {"model", required_argument, NULL, 'm'},  {"map", required_argument, NULL, 'p'},
      {"prior", required_argument, NULL, 'r'},  {"top-k", required_argument, NULL, 'k'},
      {"tiles", required_argument, NULL, 't'},  {"threads", required_argument, NULL, 'j'},
      {"format", required_argument, NULL, 'f'}, {"help", no_argument, NULL, 'h'},
      {"heading", required_argument, NULL, 'H'}, GL_CLI_FINE_OPTIONS,
      GL_CLI_CAMERA_OPTIONS,                     {NULL, 0, NULL, 0},
  };
  *lo = (struct locate_opts){.top_k = 5, .tiles = 64, .fmt = GL_REPORT_TABLE, .heading = NAN};
  gl_loc_fine_params_init(&lo->fine);
  int st = gl_cli_getopt(argc, argv, "", opts, locate_option, lo, usage);
  if (st != GL_CLI_RUN)
    return st;
  if (!lo->model_path || !lo->map_path || optind == argc) {
    usage(stderr);
    return 2;
  }
  lo->images = argv + optind;
  lo->n_images = argc - optind;
  return GL_CLI_RUN;
}

static int locate_run(const struct locate_opts *lo) {
  struct gl_cli_inproc ip;
  struct locate_ctx c = {.fmt = lo->fmt};
  int status = 1;
  uint8_t *crop = NULL;
  if (gl_cli_inproc_open(&ip, "geoloc locate", lo->model_path, lo->map_path, lo->threads, 1,
                         lo->tiles, lo->no_fine ? NULL : &lo->fine) != GL_OK)
    goto done;
  /* A frame with a camera is cropped to one tile, as geolocd does: at most
   * ip.crop_side pixels a side (gl_loc_crop_side), at least S / 2. */
  const uint32_t S = ip.S, M = ip.crop_side;
  const double tile_m = gl_map_tile_m(ip.map);
  if (!(crop = malloc((size_t)M * M * 3))) {
    fprintf(stderr, "geoloc locate: out of memory\n");
    goto done;
  }
  gl_report_begin(&c.report, stdout, lo->fmt);
  for (int i = 0; i < lo->n_images; i++) {
    char err[512];
    struct gl_image img = {0}, frame;
    c.path = lo->images[i];
    c.t0 = now_us(CLOCK_MONOTONIC);
    if (gl_cli_photo_resolve("geoloc locate", c.path, &lo->camera, lo->heading, &c.photo) !=
        GL_OK) {
      locate_refused(&c, "BAD_REQUEST");
      continue;
    }
    if (gl_img_load(c.path, GL_CLI_INPROC_MAX_PIXELS, &img, err, sizeof err) != GL_OK) {
      fprintf(stderr, "geoloc locate: %s: %s\n", c.path, err);
      locate_refused(&c, "BAD_IMAGE");
      continue;
    }
    if (c.photo.orientation != 1) {
      struct gl_image up = {malloc((size_t)img.width * img.height * 3), 0, 0};
      if (!up.rgb) {
        fprintf(stderr, "geoloc locate: %s: out of memory\n", c.path);
        gl_img_free(&img);
        locate_refused(&c, "ERROR");
        continue;
      }
      gl_img_orient(&img, c.photo.orientation, &up);
      gl_img_free(&img);
      img = up;
    }
    frame = img;
    if (c.photo.has_camera) {
      struct gl_img_footprint fp;
      if (gl_img_footprint(img.width, img.height, &c.photo.camera, tile_m, (S + 1) / 2, M,
                           &fp, err, sizeof err) != GL_OK) {
        fprintf(stderr, "geoloc locate: %s: %s\n", c.path, err);
        gl_img_free(&img);
        locate_refused(&c, "BAD_REQUEST");
        continue;
      }
      gl_img_footprint_crop(&img, &fp, crop);
      frame = (struct gl_image){crop, fp.side, fp.side};
      if (lo->camera.show_meta)
        fprintf(stderr,
                "geoloc locate: %s: footprint ground=%.1fx%.1fm gsd=%.4fx%.4fm tile_m=%g "
                "crop=%.1fx%.1fpx side=%u\n",
                c.path, fp.ground_w, fp.ground_h, fp.gsd_x, fp.gsd_y, tile_m, fp.crop_w,
                fp.crop_h, fp.side);
    }
    double h = c.photo.heading_deg;
    gl_cli_inproc_run(&ip, &frame, &h, 1, lo->have_prior ? &lo->prior : NULL, lo->top_k,
                      locate_done, &c);
    gl_img_free(&img);
  }
  gl_report_end(&c.report);
  status = c.failed ? 1 : 0;
  fprintf(stderr, "geoloc locate: %zu image(s): %zu estimated, %zu failed\n", c.ok + c.failed,
          c.ok, c.failed);
done:
  free(crop);
  gl_cli_inproc_close(&ip);
  return status;
}

int gl_cmd_locate(int argc, char **argv) {
  struct locate_opts lo;
  int st = locate_parse(argc, argv, &lo);
  return st == GL_CLI_RUN ? locate_run(&lo) : st;
}
