/* geoloc query: stream image files to geolocd and print the estimates, or,
 * with --labels, score them against the true positions. */
#include <getopt.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "autopilot.h"
#include "camera.h"
#include "cli.h"
#include "client/client.h"
#include "client/report.h"
#include "commands.h"
#include "core/err.h"
#include "evaluate.h"
#include "stream.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: geoloc query --connect ADDR [options] IMAGE...|DIR\n"
          "       geoloc query --connect ADDR [options] --labels L.csv [--pack PATH.map]\n"
          "                    [--report FILE.png]\n"
          "\n"
          "Streams JPEG/PNG frames to geolocd (several in flight at once) and prints\n"
          "each answer as it arrives. A directory stands for its .jpg/.jpeg/.png files.\n"
          "Frames go with their camera (--altitude, --hfov, --tilt, or what a photo's\n"
          "metadata says), which geolocd crops them with.\n"
          "\n"
          "  --connect ADDR      HOST:PORT, [IPv6]:PORT or unix:PATH\n"
          "  --map NAME          map to localize against (default: the server's only map)\n"
          "  --prior LAT,LON,R   search only within R metres of (LAT, LON)\n"
          "  --top-k K           candidates per frame (default: the server's)\n"
          "  --window N          frames in flight at once (default 16)\n"
          "  --reconnect S       after a lost connection (a replica drained or gone),\n"
          "                      connect again for up to S seconds and send again the\n"
          "                      frames that were not answered (default 30; 0: give up)\n"
          "  --format F          table (default), csv, geojson, nmea, or mavlink (binary\n"
          "                      MAVLink v2 GPS_INPUT packets, one per frame; see --mavlink)\n"
          "  --heading DEG       send every frame this compass heading (degrees clockwise\n"
          "                      from north of the image's top; default: each photo's)\n"
          GL_CLI_CAMERA_USAGE
          "  --track             stream the frames as one flight, in the order given: the\n"
          "                      server tracks it and each frame's answer gains a row (or\n"
          "                      GeoJSON feature) of rank \"track\" with the track's position,\n"
          "                      radius, confidence and status (ACQUIRING, LOCKED, LOST); as\n"
          "                      NMEA, the track's fixes while it is locked. Capture times:\n"
          "                      the labels' time_us column, else --interval\n"
          "  --interval S        with --track: frames S seconds apart (default: the time\n"
          "                      each frame is sent, for a live camera)\n"
          "  --max-speed V       with --track: the vehicle's top speed, m/s (default: the\n"
          "                      server's)\n");
  fputs(GL_CLI_MAVLINK_USAGE, f); /* apart: one literal would pass C's 4095 bytes */
  fprintf(f,
          "  --tls-ca FILE       CA of the server certificate (enables TLS)\n"
          "  --tls-cert FILE     client certificate\n"
          "  --tls-key FILE      client private key\n"
          "  --server-name N     name to verify in the server certificate\n" GL_CLI_TOKEN_USAGE
          "\n"
          "With --labels, the frames are those a labels file lists (as geoloc eval: a CSV\n"
          "with columns file,lat,lon,heading), each row shows the best estimate beside the\n"
          "truth (error m, latency ms; format table or csv), and a summary follows\n"
          "(frames, median error, success@100m, frames/s; on stderr with csv).\n"
          "  --pack PATH.map     a local copy of the map the server uses: adds the true tile\n"
          "                      and its rank, and the background of --report\n"
          "  --report FILE.png   draw truths (green) and estimates (red) over the map\n"
          "  --use-heading       send each frame the labels' heading as its compass heading\n"
          "\n"
          "A photo carrying a GPS position (EXIF) gets a line on stderr saying how far the\n"
          "best estimate is from it (without --labels).\n"
          "\n"
          "Exit status: 0 when every frame got an estimate, 1 otherwise.\n");
}

struct query {
  struct gl_report report;
  char **paths;
  const struct gl_cli_photo *photos; /* one per path */
  struct gl_cli_eval *ev; /* with --labels */
  bool track;             /* a tracked stream */
  struct gl_cli_autopilot *ap; /* --mavlink */
  const struct gl_mavlink_opts *mav; /* ids and fix rules of MAVLink output */
  size_t ok, failed;
  double t_start;
};

