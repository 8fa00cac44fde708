/* geoloc map: build and inspect map packs. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "commands.h"
#include "core/err.h"
#include "map/dense.h"
#include "map/map.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: geoloc map build --model M.safetensors --ortho A.tif [--ortho B.tif ...]\n"
          "                        --out NAME.map [--tile-m 320] [--stride-m 80]\n"
          "                        [--index Flat|HNSW32|IVF1024,PQ64|...] [--batch N] [--threads N]\n"
          "                        [--bbox WEST,SOUTH,EAST,NORTH] [--dense-layer L]\n"
          "       geoloc map inspect NAME.map\n"
          "       geoloc map tiles NAME.map\n"
          "\n"
          "build: cuts the rasters (GeoTIFF or any GDAL raster, any CRS, first three bands\n"
          "8-bit RGB) into tiles on a metric grid, encodes them with the model on the CPU and\n"
          "writes the pack NAME.map/ (manifest.json, tiles.sqlite, index.faiss). An existing\n"
          "pack is replaced atomically.\n"
          "Repeating --ortho over the same area makes a multi-year map: the grid is shared,\n"
          "so there is one tile per place, holding the descriptors of every raster (a raster\n"
          "that does not cover the place, or has nodata there, repeats the first one that\n"
          "does), and a search scores each tile by its best year and heading.\n"
          "  --model FILE     model (safetensors); the pack is bound to its sha256\n"
          "  --ortho FILE     source raster, repeatable: one per year of the same area\n"
          "  --out DIR        the pack to write\n"
          "  --tile-m M       tile side in metres (default 320): about the ground a frame\n"
          "                   sees; the imagery should be as fine as M/64 metres a pixel\n"
          "                   (README.md, \"Choosing the tile size\")\n"
          "  --stride-m M     grid step in metres (default 80; a quarter of the tile is a\n"
          "                   good start; halving it makes four times the tiles)\n"
          "  --index TYPE     FAISS index_factory string, inner product (default Flat)\n"
          "  --batch N        tiles per encoder call (default 16)\n"
          "  --threads N      encoder threads (default: all cores)\n"
          "  --dense-layer L  backbone block whose features form the pack's dense layer for\n"
          "                   the fine stage (default: the model's dense head's block, else\n"
          "                   6: 32 channels, one cell per 8 model pixels); 0 builds a pack\n"
          "                   without one\n"
          "  --bbox W,S,E,N   keep only the tiles whose centre (WGS84 degrees, as written to\n"
          "                   tiles.sqlite) lies inside the box, edges included\n"
          "inspect: prints the manifest summary (tiling, years, sources with their capture\n"
          "dates) and verifies the checksums.\n"
          "tiles: verifies the pack and prints its tiles as CSV: id, centre lat and lon (WGS84\n"
          "degrees), centre x and y in the grid CRS (metres), capture date of the tile's\n"
          "first source.\n");
}

struct progress {
  bool tty;
  double last;
  const char *last_stage;
};

static void fmt_eta(double s, char *out, size_t n) {
  if (!isfinite(s) || s < 0) {
    snprintf(out, n, "--:--");
    return;
  }
  long t = lround(s);
  if (t >= 3600)
    snprintf(out, n, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
  else
    snprintf(out, n, "%ld:%02ld", t / 60, t % 60);
}

/* A bar redrawn in place on a terminal; plain lines every few seconds
 * elsewhere (a log or a pipe must not fill with carriage returns). */
