/* geoloc bench: load geolocd with concurrent pipelined clients and check
 * that every frame sent is answered exactly once. */
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "client/client.h"
#include "commands.h"
#include "core/err.h"

#define BENCH_MAX_CLIENTS 1024
#define BENCH_STATUSES 64 /* status names counted, more than the protocol has */

static void usage(FILE *f) {
  fprintf(f, "usage: geoloc bench --connect ADDR --clients N --frames M [options] IMAGE...|DIR\n"
             "\n"
             "Runs N concurrent clients that stream M frames in total (cycling through\n"
             "the images), pipelined, and prints frames/s, latency percentiles and the\n"
             "answers by status. The last line is a summary; the exit status is 0 when\n"
             "every frame sent got exactly one answer.\n"
             "\n"
             "  --rate FPS          send at most FPS frames/s over all clients (default: as\n"
             "                      fast as the window allows)\n"
             "  --window W          frames in flight per client (default 8, capped by the\n"
             "                      server's limit)\n"
             "  --map NAME          map to localize against\n"
             "  --heading DEG       send every frame this compass heading\n"
             "  --reconnect S       a client whose connection is lost connects again for up\n"
             "                      to S seconds and sends again its unanswered frames\n"
             "                      (default 30; 0: it stops)\n"
             "  --tls-ca FILE, --tls-cert FILE, --tls-key FILE, --server-name N, --token T: as query\n");
}

struct bench_image {
  uint8_t *data;
  size_t len;
  Geoloc__V1__ImageFormat format;
};

struct bench {
  struct gl_client_opts co;
  const char *map;
  struct bench_image *images;
  size_t n_images;
  uint32_t window;
  double rate_per_client; /* frames/s, 0 = unlimited */
  double heading;         /* sent with every frame unless NaN */
  uint32_t reconnect_ms;  /* after a lost connection; 0: the client stops */
};

struct bench_client {
  pthread_t thread;
  const struct bench *b;
  uint32_t index, frames; /* frames this client sends */
  uint64_t *sent_us;      /* per frame id - 1 */
  uint8_t *answers;       /* per frame: how many answers came */
  double *latency_ms;     /* answered frames, in answer order */
  uint32_t sent, answered, n_latency;
  uint32_t lo;         /* frames below this id - 1 are all answered */
  unsigned reconnects; /* connections made again after one was lost */
  int64_t lost_ms;     /* since when no answer came (gl_client_reopen; 0: answers come) */
  const char *status[BENCH_STATUSES];
  uint32_t status_count[BENCH_STATUSES];
  char failure[256]; /* why the client stopped early, "" when it did not */
};

static void count_status(struct bench_client *c, const char *name) {
  for (int i = 0; i < BENCH_STATUSES; i++) {
    if (!c->status[i])
      c->status[i] = name;
    if (strcmp(c->status[i], name) == 0) {
      c->status_count[i]++;
      return;
    }
  }
}

/* Takes one answer; 0, or an error that ends this client. */
static int bench_receive(struct bench_client *c, struct gl_client *cl, int timeout_ms) {
  gl_server_msg *m = NULL;
  int rc = gl_client_recv(cl, timeout_ms, &m);
  if (rc == GL_ETIMEDOUT && timeout_ms >= 0 && timeout_ms < 60000)
    return GL_OK; /* time to send the next frame */
  if (rc != GL_OK) {
    snprintf(c->failure, sizeof c->failure, "%s: %s", gl_strerror(rc),
             gl_client_last_error(cl));
    return rc;
  }
  uint64_t id = 0;
  const char *status = NULL;
  if (m->msg_case == GEOLOC__V1__SERVER_MESSAGE__MSG_ESTIMATE) {
    id = m->estimate->frame_id;
    status = gl_cli_status_name(m->estimate->status);
  } else if (m->msg_case == GEOLOC__V1__SERVER_MESSAGE__MSG_ERROR && m->error->has_frame_id) {
    id = m->error->frame_id;
    status = gl_cli_error_name(m->error->code);
  } else if (m->msg_case == GEOLOC__V1__SERVER_MESSAGE__MSG_ERROR) {
    snprintf(c->failure, sizeof c->failure, "server error %s: %s",
             gl_cli_error_name(m->error->code), m->error->message ? m->error->message : "");
    rc = gl_client_error_rc(m->error->code);
    gl_wire_free(m);
    return rc;
  }
  gl_wire_free(m);
  if (!status)
    return GL_OK; /* not an answer to a frame */
  if (id == 0 || id > c->sent) {
    snprintf(c->failure, sizeof c->failure, "answer for frame %llu, which was never sent",
             (unsigned long long)id);
    return GL_EPROTO;
  }
  if (c->answers[id - 1]++ == 0) {
    c->answered++;
    c->lost_ms = 0;
    c->latency_ms[c->n_latency++] =
        (double)(gl_cli_clock_us(CLOCK_MONOTONIC) - c->sent_us[id - 1]) / 1000.0;
  }
  count_status(c, status);
  return GL_OK;
}

