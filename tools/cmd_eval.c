/* geoloc eval: accuracy of localization on a labelled set of frames, in
 * this process or through geolocd (the naip-xtime protocol,
 * docs/ARCHITECTURE.md section 10). */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "commands.h"
#include "core/err.h"
#include "evaluate.h"
#include "img/img.h"
#include "loc/locate.h"
#include "map/map.h"
#include "nn/nn.h"
#include "inproc.h"
#include "stream.h"
#include "track/track.h"

#define EVAL_PROG "geoloc eval"
#define EVAL_MAX_TOP_K 100
#define EVAL_MAX_BATCH 64

static void usage(FILE *f) {
  fprintf(f, "usage: geoloc eval --model M.safetensors --map PATH.map --labels L.csv [options]\n"
             "       geoloc eval --model M.safetensors --map PATH.map --flights DIR [options]\n"
             "       geoloc eval --connect ADDR [--map NAME] [--pack PATH.map] --labels L.csv\n"
             "                   [TLS options] [options]\n"
             "\n"
             "Localizes every frame listed in a labels file and measures the accuracy against\n"
             "the true positions. With --model the frames are decoded, encoded on the CPU and\n"
             "searched in this process, as geolocd would; with --connect they are streamed to\n"
             "geolocd (several in flight) and its estimates are scored.\n"
             "\n"
             "Labels: CSV whose header names at least file,lat,lon,heading (any order, other\n"
             "columns ignored); file is relative to the CSV's directory; lat/lon in WGS84\n"
             "degrees; heading in degrees (may be empty).\n"
             "\n"
             "  --labels FILE       the labelled frames (required)\n"
             "  --model FILE        in-process: the model (safetensors)\n"
             "  --map PATH|NAME     in-process: the map pack; with --connect: the daemon's map\n"
             "                      name (default: its only map)\n"
             "  --threads N         in-process: CPU threads (default: all cores)\n"
             "  --batch N           in-process: frames per inference call (default 8)\n"
             "  --tiles N           in-process: nearest tiles clustered into estimates (default\n"
             "                      64, as geolocd's [search] tiles)\n"
             "  --connect ADDR      HOST:PORT, [IPv6]:PORT or unix:PATH of geolocd\n"
             "  --pack PATH.map     with --connect: a local copy of the map the daemon serves,\n"
             "                      for the true tiles (R@k) and the report's background;\n"
             "                      without it R@k is n/a\n"
             "  --window N          with --connect: frames in flight (default 16)\n"
             "  --reconnect S       with --connect: as query (default 30)\n"
             "  --tls-ca FILE, --tls-cert FILE, --tls-key FILE, --server-name N, --token T: as query\n"
             "  --top-k K           estimates asked per frame (default 10, at most 100)\n"
             "  --prior-m R         for testing a prior: send each frame a prior circle of R\n"
             "                      metres centred on its true position (default: no prior)\n");
  fprintf(f, "  --per-frame         a row per frame: file, status, estimate lat/lon, truth\n"
             "                      lat/lon, error m, true tile, rank of the true tile, latency\n"
             "  --format F          table (default) or csv\n"
             "  --use-heading       send each frame's compass heading: the labels' heading\n"
             "                      column, plus --heading-noise\n"
             "  --heading-noise D   add a deterministic error uniform in +-D degrees to each\n"
             "                      heading (default 0)\n"
             "  --heading-seed S    another draw of those errors (default 0)\n"
             GL_CLI_FINE_USAGE
             "  --by-year           also a row per year of the labels' date column (YYYY-MM-DD):\n"
             "                      frames, success within 25 and 100 m, median error (and\n"
             "                      with --flights the tracked success, locked, wrong locks)\n"
             "  --report FILE.png   draw the truths (green), the estimates (red) and a line\n"
             "                      between each pair over the map's source raster; with\n"
             "                      --flights also the track (blue, bright where locked)\n"
             "\n"
             "Flights (a set from `python -m geoloc_train make-flights`: DIR/labels.csv with the\n"
             "columns flight, time_us and optionally vel_n, vel_e, event):\n"
             "  --flights DIR       track each flight (the labels DIR/labels.csv) and print the\n"
             "                      per-frame and the tracked figures side by side\n"
             "  --use-velocity      give the tracker each frame's velocity (vel_n, vel_e)\n"
             "  --fixed-lag N       also score the track smoothed N frames late (0-30)\n"
             "  --max-speed V       the vehicle's top speed, m/s (default 25)\n"
             "  --track-temperature T, --track-reacquire E, --lock-confidence C,\n"
             "  --lost-confidence C, --lock-frames N, --lost-frames N, --hint-confidence C,\n"
             "  --track-spread M, --velocity-sigma V\n"
             "                      the tracker's parameters (src/track/track.h)\n"
             "\n");
  fprintf(f, "Metrics:\n"
             "  true tile     the map tile whose centre is nearest to the true position\n"
             "  R@k           share of frames whose true tile is the tile_id (best tile) of one\n"
             "                of the first k estimates\n"
             "  error         distance from the first estimate to the true position; a frame\n"
             "                without an estimate has an infinite error\n"
             "  success@D     share of frames with error <= D (25, 50, 100, 250 m; and within\n"
             "                1, 25, 200, 750, 2500 km)\n"
             "  median, p90   nearest-rank percentiles of the error\n"
             "  frames/s      frames over the wall time of the run (without loading)\n"
             "In-process latency is a frame's decoding, its batch's inference and its search.\n"
             "\n"
             "The last line of the table is a one-line summary:\n"
             "  eval: N frames, R@1 x%%, R@5 x%%, R@10 x%%, median N m, p90 N m, success@100m x%%, "
             "N frames/s\n"
             "preceded, when the labels have headings and the estimates too (the fine stage),\n"
             "by: eval: heading error median X, p90 Y degrees over N frames\n"
             "With --format csv, stdout holds CSV only (the per-frame rows, or the summary as\n"
             "one record) and that line goes to stderr.\n"
             "\n"
             "Exit status: 0 when every frame was processed (whatever its accuracy), 1 on\n"
             "errors (labels, model, map, connection, report), 2 on wrong usage.\n");
}

