/* geoloc query: stream image files to geolocd and print the estimates. */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "client/client.h"
#include "client/report.h"
#include "cli.h"
#include "commands.h"
#include "core/err.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: geoloc query --connect ADDR [options] IMAGE...|DIR\n"
          "\n"
          "Streams JPEG/PNG frames to geolocd (several in flight at once) and prints\n"
          "each answer as it arrives. A directory stands for its .jpg/.jpeg/.png files.\n"
          "\n"
          "  --connect ADDR      HOST:PORT, [IPv6]:PORT or unix:PATH\n"
          "  --map NAME          map to localize against (default: the server's only map)\n"
          "  --prior LAT,LON,R   search only within R metres of (LAT, LON)\n"
          "  --top-k K           candidates per frame (default: the server's)\n"
          "  --window N          frames in flight at once (default 16)\n"
          "  --format F          table (default), csv, geojson or nmea\n"
          "  --tls-ca FILE       CA of the server certificate (enables TLS)\n"
          "  --tls-cert FILE     client certificate\n"
          "  --tls-key FILE      client private key\n"
          "  --server-name N     name to verify in the server certificate\n"
          "\n"
          "Exit status: 0 when every frame got an estimate, 1 otherwise.\n");
}

struct query_file {
  char *path;
  uint64_t sent_us; /* monotonic */
  uint64_t capture_us;
  int answered;
};

struct query {
  struct gl_client *client;
  struct gl_report report;
  struct query_file *files;
  size_t n_files;
  size_t in_flight, ok, failed;
};

/* Reports a frame that never reached the server. */
static void report_local_failure(struct query *q, size_t i, const char *status, const char *why) {
  fprintf(stderr, "geoloc: %s: %s\n", q->files[i].path, why);
  gl_report_frame(&q->report, q->files[i].path, status, NULL, 0, gl_cli_clock_us(CLOCK_REALTIME), 0);
  q->files[i].answered = 1;
  q->failed++;
}

/* Receives one answer. Returns 0, or an error that ends the stream. */
static int receive_one(struct query *q) {
  gl_server_msg *m = NULL;
  int rc = gl_client_recv(q->client, 120000, &m);
  if (rc != GL_OK) {
    fprintf(stderr, "geoloc: %s with %zu frame(s) unanswered: %s\n", gl_strerror(rc),
            q->in_flight, gl_client_last_error(q->client));
    return rc;
  }
  uint64_t id = 0;
  const char *status = NULL;
  struct gl_report_candidate cand[64];
  size_t n = 0;
  if (m->msg_case == GEOLOC__V1__SERVER_MESSAGE__MSG_ESTIMATE) {
    const Geoloc__V1__Estimate *e = m->estimate;
    id = e->frame_id;
    status = gl_cli_status_name(e->status);
    for (size_t i = 0; i < e->n_candidates && n < sizeof cand / sizeof cand[0]; i++, n++) {
      const Geoloc__V1__Candidate *c = e->candidates[i];
      cand[n] = (struct gl_report_candidate){c->lat, c->lon, c->score, c->confidence,
                                             c->radius_m, c->tile_id};
    }
  } else if (m->msg_case == GEOLOC__V1__SERVER_MESSAGE__MSG_ERROR && m->error->has_frame_id) {
    id = m->error->frame_id;
    status = gl_cli_error_name(m->error->code);
  } else if (m->msg_case == GEOLOC__V1__SERVER_MESSAGE__MSG_ERROR) {
    fprintf(stderr, "geoloc: server error %s: %s\n", gl_cli_error_name(m->error->code),
            m->error->message ? m->error->message : "");
    gl_wire_free(m);
    return GL_EPROTO;
  } else {
    gl_wire_free(m);
    return GL_OK; /* a Pong or a Welcome we did not ask for: not an answer */
  }
  if (id == 0 || id > q->n_files || q->files[id - 1].answered) {
    fprintf(stderr, "geoloc: answer for unknown or already answered frame %llu\n",
            (unsigned long long)id);
    gl_wire_free(m);
    return GL_EPROTO;
  }
  struct query_file *f = &q->files[id - 1];
  if (m->msg_case == GEOLOC__V1__SERVER_MESSAGE__MSG_ERROR)
    fprintf(stderr, "geoloc: %s: %s: %s\n", f->path, status,
            m->error->message ? m->error->message : "");
  f->answered = 1;
  q->in_flight--;
  int good = m->msg_case == GEOLOC__V1__SERVER_MESSAGE__MSG_ESTIMATE &&
             m->estimate->status == GEOLOC__V1__ESTIMATE__STATUS__OK;
  good ? q->ok++ : q->failed++;
  gl_report_frame(&q->report, f->path, status, cand, n, f->capture_us,
                  (double)(gl_cli_clock_us(CLOCK_MONOTONIC) - f->sent_us) / 1000.0);
  gl_wire_free(m);
  return GL_OK;
}