static void on_progress(void *ctx, const struct gl_map_progress *p) {
  struct progress *pr = ctx;
  double rate = p->elapsed_s > 0 ? (double)p->done / p->elapsed_s : 0;
  char eta[32];
  fmt_eta(rate > 0 ? (double)(p->total - p->done) / rate : NAN, eta, sizeof eta);
  bool tiles = strcmp(p->stage, "tiles") == 0;
  bool stage_change = !pr->last_stage || strcmp(pr->last_stage, p->stage) != 0;
  if (pr->tty) {
    if (tiles) {
      int width = 30, fill = p->total ? (int)(width * p->done / p->total) : 0;
      char bar[64];
      memset(bar, '#', (size_t)fill);
      memset(bar + fill, '.', (size_t)(width - fill));
      bar[width] = 0;
      fprintf(stderr, "\r[%s] %llu/%llu tiles  %.1f tiles/s  ETA %s ", bar,
              (unsigned long long)p->done, (unsigned long long)p->total, rate, eta);
    } else if (stage_change) {
      /* "index" and "write" take a moment after the last tile; say so. */
      if (strcmp(p->stage, "done") == 0)
        fprintf(stderr, " done\n");
      else
        fprintf(stderr, "%s%s...", strcmp(p->stage, "index") == 0 ? "\n" : " ", p->stage);
    }
  } else if (stage_change || p->elapsed_s - pr->last >= 2.0) {
    if (tiles)
      fprintf(stderr, "map build: %llu/%llu tiles, %llu skipped, %.1f tiles/s, ETA %s\n",
              (unsigned long long)p->done, (unsigned long long)p->total,
              (unsigned long long)p->skipped, rate, eta);
    else
      fprintf(stderr, "map build: %s (%.1f s)\n", p->stage, p->elapsed_s);
    pr->last = p->elapsed_s;
  }
  pr->last_stage = p->stage;
  fflush(stderr);
}

struct build_opts {
  const char *model;
  const char **orthos; /* bo.orthos, room for every argument */
  struct gl_map_build_opts bo;
  uint32_t batch, threads, dense_layer;
};

static int build_option(void *opts, int o, const char *flag, const char *arg) {
  struct build_opts *b = opts;
  switch (o) {
  case 'm':
    b->model = arg;
    return GL_OK;
  case 'o':
    b->orthos[b->bo.n_orthos++] = arg;
    return GL_OK;
  case 'O':
    b->bo.out = arg;
    return GL_OK;
  /* gl_map_build's bound on the grid. */
  case 't':
    return gl_cli_positive(flag, arg, 1e6, &b->bo.tile_m);
  case 's':
    return gl_cli_positive(flag, arg, 1e6, &b->bo.stride_m);
  case 'i':
    b->bo.index_type = arg;
    return GL_OK;
  case 'b':
    return gl_cli_u32(flag, arg, 1, 1024, &b->batch);
  case 'd':
    return gl_cli_u32(flag, arg, 0, 17, &b->dense_layer);
  case 'j':
    return gl_cli_u32(flag, arg, 0, GL_CLI_MAX_THREADS, &b->threads);
  case 'x': {
    /* The corners' ranges are checked by gl_map_build. */
    size_t n;
    if (gl_cli_doubles(arg, b->bo.bbox, 4, &n) != GL_OK || n != 4) {
      fprintf(stderr, "geoloc: --bbox wants WEST,SOUTH,EAST,NORTH in degrees, got '%s'\n", arg);
      return GL_EINVAL;
    }
    b->bo.has_bbox = true;
    return GL_OK;
  }
  }
  return GL_EINVAL;
}