struct eval_opts {
  const char *labels, *model, *map, *connect_map, *pack, *report;
  uint32_t threads, batch, tiles, top_k, window;
  double reconnect; /* with --connect: seconds */
  double prior_m;
  bool per_frame, csv, by_year;
  bool use_heading, no_fine;
  double heading_noise;
  uint32_t heading_seed;
  struct gl_loc_fine_params fine;
  const char *flights;
  char *flights_labels;
  bool use_velocity;
  struct gl_track_params track;
  struct gl_cli_stream_opts so; /* with --connect */
  double track_ms; /* in-process tracking: its cost a frame */
};

/* Frame i's compass heading for --use-heading: the label's, plus a
 * deterministic error uniform in +-heading_noise degrees (splitmix64 of the
 * frame's index and --heading-seed; seed 0 is the original draw), as a real
 * compass would add. NaN for an empty heading. */
static double eval_heading(const struct eval_opts *o, const struct gl_cli_eval *ev, size_t i) {
  double h = ev->labels.v[i].heading_deg;
  uint64_t z = (uint64_t)i + 0x9e3779b97f4a7c15ull * ((uint64_t)o->heading_seed + 1);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  double u = (double)(z >> 11) / 9007199254740992.0; /* [0, 1) */
  return h + (2 * u - 1) * o->heading_noise;
}

static double now_s(void) { return (double)gl_cli_clock_us(CLOCK_MONOTONIC) / 1e6; }

/* --- in-process ---------------------------------------------------------------- */

struct local_ctx {
  struct gl_cli_eval *ev;
  const size_t *which;
  double t0;
  const struct gl_cli_inproc *ip;
  /* Fixed lag: the labels of the flight's last lag + 1 tracked frames. */
  size_t *ring;
  uint32_t lag, n_ring;
};