static void on_ready(void *ctx) {
  struct query *q = ctx;
  q->t_start = (double)gl_cli_clock_us(CLOCK_MONOTONIC) / 1e6;
  if (!q->ev) {
    gl_report_begin(&q->report, stdout, q->report.fmt);
    q->report.mavlink.opts = *q->mav;
  }
}

static void on_answer(void *ctx, const struct gl_cli_answer *a) {
  struct query *q = ctx;
  static const char *const track_status[] = {"", "ACQUIRING", "LOCKED", "LOST"};
  a->ok ? q->ok++ : q->failed++;
  if (q->ev && a->track_status)
    gl_cli_eval_record_track(q->ev, a->index, a->track_status, a->track_lat, a->track_lon);
  if (q->ev)
    gl_cli_eval_record(q->ev, a->index, a->status, a->ok, a->cand, a->n, a->latency_ms);
  else if (!(a->track_status && gl_report_track_only(q->report.fmt)))
    gl_report_frame(&q->report, q->paths[a->index], a->status, a->cand, a->n, a->capture_us,
                    a->latency_ms);
  if (!q->ev && a->track_status >= 1 && a->track_status <= 3) {
    struct gl_report_track t = {track_status[a->track_status], a->track_lat, a->track_lon,
                                a->track_radius_m, a->track_confidence, a->track_heading_deg};
    gl_report_track(&q->report, q->paths[a->index], &t, a->capture_us, a->latency_ms);
  }
  struct gl_mavlink_fix fix;
  gl_cli_answer_fix(a, NAN, NAN, &fix);
  gl_cli_autopilot_send(q->ap, &fix);
  if (!q->ev && a->n)
    gl_cli_photo_compare("geoloc", q->paths[a->index], &q->photos[a->index], a->cand[0].lat,
                         a->cand[0].lon);
}

/* The summary of a --labels run: to stdout after a table, to stderr after
 * CSV rows. */
static int labels_summary(struct query *q, bool csv) {
  struct gl_eval_summary s;
  double seconds = (double)gl_cli_clock_us(CLOCK_MONOTONIC) / 1e6 - q->t_start;
  if (gl_cli_eval_summarize(q->ev, seconds, &s) != GL_OK) {
    fprintf(stderr, "geoloc: out of memory\n");
    return GL_ENOMEM;
  }
  FILE *f = csv ? stderr : stdout;
  if (!csv)
    fputc('\n', f);
  gl_cli_eval_print_brief(&s, f);
  if (q->track && q->ev->labels.flights)
    return gl_cli_eval_print_flights(q->ev, &s, 0, f);
  return GL_OK;
}

struct query_opts {
  struct gl_cli_stream_opts so;
  enum gl_report_format fmt;
  const char *labels, *pack_path, *report;
  struct gl_map_prior prior;
  bool have_prior;
  uint32_t top_k, window;
  double heading; /* NaN: each photo's */
  bool use_heading;
  double interval; /* with --track: seconds between frames, 0: when sent */
  double reconnect; /* seconds */
  struct gl_cli_camera camera;
  struct gl_cli_mavlink mav;
  char **inputs; /* IMAGE...|DIR, without --labels */
  int n_inputs;
};