/* Sends frame id (1-based) of this client. */
static int bench_send(struct bench_client *c, struct gl_client *cl, uint32_t id, uint64_t now) {
  const struct bench *b = c->b;
  const struct bench_image *img = &b->images[(c->index + id - 1) % b->n_images];
  Geoloc__V1__Frame f = GEOLOC__V1__FRAME__INIT;
  gl_client_msg cm = GEOLOC__V1__CLIENT_MESSAGE__INIT;
  f.has_frame_id = f.has_image = f.has_format = 1;
  f.frame_id = id;
  f.image.data = img->data;
  f.image.len = img->len;
  f.format = img->format;
  if (!isnan(b->heading)) {
    f.has_heading_deg = 1;
    f.heading_deg = b->heading;
  }
  cm.msg_case = GEOLOC__V1__CLIENT_MESSAGE__MSG_FRAME;
  cm.frame = &f;
  c->sent_us[id - 1] = now;
  int rc = gl_client_send(cl, &cm);
  if (rc != GL_OK)
    snprintf(c->failure, sizeof c->failure, "send: %s", gl_strerror(rc));
  return rc;
}

/* The connection is lost (rc): connects again within --reconnect and sends
 * again, in order, the frames it left unanswered. */
static int bench_reconnect(struct bench_client *c, struct gl_client **cl,
                           const struct gl_client_hello_args *h, int rc) {
  const struct bench *b = c->b;
  gl_client_destroy(*cl);
  *cl = NULL;
  if (!b->reconnect_ms || !gl_client_retryable(rc))
    return rc;
  gl_server_msg *w = NULL;
  unsigned attempts = 0;
  char err[160];
  rc = gl_client_reopen(&b->co, h, b->reconnect_ms, &c->lost_ms, cl, &w, &attempts, err,
                        sizeof err);
  gl_wire_free(w);
  if (rc != GL_OK) {
    snprintf(c->failure, sizeof c->failure, "lost its connection and gave up after %u attempt(s): %s",
             attempts, err);
    return rc;
  }
  c->failure[0] = '\0';
  c->reconnects++;
  while (c->lo < c->sent && c->answers[c->lo])
    c->lo++;
  uint64_t now = gl_cli_clock_us(CLOCK_MONOTONIC);
  for (uint32_t i = c->lo; i < c->sent && rc == GL_OK; i++)
    if (!c->answers[i])
      rc = bench_send(c, *cl, i + 1, now);
  return rc;
}