static void local_done(void *ctx, uint32_t j, int rc, const char *err,
                       const struct gl_report_candidate *cand, size_t n) {
  struct local_ctx *c = ctx;
  size_t i = c->which[j];
  if (rc != GL_OK) {
    fprintf(stderr, EVAL_PROG ": %s: %s\n", c->ev->paths[i], err);
    gl_cli_eval_record(c->ev, i, "ERROR", false, NULL, 0, (now_s() - c->t0) * 1000);
    return;
  }
  if (c->ip->track) {
    const struct gl_track_fix *x = &c->ip->fix[j];
    gl_cli_eval_record_track(c->ev, i, (int)x->s.status, x->lat, x->lon);
    if (c->lag) {
      c->ring[c->n_ring++ % (c->lag + 1)] = i;
      if (x->has_smoothed)
        gl_cli_eval_record_smoothed(c->ev, c->ring[c->n_ring % (c->lag + 1)], (int)x->ss.status,
                                    x->slat, x->slon);
    }
  }
  gl_cli_eval_record(c->ev, i, n ? "OK" : "NO_MATCH", n > 0, cand, n, (now_s() - c->t0) * 1000);
}

static int run_local(struct eval_opts *o, struct gl_cli_eval *ev, double *seconds) {
  char err[512];
  int rc;
  struct gl_cli_inproc ip;
  struct gl_image *imgs = calloc(o->batch, sizeof *imgs);
  size_t *which = calloc(o->batch, sizeof *which);
  double *headings = calloc(o->batch, sizeof *headings);
  struct gl_map_prior *priors = calloc(o->batch, sizeof *priors);
  uint64_t *times = calloc(o->batch, sizeof *times);
  double(*vels)[2] = calloc(o->batch, sizeof *vels);
  size_t ring[GL_TRACK_MAX_LAG + 1];
  uint32_t n_ring = 0;
  if ((rc = gl_cli_inproc_open(&ip, EVAL_PROG, o->model, o->map, o->threads, o->batch, o->tiles,
                               o->no_fine ? NULL : &o->fine)) != GL_OK)
    goto done;
  if ((rc = gl_cli_eval_init(ev, EVAL_PROG, o->labels, ip.map, o->map)) != GL_OK)
    goto done;
  if (o->flights && !ev->labels.flights) {
    fprintf(stderr, EVAL_PROG ": %s has no flight and time_us columns\n", o->labels);
    rc = GL_EFORMAT;
    goto done;
  }
  if (o->flights && (rc = gl_cli_inproc_track(&ip, EVAL_PROG, &o->track)) != GL_OK)
    goto done;
  if (!imgs || !which || !headings || !priors || !times || !vels) {
    fprintf(stderr, EVAL_PROG ": out of memory\n");
    rc = GL_ENOMEM;
    goto done;
  }
  if (o->per_frame)
    gl_cli_eval_rows_begin(ev, stdout, o->csv);
  double t_start = now_s();
  size_t n = ev->labels.n;
  for (size_t next = 0; next < n;) {
    /* Decode a batch; a frame that does not decode is answered at once. */
    /* A batch holds frames of one flight; a new flight starts a new track. */
    if (ip.track && next > 0 && ev->labels.v[next].flight != ev->labels.v[next - 1].flight) {
      gl_track_reset(ip.track);
      n_ring = 0;
    }
    struct local_ctx c = {.ev = ev,
                          .which = which,
                          .t0 = now_s(),
                          .ip = &ip,
                          .ring = ring,
                          .lag = o->track.fixed_lag,
                          .n_ring = n_ring};
    uint32_t m = 0;
    while (next < n && m < o->batch) {
      if (ip.track && m > 0 && ev->labels.v[next].flight != ev->labels.v[next - 1].flight)
        break;
      size_t i = next++;
      rc = gl_img_load(ev->paths[i], GL_CLI_INPROC_MAX_PIXELS, &imgs[m], err, sizeof err);
      if (rc != GL_OK) {
        fprintf(stderr, EVAL_PROG ": %s: %s\n", ev->paths[i], err);
        gl_cli_eval_record(ev, i, "BAD_IMAGE", false, NULL, 0, (now_s() - c.t0) * 1000);
        continue;
      }
      headings[m] = o->use_heading ? eval_heading(o, ev, i) : NAN;
      priors[m] = (struct gl_map_prior){ev->frames[i].truth_lat, ev->frames[i].truth_lon,
                                        o->prior_m};
      times[m] = ev->labels.v[i].time_us;
      vels[m][0] = o->use_velocity ? ev->labels.v[i].vel_n : NAN;
      vels[m][1] = o->use_velocity ? ev->labels.v[i].vel_e : NAN;
      which[m++] = i;
    }
    if (m == 0)
      continue;
    ip.times = times;
    ip.vels = (const double(*)[2])vels;
    gl_cli_inproc_run(&ip, imgs, headings, m, o->prior_m > 0 ? priors : NULL, o->top_k, local_done,
                      &c);
    n_ring = c.n_ring;
    for (uint32_t j = 0; j < m; j++)
      gl_img_free(&imgs[j]);
  }
  *seconds = now_s() - t_start;
  o->track_ms = ip.track && n ? ip.track_s * 1000 / (double)n : 0;
  rc = GL_OK;
done:
  free(vels);
  free(times);
  free(priors);
  free(headings);
  free(which);
  free(imgs);
  gl_cli_inproc_close(&ip);
  return rc;
}