static int query_option(void *opts, int o, const char *flag, const char *arg) {
  struct query_opts *qo = opts;
  switch (o) {
  case 'c':
    qo->so.co.address = arg;
    return GL_OK;
  case 'm':
    qo->so.map = arg;
    return GL_OK;
  case 'p':
    if (gl_cli_parse_prior(arg, &qo->prior.lat, &qo->prior.lon, &qo->prior.radius_m) != GL_OK) {
      fprintf(stderr, "geoloc: --prior wants LAT,LON,RADIUS_M, got '%s'\n", arg);
      return GL_EINVAL;
    }
    qo->have_prior = true;
    return GL_OK;
  case 'k':
    return gl_cli_u32(flag, arg, 0, 1000, &qo->top_k);
  case 'w':
    return gl_cli_u32(flag, arg, 1, 4096, &qo->window);
  case 'f':
    if (gl_report_format_parse(arg, &qo->fmt) != GL_OK) {
      fprintf(stderr, "geoloc: --format: table, csv, geojson, nmea or mavlink, not '%s'\n",
              arg);
      return GL_EINVAL;
    }
    return GL_OK;
  case 'l':
    qo->labels = arg;
    return GL_OK;
  case 'H':
    return gl_cli_double(flag, arg, -360, 720, &qo->heading);
  case 'u':
    qo->use_heading = true;
    return GL_OK;
  case 1200:
    qo->so.track = true;
    return GL_OK;
  case 1201:
    return gl_cli_positive(flag, arg, 1000, &qo->so.max_speed_mps);
  case 1202:
    return gl_cli_positive(flag, arg, 86400, &qo->interval);
  case 1203:
    return gl_cli_double(flag, arg, 0, 3600, &qo->reconnect);
  case 'P':
    qo->pack_path = arg;
    return GL_OK;
  case 'R':
    qo->report = arg;
    return GL_OK;
  case 'a':
  case 'e':
  case 'K':
  case 's':
  case 'T':
    gl_cli_tls_option(o, arg, &qo->so.co);
    return GL_OK;
  case 1100:
  case 1101:
  case 1102:
  case 1103:
  case 1104:
    return gl_cli_camera_option(o, flag, arg, &qo->camera);
  default:
    if (o >= 1300 && o <= 1307)
      return gl_cli_mavlink_option(o, flag, arg, &qo->mav);
  }
  return GL_EINVAL;
}

static int query_parse(int argc, char **argv, struct query_opts *qo) {
  static const struct option opts[] = {
      {"connect", required_argument, NULL, 'c'},  {"map", required_argument, NULL, 'm'},
      {"prior", required_argument, NULL, 'p'},    {"top-k", required_argument, NULL, 'k'},
      {"window", required_argument, NULL, 'w'},   {"format", required_argument, NULL, 'f'},
      {"labels", required_argument, NULL, 'l'},   {"pack", required_argument, NULL, 'P'},
      {"report", required_argument, NULL, 'R'},
      {"heading", required_argument, NULL, 'H'},  {"use-heading", no_argument, NULL, 'u'},
      {"track", no_argument, NULL, 1200},         {"max-speed", required_argument, NULL, 1201},
      {"interval", required_argument, NULL, 1202}, {"reconnect", required_argument, NULL, 1203},
      GL_CLI_TLS_OPTIONS,                         GL_CLI_CAMERA_OPTIONS,
      GL_CLI_MAVLINK_OPTIONS,
      {"help", no_argument, NULL, 'h'},           {NULL, 0, NULL, 0},
  };
  *qo = (struct query_opts){.so = {.prog = "geoloc", .client_name = "geoloc query"},
                            .fmt = GL_REPORT_TABLE,
                            .window = 16,
                            .reconnect = 30,
                            .heading = NAN};
  gl_cli_mavlink_init(&qo->mav);
  int st = gl_cli_getopt(argc, argv, "c:", opts, query_option, qo, usage);
  if (st != GL_CLI_RUN)
    return st;
  if (!qo->so.co.address || (optind == argc) == !qo->labels) {
    usage(stderr);
    return 2;
  }
  if (!qo->labels && (qo->pack_path || qo->report || qo->use_heading)) {
    fprintf(stderr, "geoloc: --pack, --report and --use-heading go with --labels\n");
    return 2;
  }
  if (qo->use_heading && !isnan(qo->heading)) {
    fprintf(stderr, "geoloc: --heading and --use-heading exclude each other\n");
    return 2;
  }
  if (qo->labels && qo->fmt != GL_REPORT_TABLE && qo->fmt != GL_REPORT_CSV) {
    fprintf(stderr, "geoloc: with --labels, --format is table or csv\n");
    return 2;
  }
  qo->inputs = argv + optind;
  qo->n_inputs = argc - optind;
  return GL_CLI_RUN;
}