static void *bench_client_main(void *arg) {
  struct bench_client *c = arg;
  const struct bench *b = c->b;
  struct gl_client *cl = NULL;
  gl_server_msg *w = NULL;
  char err[256];
  const struct gl_client_hello_args h = {"geoloc bench", b->map, NULL};
  int rc = gl_client_open(&b->co, &h, &cl, &w, err, sizeof err);
  if (rc != GL_OK) {
    snprintf(c->failure, sizeof c->failure, "%s", err);
    return NULL;
  }
  uint32_t window = b->window;
  if (w->welcome->max_frames_in_flight && window > w->welcome->max_frames_in_flight)
    window = w->welcome->max_frames_in_flight;
  gl_wire_free(w);
  uint64_t start = gl_cli_clock_us(CLOCK_MONOTONIC);
  while (c->answered < c->sent || c->sent < c->frames) {
    uint64_t now = gl_cli_clock_us(CLOCK_MONOTONIC);
    uint64_t due = b->rate_per_client > 0 ? start + (uint64_t)(c->sent * 1e6 / b->rate_per_client)
                                          : now;
    if (c->sent < c->frames && c->sent - c->answered < window && now >= due) {
      rc = bench_send(c, cl, c->sent + 1, now);
      c->sent++; /* sent or not: a frame that fails to go is sent again */
    } else {
      /* Wait for an answer, or until the next frame is due. */
      int timeout = -1;
      if (c->sent < c->frames && c->sent - c->answered < window)
        timeout = (int)((due - now) / 1000u) + 1;
      if (c->sent == c->answered)
        timeout = timeout < 0 ? 1 : timeout; /* nothing to wait for but the schedule */
      rc = bench_receive(c, cl, timeout < 0 ? 120000 : timeout);
    }
    while (rc != GL_OK)
      if ((rc = bench_reconnect(c, &cl, &h, rc)) != GL_OK && !cl)
        goto done;
  }
done:
  gl_client_destroy(cl);
  return NULL;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double percentile(const double *v, size_t n, double p) {
  if (n == 0)
    return 0;
  size_t i = (size_t)(p * (double)(n - 1) + 0.5);
  return v[i < n ? i : n - 1];
}

struct bench_opts {
  struct gl_client_opts co;
  const char *map;
  uint32_t clients, frames, window;
  double rate;    /* frames/s over all clients, 0 = unlimited */
  double heading; /* NaN: none sent */
  double reconnect; /* seconds */
  char **inputs;  /* IMAGE...|DIR */
  int n_inputs;
};

static int bench_option(void *opts, int o, const char *flag, const char *arg) {
  struct bench_opts *bo = opts;
  switch (o) {
  case 'c':
    bo->co.address = arg;
    return GL_OK;
  case 'n':
    return gl_cli_u32(flag, arg, 1, BENCH_MAX_CLIENTS, &bo->clients);
  case 'f':
    return gl_cli_u32(flag, arg, 1, 100000000, &bo->frames);
  case 'r':
    return gl_cli_double(flag, arg, 0, 1e6, &bo->rate);
  case 'w':
    return gl_cli_u32(flag, arg, 1, 4096, &bo->window);
  case 'H':
    return gl_cli_double(flag, arg, -360, 720, &bo->heading);
  case 'R':
    return gl_cli_double(flag, arg, 0, 3600, &bo->reconnect);
  case 'm':
    bo->map = arg;
    return GL_OK;
  case 'a':
  case 'e':
  case 'K':
  case 's':
  case 'T':
    gl_cli_tls_option(o, arg, &bo->co);
    return GL_OK;
  }
  return GL_EINVAL;
}

static int bench_parse(int argc, char **argv, struct bench_opts *bo) {
  static const struct option opts[] = {
      {"connect", required_argument, NULL, 'c'}, {"clients", required_argument, NULL, 'n'},
      {"frames", required_argument, NULL, 'f'},  {"rate", required_argument, NULL, 'r'},
      {"window", required_argument, NULL, 'w'},  {"map", required_argument, NULL, 'm'},
      {"heading", required_argument, NULL, 'H'}, {"reconnect", required_argument, NULL, 'R'},
      GL_CLI_TLS_OPTIONS,
      {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0},
  };
  *bo = (struct bench_opts){.window = 8, .heading = NAN, .reconnect = 30};
  int st = gl_cli_getopt(argc, argv, "", opts, bench_option, bo, usage);
  if (st != GL_CLI_RUN)
    return st;
  if (!bo->co.address || bo->clients == 0 || bo->frames < bo->clients || optind == argc) {
    usage(stderr);
    return 2;
  }
  bo->inputs = argv + optind;
  bo->n_inputs = argc - optind;
  return GL_CLI_RUN;
}

static int bench_run(const struct bench_opts *bo) {
  struct bench b = {.co = bo->co,
                    .map = bo->map,
                    .window = bo->window,
                    .heading = bo->heading,
                    .reconnect_ms = (uint32_t)(bo->reconnect * 1000)};
  /* clients drops to those started when a thread cannot be. */
  long clients = bo->clients, frames = bo->frames, window = bo->window;
  const double rate = bo->rate;
  char **paths = NULL;
  size_t n_paths = 0;
  struct bench_client *cs = NULL;
  int status = 2;
  b.rate_per_client = rate / (double)clients;
  for (int i = 0; i < bo->n_inputs; i++)
    if (gl_cli_add_path(bo->inputs[i], &paths, &n_paths) != GL_OK)
      goto done;
  status = 1;
  b.images = calloc(n_paths ? n_paths : 1, sizeof *b.images);
  if (!b.images)
    goto done;
  for (size_t i = 0; i < n_paths; i++) {
    struct bench_image *img = &b.images[b.n_images];
    if (gl_cli_read_file(paths[i], &img->data, &img->len) != GL_OK ||
        (img->format = gl_cli_sniff_format(img->data, img->len)) ==
            GEOLOC__V1__IMAGE_FORMAT__IMAGE_FORMAT_UNSPECIFIED) {
      fprintf(stderr, "geoloc bench: %s: not a readable JPEG or PNG file\n", paths[i]);
      free(img->data);
      goto done;
    }
    b.n_images++;
  }
  if (b.n_images == 0) {
    fprintf(stderr, "geoloc bench: no .jpg, .jpeg or .png files\n");
    goto done;
  }

  cs = calloc((size_t)clients, sizeof *cs);
  if (!cs)
    goto done;
  for (long i = 0; i < clients; i++) {
    struct bench_client *c = &cs[i];
    c->b = &b;
    c->index = (uint32_t)i;
    c->frames = (uint32_t)(frames / clients + (i < frames % clients));
    c->sent_us = calloc(c->frames, sizeof *c->sent_us);
    c->answers = calloc(c->frames, 1);
    c->latency_ms = calloc(c->frames, sizeof *c->latency_ms);
    if (!c->sent_us || !c->answers || !c->latency_ms)
      goto done;
  }
  printf("geoloc bench: %ld client(s), %ld frames, window %ld, %s\n", clients, frames, window,
         rate > 0 ? "rate-limited" : "as fast as answered");
  uint64_t t0 = gl_cli_clock_us(CLOCK_MONOTONIC);
  for (long i = 0; i < clients; i++)
    if (pthread_create(&cs[i].thread, NULL, bench_client_main, &cs[i]) != 0) {
      fprintf(stderr, "geoloc bench: cannot start client %ld\n", i);
      clients = i;
      break;
    }
  for (long i = 0; i < clients; i++)
    pthread_join(cs[i].thread, NULL);
  double seconds = (double)(gl_cli_clock_us(CLOCK_MONOTONIC) - t0) / 1e6;

  /* Merge: statuses, latencies, the invariant. */
  uint64_t sent = 0, answered = 0, twice = 0, n_lat = 0;
  const char *names[BENCH_STATUSES] = {0};
  uint64_t counts[BENCH_STATUSES] = {0};
  for (long i = 0; i < clients; i++) {
    struct bench_client *c = &cs[i];
    sent += c->sent;
    answered += c->answered;
    for (uint32_t f = 0; f < c->sent; f++)
      twice += c->answers[f] > 1;
    for (int s = 0; s < BENCH_STATUSES && c->status[s]; s++) {
      for (int t = 0; t < BENCH_STATUSES; t++) {
        if (!names[t])
          names[t] = c->status[s];
        if (strcmp(names[t], c->status[s]) == 0) {
          counts[t] += c->status_count[s];
          break;
        }
      }
    }
    if (c->failure[0])
      fprintf(stderr, "geoloc bench: client %ld stopped: %s\n", i, c->failure);
  }
  double *lat = malloc((answered ? answered : 1) * sizeof *lat);
  if (!lat)
    goto done;
  for (long i = 0; i < clients; i++) {
    memcpy(lat + n_lat, cs[i].latency_ms, cs[i].n_latency * sizeof *lat);
    n_lat += cs[i].n_latency;
  }
  qsort(lat, n_lat, sizeof *lat, cmp_double);
  for (int t = 0; t < BENCH_STATUSES && names[t]; t++)
    printf("  %-20s %llu\n", names[t], (unsigned long long)counts[t]);
  double p99 = percentile(lat, n_lat, 0.99);
  printf("latency ms: p50 %.2f  p90 %.2f  p99 %.2f  max %.2f\n", percentile(lat, n_lat, 0.5),
         percentile(lat, n_lat, 0.9), p99, n_lat ? lat[n_lat - 1] : 0.0);
  bool once = sent == (uint64_t)frames && answered == sent && twice == 0;
  unsigned reconnects = 0;
  for (long i = 0; i < clients; i++)
    reconnects += cs[i].reconnects;
  printf("summary: sent %llu, answered %llu, each exactly once: %s; %.1f frames/s, p99 %.2f ms; "
         "%u reconnection(s)\n",
         (unsigned long long)sent, (unsigned long long)answered, once ? "yes" : "NO",
         (double)answered / seconds, p99, reconnects);
  free(lat);
  status = once ? 0 : 1;
done:
  for (long i = 0; cs && i < clients; i++) {
    free(cs[i].sent_us);
    free(cs[i].answers);
    free(cs[i].latency_ms);
  }
  free(cs);
  for (size_t i = 0; i < b.n_images; i++)
    free(b.images[i].data);
  free(b.images);
  for (size_t i = 0; i < n_paths; i++)
    free(paths[i]);
  free(paths);
  return status;
}

int gl_cmd_bench(int argc, char **argv) {
  struct bench_opts bo;
  int st = bench_parse(argc, argv, &bo);
  return st == GL_CLI_RUN ? bench_run(&bo) : st;
}