static int build_parse(int argc, char **argv, struct build_opts *b) {
  static const struct option opts[] = {
      {"model", required_argument, NULL, 'm'},   {"ortho", required_argument, NULL, 'o'},
      {"out", required_argument, NULL, 'O'},     {"tile-m", required_argument, NULL, 't'},
      {"stride-m", required_argument, NULL, 's'}, {"index", required_argument, NULL, 'i'},
      {"batch", required_argument, NULL, 'b'},   {"threads", required_argument, NULL, 'j'},
      {"dense-layer", required_argument, NULL, 'd'},
      {"bbox", required_argument, NULL, 'x'},    {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  int st = gl_cli_getopt(argc, argv, "", opts, build_option, b, usage);
  if (st != GL_CLI_RUN)
    return st;
  if (!b->model || !b->bo.out || b->bo.n_orthos == 0 || optind != argc) {
    usage(stderr);
    return 2;
  }
  return GL_CLI_RUN;
}

static int build_run(struct build_opts *b) {
  char err[1024] = "";
  struct gl_map_encoder enc;
  int rc = gl_map_encoder_init_model(&enc, b->model, b->threads, b->batch, err, sizeof err);
  if (!rc && b->dense_layer)
    rc = gl_map_encoder_enable_dense(&enc, b->dense_layer, err, sizeof err);
  if (rc) {
    gl_map_encoder_fini(&enc);
    fprintf(stderr, "geoloc: %s\n", err);
    return 1;
  }
  struct progress pr = {.tty = isatty(STDERR_FILENO) == 1};
  b->bo.progress_cb = on_progress;
  b->bo.progress_ctx = &pr;
  struct gl_map_build_stats st;
  rc = gl_map_build(&b->bo, &enc, &st, err, sizeof err);
  gl_map_encoder_fini(&enc);
  if (rc) {
    if (pr.tty)
      fputc('\n', stderr);
    fprintf(stderr, "geoloc: map build failed (%s): %s\n", gl_err_name(rc), err);
    return 1;
  }
  printf("wrote %s: %llu tiles", b->bo.out, (unsigned long long)st.tiles);
  if (b->bo.n_orthos > 1)
    printf(" of %u years each", b->bo.n_orthos);
  printf(" (%llu places skipped for nodata) in %.1f s\n", (unsigned long long)st.skipped,
         st.seconds);
  return 0;
}

static int cmd_build(int argc, char **argv) {
  const char **orthos = calloc((size_t)argc, sizeof *orthos);
  struct build_opts b = {.orthos = orthos,
                         .bo = {.tile_m = 320, .stride_m = 80, .orthos = orthos},
                         .batch = 16,
                         .dense_layer = GL_MAP_DENSE_MODEL_LAYER};
  if (!orthos)
    return 1;
  int status = build_parse(argc, argv, &b);
  if (status == GL_CLI_RUN)
    status = build_run(&b);
  free(orthos);
  return status;
}

static int cmd_inspect(int argc, char **argv) {
  if (argc != 2 || argv[1][0] == '-') {
    usage(argc == 2 && strcmp(argv[1], "--help") == 0 ? stdout : stderr);
    return argc == 2 && strcmp(argv[1], "--help") == 0 ? 0 : 2;
  }
  char err[1024] = "";
  return gl_map_inspect(argv[1], stdout, err, sizeof err) == 0 ? 0 : 1;
}

static int cmd_tiles(int argc, char **argv) {
  if (argc != 2 || argv[1][0] == '-') {
    usage(argc == 2 && strcmp(argv[1], "--help") == 0 ? stdout : stderr);
    return argc == 2 && strcmp(argv[1], "--help") == 0 ? 0 : 2;
  }
  char err[1024] = "";
  struct gl_map *m = NULL;
  if (gl_map_open(argv[1], NULL, &m, err, sizeof err) != 0) {
    fprintf(stderr, "geoloc: %s\n", err);
    return 1;
  }
  int status = 0;
  printf("id,lat,lon,grid_x,grid_y,capture_date\n");
  for (int64_t id = 1; id <= (int64_t)gl_map_tile_count(m) && !status; id++) {
    struct gl_map_tile t;
    double x, y;
    if (gl_map_tile_get(m, id, &t) != 0 || gl_map_tile_xy(m, id, &x, &y) != 0) {
      fprintf(stderr, "geoloc: %s: cannot read tile %lld\n", argv[1], (long long)id);
      status = 1;
    } else {
      printf("%lld,%.7f,%.7f,%.3f,%.3f,%s\n", (long long)id, t.lat, t.lon, x, y,
             t.capture_date);
    }
  }
  gl_map_close(m);
  return status;
}

int gl_cmd_map(int argc, char **argv) {
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "help") == 0) {
    usage(stdout);
    return 0;
  }
  if (strcmp(argv[1], "build") == 0)
    return cmd_build(argc - 1, argv + 1);
  if (strcmp(argv[1], "inspect") == 0)
    return cmd_inspect(argc - 1, argv + 1);
  if (strcmp(argv[1], "tiles") == 0)
    return cmd_tiles(argc - 1, argv + 1);
  fprintf(stderr, "geoloc map: unknown subcommand '%s'\n", argv[1]);
  usage(stderr);
  return 2;
}
