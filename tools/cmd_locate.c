/* geoloc locate: the whole pipeline in-process, without a daemon. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "client/report.h"
#include "commands.h"
#include "core/err.h"
#include "img/img.h"
#include "loc/locate.h"
#include "map/map.h"
#include "nn/nn.h"

#define LOCATE_MAX_PIXELS (4096u * 4096u)
#define LOCATE_MAX_TOP_K 100

static void usage(FILE *f) {
  fprintf(f, "usage: geoloc locate --model M.safetensors --map NAME.map [options] IMAGE...\n"
             "\n"
             "Localizes each JPEG/PNG image against a map pack in this process (no\n"
             "geolocd) and prints its ranked estimates.\n"
             "\n"
             "  --prior LAT,LON,R   search only within R metres of (LAT, LON)\n"
             "  --top-k K           estimates per image (default 5, at most 100)\n"
             "  --tiles N           nearest tiles clustered into estimates (default 64)\n"
             "  --threads N         CPU threads (default: all cores)\n"
             "  --format F          table (default), csv or geojson\n"
             "\n"
             "Exit status: 0 when every image got an estimate, 1 otherwise.\n");
}

static uint64_t now_us(clockid_t id) {
  struct timespec ts;
  clock_gettime(id, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

int gl_cmd_locate(int argc, char **argv) {
  static const struct option opts[] = {
      {"model", required_argument, NULL, 'm'},  {"map", required_argument, NULL, 'p'},
      {"prior", required_argument, NULL, 'r'},  {"top-k", required_argument, NULL, 'k'},
      {"tiles", required_argument, NULL, 't'},  {"threads", required_argument, NULL, 'j'},
      {"format", required_argument, NULL, 'f'}, {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  const char *model_path = NULL, *map_path = NULL;
  struct gl_map_prior prior;
  int have_prior = 0, o;
  long top_k = 5, tiles = 64, threads = 0;
  enum gl_report_format fmt = GL_REPORT_TABLE;
  while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (o) {
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

  char err[512];
  int status = 1, rc;
  struct gl_nn_model *model = NULL;
  struct gl_nn_engine *engine = NULL;
  struct gl_map *map = NULL;
  struct gl_loc_locator *loc = NULL;
  float *desc = NULL;
  struct gl_loc_estimate est[LOCATE_MAX_TOP_K];
  struct gl_report_candidate cand[LOCATE_MAX_TOP_K];

  if ((rc = gl_nn_model_load(model_path, &model, err, sizeof err)) != GL_OK) {
    fprintf(stderr, "geoloc locate: %s: %s\n", model_path, err);
    goto done;
  }
  if ((rc = gl_map_open(map_path, gl_nn_model_sha256(model), &map, err, sizeof err)) != GL_OK) {
    fprintf(stderr, "geoloc locate: %s: %s\n", map_path, err);
    goto done;
  }
  struct gl_nn_engine_opts eo = {.backend = GL_NN_BACKEND_CPU,
                                 .max_batch = 1,
                                 .threads = (uint32_t)threads,
                                 .max_input_pixels = LOCATE_MAX_PIXELS};
  if ((rc = gl_nn_engine_create(model, &eo, &engine, err, sizeof err)) != GL_OK) {
    fprintf(stderr, "geoloc locate: engine: %s\n", err);
    goto done;
  }
  desc = malloc(gl_nn_model_descriptor_dim(model) * sizeof *desc);
  if (!desc || gl_loc_locator_create((uint32_t)tiles, &loc) != GL_OK) {
    fprintf(stderr, "geoloc locate: out of memory\n");
    goto done;
  }

  struct gl_report report;
  size_t ok = 0, failed = 0;
  gl_report_begin(&report, stdout, fmt);
  for (int i = optind; i < argc; i++) {
    const char *path = argv[i];
    struct gl_image img = {0};
    size_t n = 0;
    uint64_t t0 = now_us(CLOCK_MONOTONIC);
    const char *what = "BAD_IMAGE";
    rc = gl_img_load(path, LOCATE_MAX_PIXELS, &img, err, sizeof err);
    if (rc == GL_OK) {
      what = "ERROR";
      rc = gl_nn_engine_encode(engine, &img, 1, desc);
      if (rc != GL_OK)
        snprintf(err, sizeof err, "inference: %s", gl_strerror(rc));
    }
    gl_img_free(&img);
    if (rc == GL_OK)
      rc = gl_loc_locate(loc, map, desc, (uint32_t)tiles, have_prior ? &prior : NULL, 0, est,
                         (size_t)top_k, &n, err, sizeof err);
    if (rc != GL_OK) {
      fprintf(stderr, "geoloc locate: %s: %s\n", path, err);
      gl_report_frame(&report, path, what, NULL, 0, now_us(CLOCK_REALTIME), 0);
      failed++;
      continue;
    }
    for (size_t j = 0; j < n; j++)
      cand[j] = (struct gl_report_candidate){est[j].lat,
                                             est[j].lon,
                                             (float)est[j].best_score,
                                             (float)est[j].confidence,
                                             (float)est[j].radius_m,
                                             (uint64_t)est[j].tile_id};
    n ? ok++ : failed++;
    gl_report_frame(&report, path, n ? "OK" : "NO_MATCH", cand, n, now_us(CLOCK_REALTIME),
                    (double)(now_us(CLOCK_MONOTONIC) - t0) / 1000.0);
  }
  gl_report_end(&report);
  status = failed ? 1 : 0;
  fprintf(stderr, "geoloc locate: %zu image(s): %zu estimated, %zu failed\n", ok + failed, ok,
          failed);
done:
  gl_loc_locator_destroy(loc);
  free(desc);
  gl_nn_engine_destroy(engine);
  gl_map_close(map);
  gl_nn_model_destroy(model);
  return status;
}