int gl_cmd_query(int argc, char **argv) {
  static const struct option opts[] = {
      {"connect", required_argument, NULL, 'c'},  {"map", required_argument, NULL, 'm'},
      {"prior", required_argument, NULL, 'p'},    {"top-k", required_argument, NULL, 'k'},
      {"window", required_argument, NULL, 'w'},   {"format", required_argument, NULL, 'f'},
      GL_CLI_TLS_OPTIONS,
      {"help", no_argument, NULL, 'h'},           {NULL, 0, NULL, 0},
  };
  struct gl_client_opts co = {0};
  struct query q = {0};
  enum gl_report_format fmt = GL_REPORT_TABLE;
  const char *map = NULL;
  double prior[3];
  int have_prior = 0;
  long top_k = 0, window = 16;
  char **paths = NULL;
  size_t n_paths = 0;
  int status = 2, o;
  while ((o = getopt_long(argc, argv, "c:", opts, NULL)) != -1) {
    switch (o) {
    case 'c':
      co.address = optarg;
      break;
    case 'm':
      map = optarg;
      break;
    case 'p':
      if (gl_cli_parse_prior(optarg, &prior[0], &prior[1], &prior[2]) != GL_OK) {
        fprintf(stderr, "geoloc: --prior wants LAT,LON,RADIUS_M, got '%s'\n", optarg);
        return 2;
      }
      have_prior = 1;
      break;
    case 'k':
      top_k = strtol(optarg, NULL, 10);
      break;
    case 'w':
      window = strtol(optarg, NULL, 10);
      break;
    case 'f':
      if (gl_report_format_parse(optarg, &fmt) != GL_OK) {
        fprintf(stderr, "geoloc: --format: table, csv, geojson or nmea, not '%s'\n", optarg);
        return 2;
      }
      break;
    case 'a':
    case 'e':
    case 'K':
    case 's':
      gl_cli_tls_option(o, optarg, &co);
      break;
    case 'h':
      usage(stdout);
      return 0;
    default:
      usage(stderr);
      return 2;
    }
  }
  if (!co.address || optind == argc || top_k < 0 || top_k > 1000 || window < 1 ||
      window > 4096) {
    usage(stderr);
    return 2;
  }
  for (int i = optind; i < argc; i++)
    if (gl_cli_add_path(argv[i], &paths, &n_paths) != GL_OK)
      goto done;
  status = 1;
  if (n_paths == 0) {
    fprintf(stderr, "geoloc: no .jpg, .jpeg or .png files to send\n");
    goto done;
  }
  q.files = calloc(n_paths, sizeof *q.files);
  if (!q.files)
    goto done;
  q.n_files = n_paths;
  for (size_t i = 0; i < n_paths; i++)
    q.files[i].path = paths[i];

  char err[256];
  if (gl_client_connect(&co, &q.client, err, sizeof err) != GL_OK) {
    fprintf(stderr, "geoloc: %s\n", err);
    goto done;
  }
  gl_server_msg *w = NULL;
  int rc = gl_client_hello(q.client, "geoloc query", map, 0, 30000, &w);
  if (rc != GL_OK) {
    fprintf(stderr, "geoloc: %s: %s\n", gl_strerror(rc), gl_client_last_error(q.client));
    goto done;
  }
  if (w->msg_case != GEOLOC__V1__SERVER_MESSAGE__MSG_WELCOME) {
    if (w->msg_case == GEOLOC__V1__SERVER_MESSAGE__MSG_ERROR)
      fprintf(stderr, "geoloc: server refused: %s: %s\n", gl_cli_error_name(w->error->code),
              w->error->message ? w->error->message : "");
    gl_wire_free(w);
    goto done;
  }
  size_t max_bytes = w->welcome->max_message_bytes;
  if (w->welcome->max_frames_in_flight && (uint32_t)window > w->welcome->max_frames_in_flight)
    window = w->welcome->max_frames_in_flight;
  gl_wire_free(w);

  gl_report_begin(&q.report, stdout, fmt);
  size_t next = 0;
  while (next < q.n_files || q.in_flight > 0) {
    while (next < q.n_files && q.in_flight < (size_t)window) {
      size_t i = next++;
      uint8_t *data;
      size_t len;
      if (gl_cli_read_file(q.files[i].path, &data, &len) != GL_OK) {
        report_local_failure(&q, i, "UNREADABLE", strerror(errno));
        continue;
      }
      Geoloc__V1__Frame fr = GEOLOC__V1__FRAME__INIT;
      Geoloc__V1__Prior pr = GEOLOC__V1__PRIOR__INIT;
      gl_client_msg cm = GEOLOC__V1__CLIENT_MESSAGE__INIT;
      fr.format = gl_cli_sniff_format(data, len);
      if (fr.format == GEOLOC__V1__IMAGE_FORMAT__IMAGE_FORMAT_UNSPECIFIED) {
        free(data);
        report_local_failure(&q, i, "BAD_IMAGE", "not a JPEG or PNG file");
        continue;
      }
      /* 64 bytes cover the frame's other fields. */
      if (max_bytes && len + 64 > max_bytes) {
        free(data);
        report_local_failure(&q, i, "TOO_LARGE", "larger than the server's message limit");
        continue;
      }
      fr.has_format = fr.has_frame_id = fr.has_capture_time_us = fr.has_image = 1;
      fr.frame_id = i + 1;
      fr.capture_time_us = q.files[i].capture_us = gl_cli_clock_us(CLOCK_REALTIME);
      fr.image.data = data;
      fr.image.len = len;
      if (top_k) {
        fr.has_top_k = 1;
        fr.top_k = (uint32_t)top_k;
      }
      if (have_prior) {
        pr.has_lat = pr.has_lon = pr.has_radius_m = 1;
        pr.lat = prior[0];
        pr.lon = prior[1];
        pr.radius_m = prior[2];
        fr.prior = &pr;
      }
      cm.msg_case = GEOLOC__V1__CLIENT_MESSAGE__MSG_FRAME;
      cm.frame = &fr;
      q.files[i].sent_us = gl_cli_clock_us(CLOCK_MONOTONIC);
      rc = gl_client_send(q.client, &cm);
      free(data);
      if (rc != GL_OK) {
        fprintf(stderr, "geoloc: send: %s: %s\n", gl_strerror(rc),
                gl_client_last_error(q.client));
        goto done;
      }
      q.in_flight++;
    }
    if (q.in_flight > 0 && receive_one(&q) != GL_OK)
      goto done;
  }
  gl_report_end(&q.report);
  status = q.failed ? 1 : 0;
  fprintf(stderr, "geoloc: %zu frame(s): %zu estimated, %zu failed\n", q.n_files, q.ok,
          q.failed);
done:
  gl_client_destroy(q.client);
  for (size_t i = 0; i < n_paths; i++)
    free(paths[i]);
  free(paths);
  free(q.files);
  return status;
}