static int query_run(const struct query_opts *qo) {
  struct gl_cli_stream_opts so = qo->so;
  struct query q = {0};
  struct gl_cli_autopilot ap = {0};
  struct gl_cli_eval ev = {0};
  struct gl_map *pack = NULL;
  const enum gl_report_format fmt = qo->fmt;
  const char *labels = qo->labels, *pack_path = qo->pack_path, *report = qo->report;
  double *headings = NULL;
  uint64_t *times = NULL;
  struct gl_cli_photo *photos = NULL;
  char **paths = NULL;
  size_t n_paths = 0;
  int status = 1;
  so.top_k = qo->top_k;
  so.window = qo->window;
  so.reconnect_ms = (uint32_t)(qo->reconnect * 1000);
  so.priors = qo->have_prior ? &qo->prior : NULL;
  so.ready_cb = on_ready;
  so.answer_cb = on_answer;
  so.ctx = &q;
  q.report.fmt = fmt;
  q.track = so.track;
  q.mav = &qo->mav.opts;
  q.ap = &ap;
  if (gl_cli_autopilot_open(&ap, "geoloc", &qo->mav, true) != GL_OK)
    goto done;
  if (labels) {
    char err[512];
    if (pack_path && gl_map_open(pack_path, NULL, &pack, err, sizeof err) != GL_OK) {
      fprintf(stderr, "geoloc: --pack %s: %s\n", pack_path, err);
      goto done;
    }
    if (gl_cli_eval_init(&ev, "geoloc", labels, pack, pack_path) != GL_OK)
      goto done;
    gl_cli_eval_rows_begin(&ev, stdout, fmt == GL_REPORT_CSV);
    q.ev = &ev;
    q.paths = ev.paths;
    n_paths = ev.labels.n;
  } else {
    for (int i = 0; i < qo->n_inputs; i++)
      if (gl_cli_add_path(qo->inputs[i], &paths, &n_paths) != GL_OK) {
        status = 2;
        goto done;
      }
    if (n_paths == 0) {
      fprintf(stderr, "geoloc: no .jpg, .jpeg or .png files to send\n");
      goto done;
    }
    q.paths = paths;
  }
  /* Each frame's heading (--heading, the labels' with --use-heading, else
   * the photo's), orientation and camera. */
  if (!(headings = malloc((n_paths ? n_paths : 1) * sizeof *headings)) ||
      !(photos = calloc(n_paths ? n_paths : 1, sizeof *photos))) {
    fprintf(stderr, "geoloc: out of memory\n");
    goto done;
  }
  for (size_t i = 0; i < n_paths; i++) {
    gl_cli_photo_resolve("geoloc", q.paths[i], &qo->camera,
                         qo->use_heading ? ev.labels.v[i].heading_deg : qo->heading, &photos[i]);
    headings[i] = photos[i].heading_deg;
  }
  so.headings = headings;
  so.photos = q.photos = photos;
  /* A tracked stream's capture times: the labels' (time_us), or --interval
   * seconds apart from now, or (neither) the time each frame is sent. */
  if (so.track && (qo->interval > 0 || (q.ev && ev.labels.flights))) {
    uint64_t t0 = gl_cli_clock_us(CLOCK_REALTIME);
    if (!(times = malloc((n_paths ? n_paths : 1) * sizeof *times))) {
      fprintf(stderr, "geoloc: out of memory\n");
      goto done;
    }
    for (size_t i = 0; i < n_paths; i++)
      times[i] = q.ev && ev.labels.flights ? ev.labels.v[i].time_us
                                           : t0 + (uint64_t)llround((double)i * qo->interval * 1e6);
    so.times = times;
  }
  if (gl_cli_stream(&so, q.paths, n_paths) != GL_OK)
    goto done;
  if (q.ev) {
    if (labels_summary(&q, fmt == GL_REPORT_CSV) != GL_OK ||
        (report && gl_cli_eval_report(&ev, report) != GL_OK))
      goto done;
  } else {
    gl_report_end(&q.report);
  }
  status = q.failed ? 1 : 0;
  fprintf(stderr, "geoloc: %zu frame(s): %zu estimated, %zu failed\n", n_paths, q.ok, q.failed);
done:
  gl_cli_autopilot_close(&ap);
  free(times);
  free(photos);
  free(headings);
  gl_cli_eval_fini(&ev);
  gl_map_close(pack);
  for (size_t i = 0; paths && i < n_paths; i++)
    free(paths[i]);
  free(paths);
  return status;
}

int gl_cmd_query(int argc, char **argv) {
  struct query_opts qo;
  int st = query_parse(argc, argv, &qo);
  return st == GL_CLI_RUN ? query_run(&qo) : st;
}