/* --- through geolocd ------------------------------------------------------------ */

struct remote {
  struct gl_cli_eval *ev;
  double t_start;
  size_t offset; /* of the stream's first frame among the labels */
  size_t n;      /* frames in the stream */
};

static void remote_ready(void *ctx) {
  struct remote *r = ctx;
  if (r->t_start == 0)
    r->t_start = now_s();
}

static void remote_answer(void *ctx, const struct gl_cli_answer *a) {
  struct remote *r = ctx;
  size_t i = r->offset + a->index;
  if (a->track_status)
    gl_cli_eval_record_track(r->ev, i, a->track_status, a->track_lat, a->track_lon);
  if (a->smoothed_status && a->smoothed_index < r->n)
    gl_cli_eval_record_smoothed(r->ev, r->offset + a->smoothed_index, a->smoothed_status,
                                a->smoothed_lat, a->smoothed_lon);
  gl_cli_eval_record(r->ev, i, a->status, a->ok, a->cand, a->n, a->latency_ms);
}

static int run_remote(const struct eval_opts *o, struct gl_cli_stream_opts *so,
                      struct gl_cli_eval *ev, double *seconds) {
  char err[512];
  struct gl_map *pack = NULL;
  struct gl_map_prior *priors = NULL;
  double *headings = NULL;
  int rc;
  if (o->pack && (rc = gl_map_open(o->pack, NULL, &pack, err, sizeof err)) != GL_OK) {
    fprintf(stderr, EVAL_PROG ": --pack %s: %s\n", o->pack, err);
    return rc;
  }
  rc = gl_cli_eval_init(ev, EVAL_PROG, o->labels, pack, o->pack);
  gl_map_close(pack); /* ev holds its own reference */
  if (rc != GL_OK)
    return rc;
  if (o->flights && !ev->labels.flights) {
    fprintf(stderr, EVAL_PROG ": %s has no flight and time_us columns\n", o->labels);
    return GL_EFORMAT;
  }
  size_t n = ev->labels.n;
  if (o->prior_m > 0) {
    if (!(priors = calloc(n, sizeof *priors))) {
      fprintf(stderr, EVAL_PROG ": out of memory\n");
      return GL_ENOMEM;
    }
    for (size_t i = 0; i < n; i++)
      priors[i] =
          (struct gl_map_prior){ev->frames[i].truth_lat, ev->frames[i].truth_lon, o->prior_m};
    so->priors = priors;
    so->priors_per_frame = true;
  }
  if (o->use_heading) {
    if (!(headings = calloc(n, sizeof *headings))) {
      free(priors);
      fprintf(stderr, EVAL_PROG ": out of memory\n");
      return GL_ENOMEM;
    }
    for (size_t i = 0; i < n; i++)
      headings[i] = eval_heading(o, ev, i);
    so->headings = headings;
  }
  struct remote r = {.ev = ev};
  so->ready_cb = remote_ready;
  so->answer_cb = remote_answer;
  so->ctx = &r;
  if (o->per_frame)
    gl_cli_eval_rows_begin(ev, stdout, o->csv);
  if (!o->flights) {
    rc = gl_cli_stream(so, ev->paths, n);
  } else {
    /* A stream per flight, tracked by the server, with the labels' capture
     * times (and velocities). */
    uint64_t *times = calloc(n, sizeof *times);
    double(*vels)[2] = calloc(n, sizeof *vels);
    rc = times && vels ? GL_OK : GL_ENOMEM;
    if (rc)
      fprintf(stderr, EVAL_PROG ": out of memory\n");
    for (size_t i = 0; i < n && !rc; i++) {
      times[i] = ev->labels.v[i].time_us;
      vels[i][0] = o->use_velocity ? ev->labels.v[i].vel_n : NAN;
      vels[i][1] = o->use_velocity ? ev->labels.v[i].vel_e : NAN;
    }
    so->track = true;
    so->max_speed_mps = o->track.max_speed_mps;
    so->fixed_lag = o->track.fixed_lag;
    for (size_t i = 0; i < n && !rc;) {
      size_t j = i;
      while (j < n && ev->labels.v[j].flight == ev->labels.v[i].flight)
        j++;
      struct gl_cli_stream_opts fo = *so;
      fo.headings = headings ? headings + i : NULL;
      fo.priors = priors ? priors + i : NULL;
      fo.times = times + i;
      fo.vels = (const double(*)[2])(vels + i);
      r.offset = i;
      r.n = j - i;
      rc = gl_cli_stream(&fo, ev->paths + i, j - i);
      i = j;
    }
    free(times);
    free(vels);
  }
  *seconds = now_s() - r.t_start;
  free(headings);
  free(priors);
  return rc;
}

