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

int gl_cmd_locate(int argc, char **argv) {
  static const struct option opts[] = {
      {"model", required_argument, NULL, 'm'},  {"map", required_argument, NULL, 'p'},
      {"prior", required_argument, NULL, 'r'},  {"top-k", required_argument, NULL, 'k'},
      {"tiles", required_argument, NULL, 't'},  {"threads", required_argument, NULL, 'j'},
      {"format", required_argument, NULL, 'f'}, {"help", no_argument, NULL, 'h'},
      {"heading", required_argument, NULL, 'H'}, GL_CLI_FINE_OPTIONS,
      GL_CLI_CAMERA_OPTIONS,                     {NULL, 0, NULL, 0},
  };
  const char *model_path = NULL, *map_path = NULL;
  struct gl_map_prior prior;
  int have_prior = 0, o;
  long top_k = 5, tiles = 64, threads = 0;
  enum gl_report_format fmt = GL_REPORT_TABLE;
  struct gl_loc_fine_params fine;
  gl_loc_fine_params_init(&fine);
  bool no_fine = false;
  double heading = NAN;
  struct gl_cli_camera camera = {0};
  while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (o) {
    case 'H': {
      char *end;
      heading = strtod(optarg, &end);
      if (end == optarg || *end || !(heading >= -360 && heading <= 720)) {
        fprintf(stderr, "geoloc locate: --heading wants degrees clockwise from north\n");
        return 2;
      }
      break;
    }
    case 1000:
    case 1001:
    case 1002:
    case 1003:
    case 1004:
    case 1005:
      if (!gl_cli_fine_option("geoloc locate", o, optarg, &fine, &no_fine))
        return 2;
      break;
    case 1100:
    case 1101:
    case 1102:
    case 1103:
    case 1104:
      if (!gl_cli_camera_option("geoloc locate", o, optarg, &camera))
        return 2;
      break;
    case 'm':
      model_path = optarg;
      break;
    case 'p':
      map_path = optarg;
      break;
    case 'r':
      if (gl_cli_parse_prior(optarg, &prior.lat, &prior.lon, &prior.radius_m) != GL_OK) {
        fprintf(stderr, "geoloc locate: --prior wants LAT,LON,RADIUS_M, got '%s'\n", optarg);
        return 2;
      }
      have_prior = 1;
      break;
    case 'k':
      top_k = strtol(optarg, NULL, 10);
      break;
    case 't':
      tiles = strtol(optarg, NULL, 10);
      break;
    case 'j':
      threads = strtol(optarg, NULL, 10);
      break;
    case 'f':
      if (gl_report_format_parse(optarg, &fmt) != GL_OK || fmt == GL_REPORT_NMEA) {
        fprintf(stderr, "geoloc locate: --format: table, csv or geojson, not '%s'\n", optarg);
        return 2;
      }
      break;
    case 'h':
      usage(stdout);
      return 0;
    default:
      usage(stderr);
      return 2;
    }
  }
  if (!model_path || !map_path || optind == argc || top_k < 1 || top_k > LOCATE_MAX_TOP_K ||
      tiles < 1 || tiles > 1024 || threads < 0 || threads > 256) {
    usage(stderr);
    return 2;
  }

  struct gl_cli_inproc ip;
  struct locate_ctx c = {.fmt = fmt};
  int status = 1;
  uint8_t *crop = NULL;
  if (gl_cli_inproc_open(&ip, "geoloc locate", model_path, map_path, (uint32_t)threads, 1,
                         (uint32_t)tiles, no_fine ? NULL : &fine) != GL_OK)
    goto done;
  /* A frame with a camera is cropped to one tile, as geolocd does: at most
   * 2 S pixels a side (S the model's input), at least S / 2. */
  const uint32_t S = ip.S;
  const double tile_m = gl_map_tile_m(ip.map);
  if (!(crop = malloc((size_t)4 * S * S * 3))) {
    fprintf(stderr, "geoloc locate: out of memory\n");
    goto done;
  }
  gl_report_begin(&c.report, stdout, fmt);
  for (int i = optind; i < argc; i++) {
    char err[512];
    struct gl_image img = {0}, frame;
    c.path = argv[i];
    c.t0 = now_us(CLOCK_MONOTONIC);
    if (gl_cli_photo_resolve("geoloc locate", c.path, &camera, heading, &c.photo) != GL_OK) {
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
      if (gl_img_footprint(img.width, img.height, &c.photo.camera, tile_m, (S + 1) / 2, 2 * S,
                           &fp, err, sizeof err) != GL_OK) {
        fprintf(stderr, "geoloc locate: %s: %s\n", c.path, err);
        gl_img_free(&img);
        locate_refused(&c, "BAD_REQUEST");
        continue;
      }
      gl_img_footprint_crop(&img, &fp, crop);
      frame = (struct gl_image){crop, fp.side, fp.side};
      if (camera.show_meta)
        fprintf(stderr,
                "geoloc locate: %s: footprint ground=%.1fx%.1fm gsd=%.4fx%.4fm tile_m=%g "
                "crop=%.1fx%.1fpx side=%u\n",
                c.path, fp.ground_w, fp.ground_h, fp.gsd_x, fp.gsd_y, tile_m, fp.crop_w,
                fp.crop_h, fp.side);
    }
    double h = c.photo.heading_deg;
    gl_cli_inproc_run(&ip, &frame, &h, 1, have_prior ? &prior : NULL, (size_t)top_k, locate_done,
                      &c);
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