static int eval_option(void *opts, int opt, const char *flag, const char *arg) {
  struct eval_opts *o = opts;
  switch (opt) {
  case 'l':
    o->labels = arg;
    return GL_OK;
  case 'M':
    o->model = arg;
    return GL_OK;
  case 'm':
    o->map = arg;
    return GL_OK;
  case 'j':
    return gl_cli_u32(flag, arg, 0, GL_CLI_MAX_THREADS, &o->threads);
  case 'b':
    return gl_cli_u32(flag, arg, 1, EVAL_MAX_BATCH, &o->batch);
  case 't':
    return gl_cli_u32(flag, arg, 1, 1024, &o->tiles);
  case 'c':
    o->so.co.address = arg;
    return GL_OK;
  case 'P':
    o->pack = arg;
    return GL_OK;
  case 'w':
    return gl_cli_u32(flag, arg, 1, 4096, &o->window);
  case 1400:
    return gl_cli_double(flag, arg, 0, 3600, &o->reconnect);
  case 'k':
    return gl_cli_u32(flag, arg, 1, EVAL_MAX_TOP_K, &o->top_k);
  case 'r':
    return gl_cli_positive(flag, arg, 2e7, &o->prior_m);
  case 'F':
    o->per_frame = true;
    return GL_OK;
  case 'f':
    if (strcmp(arg, "table") != 0 && strcmp(arg, "csv") != 0) {
      fprintf(stderr, EVAL_PROG ": --format: table or csv, not '%s'\n", arg);
      return GL_EINVAL;
    }
    o->csv = strcmp(arg, "csv") == 0;
    return GL_OK;
  case 'R':
    o->report = arg;
    return GL_OK;
  case 'Y':
    o->by_year = true;
    return GL_OK;
  case 'u':
    o->use_heading = true;
    return GL_OK;
  case 'N':
    return gl_cli_double(flag, arg, 0, 180, &o->heading_noise);
  case 2015:
    return gl_cli_u32(flag, arg, 0, UINT32_MAX, &o->heading_seed);
  case 1000:
  case 1001:
  case 1002:
  case 1003:
  case 1004:
  case 1005:
    return gl_cli_fine_option(opt, flag, arg, &o->fine, &o->no_fine);
  case 2000:
    o->flights = arg;
    return GL_OK;
  case 2001:
    o->use_velocity = true;
    return GL_OK;
  /* The tracker's ranges (src/track/track.c); how the confidences relate is
   * checked once all are parsed. */
  case 2002:
    return gl_cli_double(flag, arg, 0.1, 1000, &o->track.max_speed_mps);
  case 2003:
    return gl_cli_double(flag, arg, 1e-4, 10, &o->track.temperature);
  case 2004:
    return gl_cli_double(flag, arg, 0, 0.5, &o->track.reacquire);
  case 2005:
    return gl_cli_double(flag, arg, 0, 1, &o->track.lock_confidence);
  case 2006:
    return gl_cli_double(flag, arg, 0, 1, &o->track.lost_confidence);
  case 2007:
    return gl_cli_u32(flag, arg, 1, 1000, &o->track.lock_frames);
  case 2008:
    return gl_cli_u32(flag, arg, 1, 1000, &o->track.lost_frames);
  case 2011:
    return gl_cli_double(flag, arg, 0, 1, &o->track.hint_confidence);
  case 2010:
    return gl_cli_u32(flag, arg, 0, GL_TRACK_MAX_LAG, &o->track.fixed_lag);
  case 2012:
    return gl_cli_double(flag, arg, 0, 10000, &o->track.base_sigma_m);
  case 2013:
    return gl_cli_double(flag, arg, 0, 100, &o->track.velocity_sigma_mps);
  case 'a':
  case 'e':
  case 'K':
  case 's':
  case 'T':
    gl_cli_tls_option(opt, arg, &o->so.co);
    return GL_OK;
  }
  return GL_EINVAL;
}

static int eval_parse(int argc, char **argv, struct eval_opts *o) {
  static const struct option opts[] = {
      {"labels", required_argument, NULL, 'l'},
      {"model", required_argument, NULL, 'M'},
      {"map", required_argument, NULL, 'm'},
      {"threads", required_argument, NULL, 'j'},
      {"batch", required_argument, NULL, 'b'},
      {"tiles", required_argument, NULL, 't'},
      {"connect", required_argument, NULL, 'c'},
      {"pack", required_argument, NULL, 'P'},
      {"window", required_argument, NULL, 'w'},
      {"reconnect", required_argument, NULL, 1400},
      {"top-k", required_argument, NULL, 'k'},
      {"prior-m", required_argument, NULL, 'r'},
      {"per-frame", no_argument, NULL, 'F'},
      {"format", required_argument, NULL, 'f'},
      {"report", required_argument, NULL, 'R'},
      {"by-year", no_argument, NULL, 'Y'},
      {"use-heading", no_argument, NULL, 'u'},
      {"heading-noise", required_argument, NULL, 'N'},
      {"heading-seed", required_argument, NULL, 2015},
      {"flights", required_argument, NULL, 2000},
      {"use-velocity", no_argument, NULL, 2001},
      {"max-speed", required_argument, NULL, 2002},
      {"track-temperature", required_argument, NULL, 2003},
      {"track-reacquire", required_argument, NULL, 2004},
      {"lock-confidence", required_argument, NULL, 2005},
      {"lost-confidence", required_argument, NULL, 2006},
      {"lock-frames", required_argument, NULL, 2007},
      {"lost-frames", required_argument, NULL, 2008},
      {"hint-confidence", required_argument, NULL, 2011},
      {"track-spread", required_argument, NULL, 2012},
      {"velocity-sigma", required_argument, NULL, 2013},
      {"fixed-lag", required_argument, NULL, 2010},
      GL_CLI_TLS_OPTIONS,
      GL_CLI_FINE_OPTIONS,
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  *o = (struct eval_opts){.batch = 8, .tiles = 64, .top_k = 10, .window = 16,
                            .reconnect = 30};
  gl_loc_fine_params_init(&o->fine);
  gl_track_params_init(&o->track);
  o->so = (struct gl_cli_stream_opts){.prog = EVAL_PROG, .client_name = "geoloc eval"};
  int st = gl_cli_getopt(argc, argv, "", opts, eval_option, o, usage);
  if (st != GL_CLI_RUN)
    return st;
  char terr[200];
  if (gl_track_params_check(&o->track, terr, sizeof terr) != GL_OK) {
    fprintf(stderr, EVAL_PROG ": %s\n", terr);
    return 2;
  }
  bool remote = o->so.co.address != NULL;
  const char *why = NULL;
  if (o->flights && !o->labels) {
    if (asprintf(&o->flights_labels, "%s/labels.csv", o->flights) < 0) {
      fprintf(stderr, EVAL_PROG ": out of memory\n");
      return 1;
    }
    o->labels = o->flights_labels;
  }
  if (optind != argc)
    why = "unexpected arguments";
  else if (!o->labels)
    why = "--labels (or --flights) is required";
  else if (o->flights && o->labels != o->flights_labels)
    why = "--flights and --labels exclude each other";
  else if (o->flights && o->no_fine)
    why = "tracking (--flights) needs the fine stage";
  else if (remote && o->model)
    why = "--model and --connect exclude each other";
  else if (!remote && (!o->model || !o->map))
    why = "in-process evaluation needs --model and --map (or use --connect)";
  else if (!remote && o->pack)
    why = "--pack goes with --connect (in-process, --map is the pack)";
  if (why) {
    fprintf(stderr, EVAL_PROG ": %s\n", why);
    usage(stderr);
    free(o->flights_labels);
    return 2;
  }
  o->so.map = o->map;
  o->so.top_k = o->top_k;
  o->so.window = o->window;
  o->so.reconnect_ms = (uint32_t)(o->reconnect * 1000);
  return GL_CLI_RUN;
}

static int eval_run(struct eval_opts *o) {
  bool remote = o->so.co.address != NULL;
  struct gl_cli_eval ev = {0};
  double seconds = 0;
  int rc = remote ? run_remote(o, &o->so, &ev, &seconds) : run_local(o, &ev, &seconds);
  int status = 1;
  if (rc == GL_OK) {
    struct gl_eval_summary s;
    if (gl_cli_eval_summarize(&ev, seconds, &s) != GL_OK) {
      fprintf(stderr, EVAL_PROG ": out of memory\n");
    } else {
      if (o->per_frame && !o->csv)
        fputc('\n', stdout);
      if (!(o->per_frame && o->csv))
        gl_cli_eval_print_summary(&ev, &s, stdout, o->csv);
      else
        gl_cli_eval_print_line(&s, stderr);
      status = 0;
      /* Beside CSV rows on stdout, the figures go to stderr. */
      FILE *ff = o->per_frame && o->csv ? stderr : stdout;
      if (o->flights && gl_cli_eval_print_flights(&ev, &s, o->track_ms, ff) != GL_OK) {
        fprintf(stderr, EVAL_PROG ": the run's tracks cannot be summarized\n");
        status = 1;
      }
      /* With CSV on stdout, the table goes to stderr. */
      int yr = status == 0 && o->by_year ? gl_cli_eval_print_years(&ev, o->csv ? stderr : stdout)
                                         : GL_OK;
      if (yr != GL_OK) {
        fprintf(stderr, EVAL_PROG ": --by-year: %s\n",
                yr == GL_EFORMAT ? "the labels have no date column (or every date is empty)"
                                 : gl_strerror(yr));
        status = 1;
      }
    }
    if (status == 0 && o->report && gl_cli_eval_report(&ev, o->report) != GL_OK)
      status = 1;
  }
  gl_cli_eval_fini(&ev);
  free(o->flights_labels);
  return status;
}

int gl_cmd_eval(int argc, char **argv) {
  struct eval_opts o;
  int st = eval_parse(argc, argv, &o);
  return st == GL_CLI_RUN ? eval_run(&o) : st;
}
