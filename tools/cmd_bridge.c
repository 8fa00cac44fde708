/* geoloc bridge: on a companion computer, between the camera, geolocd and
 * the autopilot. Frames come from a directory a camera writes into, or as
 * paths on stdin; they are streamed to geolocd, and each answer goes on to
 * the autopilot as a MAVLink GPS_INPUT packet (and to stdout with --format).
 *
 * It runs until stopped (or stdin ends), and neither side going away ends
 * it: geolocd is connected again every --retry seconds, and the frames that
 * were in flight are sent again, in order, so that each frame is answered
 * once; the MAVLink link is reopened by itself (autopilot.h). */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "autopilot.h"
#include "cli.h"
#include "client/client.h"
#include "client/report.h"
#include "commands.h"
#include "core/err.h"
#include "stream.h"

#define PING_IDLE_US 15000000u /* keeps the stream within geolocd's idle timeout */
#define SETTLE_US 200000u      /* a camera file unchanged this long is complete */
#define MAX_QUEUE 100000u      /* frames waiting for geolocd; the oldest go beyond */

static void usage(FILE *f) {
  fprintf(f, "usage: geoloc bridge --connect ADDR (--camera DIR | --stdin-frames)\n"
             "                     [--mavlink LINK] [--format F] [options]\n"
             "\n"
             "Streams a camera's frames to geolocd and forwards every answer to the\n"
             "autopilot as a MAVLink GPS_INPUT packet, until stopped. geolocd and the\n"
             "MAVLink link are reconnected after any failure; frames that were in flight\n"
             "are sent again, so none is lost or answered twice.\n"
             "\n"
             "  --connect ADDR      geolocd: HOST:PORT, [IPv6]:PORT or unix:PATH\n"
             "  --camera DIR        frames are the .jpg/.jpeg/.png files that appear in DIR,\n"
             "                      in name order, each once unchanged for 0.2 s (write to a\n"
             "                      dot-file and rename it to be safe); captured at the\n"
             "                      file's modification time\n"
             "  --backlog           with --camera: also the files already there at start\n"
             "  --poll S            with --camera: look for new files every S s (default 0.1)\n"
             "  --stdin-frames      frames are lines on stdin: PATH[,TIME_US[,VN,VE]] with the\n"
             "                      capture time (microseconds since the Unix epoch; default:\n"
             "                      when the line is read) and the vehicle's velocity north\n"
             "                      and east in m/s, sent to geolocd and to the autopilot;\n"
             "                      the bridge ends once stdin does and every frame is answered\n"
             "  --map NAME          map to localize against (default: the server's only map)\n"
             "  --track             ask geolocd to track the flight: the autopilot gets the\n"
             "                      track (a fix only while LOCKED); a new connection starts a\n"
             "                      new track\n"
             "  --max-speed V       with --track: the vehicle's top speed, m/s\n"
             "  --window N          frames in flight at once (default 4)\n"
             "  --retry S           seconds between attempts to reach geolocd (default 1)\n"
             "  --max-age S         drop frames that waited more than S s for geolocd (default\n"
             "                      0: never); an old position is no use to a flying vehicle\n"
             "  --format F          also print the answers: table, csv, geojson, nmea or\n"
             "                      mavlink (default: nothing)\n");
  fputs(GL_CLI_MAVLINK_USAGE, f); /* apart: one literal would pass C's 4095 bytes */
  fprintf(f, "  --tls-ca FILE       CA of the server certificate (enables TLS)\n"
             "  --tls-cert FILE     client certificate\n"
             "  --tls-key FILE      client private key\n"
             "  --server-name N     name to verify in the server certificate\n" GL_CLI_TOKEN_USAGE
             "\n"
             "Exit status: 0 when stopped (SIGINT, SIGTERM) or when stdin ended and every\n"
             "frame was answered; 2 for wrong usage.\n");
}

struct bridge_opts {
  struct gl_client_opts co;
  const char *map, *camera;
  bool stdin_frames, backlog, track, have_format;
  double poll_s, retry_s, max_age_s, max_speed;
  uint32_t window;
  enum gl_report_format fmt;
  struct gl_cli_mavlink mav;
};

/* A frame waits (QUEUED), is in flight, is answered but waits for the
 * answers of earlier frames (HELD), or is done. */
enum { QUEUED, IN_FLIGHT, HELD, DONE };

/* An answer held back, with its candidates. */
struct held {
  struct gl_cli_answer a;
  struct gl_report_candidate cand[];
};

struct frame {
  char *path;
  uint64_t capture_us; /* Unix epoch */
  double vel[2];       /* north, east (m/s); NaN: none */
  uint64_t queued_us;  /* monotonic: when the source gave it */
  uint64_t sent_us;    /* monotonic: when last sent */
  uint64_t id;         /* frame_id of its last sending */
  int state;
  struct held *held; /* HELD: its answer */
};

struct bridge {
  const struct bridge_opts *o;
  /* Frames in order: q[head .. head + len); next is the first that may
   * still need sending. */
  struct frame *q;
  size_t head, len, cap, next, in_flight;
  /* geolocd */
  struct gl_client *client;
  uint32_t window;
  size_t max_bytes;
  uint64_t next_id, last_capture_us, next_connect_us, last_io_us;
  char last_err[256];
  /* the source */
  bool stdin_eof;
  char line[4096];
  size_t line_len;
  char *last_name; /* --camera: the last file taken */
  bool camera_missing;
  uint64_t next_scan_us;
  /* where answers go */
  struct gl_cli_autopilot ap;
  struct gl_report report;
  uint64_t answered, dropped_old, pending_old;
};

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig) {
  (void)sig;
  stop_requested = 1;
}

static uint64_t now_us(void) { return gl_cli_clock_us(CLOCK_MONOTONIC); }

/* --- the queue ---------------------------------------------------------------- */

static struct frame *at(struct bridge *b, size_t i) { return &b->q[b->head + i]; }

/* Appends a frame (path is taken). The oldest frame that waits, not in
 * flight, goes when the queue is full: geolocd has been away for long. */
static int enqueue(struct bridge *b, char *path, uint64_t capture_us, double vn, double ve) {
  for (size_t i = b->next; b->len >= MAX_QUEUE && i < b->len; i++)
    if (at(b, i)->state == QUEUED) {
      at(b, i)->state = DONE;
      b->dropped_old++;
      break;
    }
  if (b->head + b->len == b->cap) {
    if (b->head > 0) { /* slide down over the answered frames */
      memmove(b->q, b->q + b->head, b->len * sizeof *b->q);
      b->head = 0;
    } else {
      size_t cap = b->cap ? b->cap * 2 : 64;
      struct frame *q = realloc(b->q, cap * sizeof *q);
      if (!q) {
        free(path);
        return GL_ENOMEM;
      }
      b->q = q;
      b->cap = cap;
    }
  }
  b->q[b->head + b->len++] = (struct frame){.path = path,
                                            .capture_us = capture_us,
                                            .vel = {vn, ve},
                                            .queued_us = now_us(),
                                            .state = QUEUED};
  return GL_OK;
}

/* Frees the answered frames at the head. */
static void pop_done(struct bridge *b) {
  while (b->len > 0 && at(b, 0)->state == DONE) {
    free(at(b, 0)->path);
    free(at(b, 0)->held);
    b->head++;
    b->len--;
    b->next = b->next > 0 ? b->next - 1 : 0;
  }
  if (b->len == 0)
    b->head = 0;
}

/* --- the sources ---------------------------------------------------------------- */

/* One stdin line: PATH[,TIME_US[,VN,VE]]. */
static void stdin_line(struct bridge *b, char *line) {
  char *f[4] = {line, NULL, NULL, NULL};
  int n = 1;
  for (char *p = line; *p && n < 4; p++)
    if (*p == ',') {
      *p = '\0';
      f[n++] = p + 1;
    }
  if (!*f[0])
    return;
  uint64_t t = gl_cli_clock_us(CLOCK_REALTIME);
  double v[2] = {NAN, NAN};
  if ((n >= 2 && *f[1] && gl_cli_u64("time_us", f[1], 0, UINT64_MAX, &t) != GL_OK) || n == 3 ||
      (n == 4 && (gl_cli_double("vn", f[2], -1000, 1000, &v[0]) != GL_OK ||
                  gl_cli_double("ve", f[3], -1000, 1000, &v[1]) != GL_OK))) {
    fprintf(stderr, "geoloc bridge: ignoring the line of %s: want PATH[,TIME_US[,VN,VE]]\n", f[0]);
    return;
  }
  char *path = strdup(f[0]);
  if (!path || enqueue(b, path, t, v[0], v[1]) != GL_OK)
    fprintf(stderr, "geoloc bridge: out of memory\n");
}

/* Reads what stdin has (poll said so), queueing each whole line. */
static void stdin_read(struct bridge *b) {
  ssize_t r = read(STDIN_FILENO, b->line + b->line_len, sizeof b->line - 1 - b->line_len);
  if (r < 0 && (errno == EINTR || errno == EAGAIN))
    return;
  if (r <= 0) {
    b->stdin_eof = true;
    if (b->line_len) { /* a last line without its newline */
      b->line[b->line_len] = '\0';
      b->line_len = 0;
      stdin_line(b, b->line);
    }
    return;
  }
  b->line_len += (size_t)r;
  char *start = b->line, *nl;
  while ((nl = memchr(start, '\n', b->line_len - (size_t)(start - b->line)))) {
    *nl = '\0';
    if (nl > start && nl[-1] == '\r')
      nl[-1] = '\0';
    stdin_line(b, start);
    start = nl + 1;
  }
  b->line_len -= (size_t)(start - b->line);
  memmove(b->line, start, b->line_len);
  if (b->line_len == sizeof b->line - 1) {
    fprintf(stderr, "geoloc bridge: ignoring a stdin line of more than %zu bytes\n",
            sizeof b->line - 1);
    b->line_len = 0;
  }
}

static bool is_image_name(const char *name) {
  const char *dot = strrchr(name, '.');
  return name[0] != '.' && dot &&
         (strcasecmp(dot, ".jpg") == 0 || strcasecmp(dot, ".jpeg") == 0 ||
          strcasecmp(dot, ".png") == 0);
}

static int cmp_name(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Queues the camera's new files: names after the last one taken, in name
 * order, up to the first that is still being written. With take false,
 * only moves the place past what is there (the start without --backlog). */
static void camera_scan(struct bridge *b, bool take) {
  const char *dir = b->o->camera;
  DIR *d = opendir(dir);
  if (!d) { /* not there yet, or unmounted: said once, looked at again */
    if (!b->camera_missing)
      fprintf(stderr, "geoloc bridge: --camera %s: %s\n", dir, strerror(errno));
    b->camera_missing = true;
    return;
  }
  b->camera_missing = false;
  char **names = NULL;
  size_t n = 0, cap = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (!is_image_name(e->d_name) || (b->last_name && strcmp(e->d_name, b->last_name) <= 0))
      continue;
    if (n == cap) {
      char **l = realloc(names, (cap = cap ? 2 * cap : 16) * sizeof *names);
      if (!l)
        break;
      names = l;
    }
    if (!(names[n] = strdup(e->d_name)))
      break;
    n++;
  }
  closedir(d);
  if (n) /* qsort wants a non-NULL base even for no elements */
    qsort(names, n, sizeof *names, cmp_name);
  uint64_t wall = gl_cli_clock_us(CLOCK_REALTIME);
  size_t i = 0;
  for (; i < n; i++) {
    char *path;
    struct stat st;
    if (asprintf(&path, "%s/%s", dir, names[i]) < 0)
      break;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) {
      free(path);
      continue;
    }
    uint64_t mtime = (uint64_t)st.st_mtim.tv_sec * 1000000u + (uint64_t)st.st_mtim.tv_nsec / 1000u;
    if (take && mtime + SETTLE_US > wall) { /* still being written: next scan */
      free(path);
      break;
    }
    free(b->last_name);
    b->last_name = names[i];
    names[i] = NULL;
    if (!take)
      free(path);
    else if (enqueue(b, path, mtime, NAN, NAN) != GL_OK)
      fprintf(stderr, "geoloc bridge: out of memory\n");
  }
  for (size_t k = 0; k < n; k++)
    free(names[k]);
  free(names);
}

/* --- geolocd ---------------------------------------------------------------------- */

/* Says what went wrong with geolocd, once until it changes. */
static void say(struct bridge *b, const char *what) {
  if (strcmp(what, b->last_err) == 0)
    return;
  snprintf(b->last_err, sizeof b->last_err, "%s", what);
  const char *addr = b->o->co.address;
  bool named = strncmp(what, addr, strlen(addr)) == 0; /* the client's errors name it */
  fprintf(stderr, "geoloc bridge: %s%s%s (trying again every %g s)\n", named ? "" : addr,
          named ? "" : ": ", what, b->o->retry_s);
}

/* Drops the connection; its frames in flight will be sent again. */
static void disconnect(struct bridge *b) {
  gl_client_destroy(b->client);
  b->client = NULL;
  if (b->in_flight)
    fprintf(stderr, "geoloc bridge: %zu frame(s) in flight go again on the next connection\n",
            b->in_flight);
  for (size_t i = 0; i < b->len; i++)
    if (at(b, i)->state == IN_FLIGHT)
      at(b, i)->state = QUEUED;
  b->in_flight = 0;
  b->next = 0;
  b->next_connect_us = now_us() + (uint64_t)(b->o->retry_s * 1e6);
}

static void connect_geolocd(struct bridge *b) {
  const struct bridge_opts *o = b->o;
  char err[512];
  gl_server_msg *w = NULL;
  b->next_connect_us = now_us() + (uint64_t)(o->retry_s * 1e6);
  Geoloc__V1__StreamOptions so = GEOLOC__V1__STREAM_OPTIONS__INIT;
  so.has_track = 1;
  so.track = o->track;
  if (o->max_speed > 0) {
    so.has_max_speed_mps = 1;
    so.max_speed_mps = (float)o->max_speed;
  }
  const struct gl_client_hello_args h = {"geoloc bridge", o->map, &so};
  if (gl_client_open(&o->co, &h, &b->client, &w, err, sizeof err) != GL_OK) {
    say(b, err); /* whatever it is, tried again every --retry */
    return;
  }
  if (o->track && !w->welcome->tracking) {
    say(b, "does not track this stream (no dense layer, or [track] off)");
    gl_wire_free(w);
    disconnect(b);
    return;
  }
  b->window = o->window;
  if (w->welcome->max_frames_in_flight && b->window > w->welcome->max_frames_in_flight)
    b->window = w->welcome->max_frames_in_flight;
  b->max_bytes = w->welcome->max_message_bytes;
  b->last_capture_us = 0;
  b->last_io_us = now_us();
  b->last_err[0] = '\0';
  fprintf(stderr, "geoloc bridge: connected to %s (%s, map %s)\n", o->co.address,
          w->welcome->server ? w->welcome->server : "?",
          w->welcome->map && *w->welcome->map ? w->welcome->map : "-");
  gl_wire_free(w);
}

/* Hands an answer on: stdout (--format) and the autopilot. */
static void deliver(struct bridge *b, struct frame *f, struct gl_cli_answer *a) {
  static const char *const track_status[] = {"", "ACQUIRING", "LOCKED", "LOST"};
  a->capture_us = f->capture_us;
  if (b->o->have_format) {
    if (!(a->track_status && gl_report_track_only(b->report.fmt)))
      gl_report_frame(&b->report, f->path, a->status, a->cand, a->n, a->capture_us, a->latency_ms);
    if (a->track_status >= 1 && a->track_status <= 3) {
      struct gl_report_track t = {
          track_status[a->track_status], a->track_lat,        a->track_lon, a->track_radius_m,
          a->track_confidence,           a->track_heading_deg};
      gl_report_track(&b->report, f->path, &t, a->capture_us, a->latency_ms);
    }
  }
  struct gl_mavlink_fix fix;
  gl_cli_answer_fix(a, f->vel[0], f->vel[1], &fix);
  gl_cli_autopilot_send(&b->ap, &fix);
  f->state = DONE;
  b->answered++;
}

/* Frame f has its answer. Answers go on in frame order, as a GPS receiver's
 * fixes do: geolocd may answer a later frame first (its workers run in
 * parallel, and frames sent again after a reconnection race new ones), so
 * an answer that overtook an earlier frame waits for it. That copy is the
 * only allocation per frame here, and only out of order. */
static void answered(struct bridge *b, struct frame *f, struct gl_cli_answer *a) {
  for (struct frame *e = at(b, 0); e < f; e++) {
    if (e->state != QUEUED && e->state != IN_FLIGHT)
      continue;
    struct held *h = malloc(sizeof *h + a->n * sizeof h->cand[0]);
    if (!h)
      break; /* no memory to wait: on it goes, out of order */
    h->a = *a;
    memcpy(h->cand, a->cand, a->n * sizeof h->cand[0]);
    h->a.cand = h->cand;
    f->held = h;
    f->state = HELD;
    return;
  }
  deliver(b, f, a);
  for (struct frame *g = f + 1; g < at(b, 0) + b->len; g++) {
    if (g->state == DONE)
      continue;
    if (g->state != HELD)
      break;
    deliver(b, g, &g->held->a);
    free(g->held);
    g->held = NULL;
  }
}

/* A frame answered here, without geolocd (unreadable, not an image). */
static void local_answer(struct bridge *b, struct frame *f, const char *status, const char *why) {
  fprintf(stderr, "geoloc bridge: %s: %s\n", f->path, why);
  struct gl_cli_answer a = {.status = status, .track_lat = NAN, .track_lon = NAN};
  f->sent_us = now_us();
  answered(b, f, &a);
}

/* Sends frame f. Returns 0, or the send error that drops the connection. */
static int send_frame(struct bridge *b, struct frame *f) {
  uint8_t *data;
  size_t len;
  if (gl_cli_read_file(f->path, &data, &len) != GL_OK) {
    local_answer(b, f, "UNREADABLE", strerror(errno));
    return GL_OK;
  }
  Geoloc__V1__Frame fr = GEOLOC__V1__FRAME__INIT;
  gl_client_msg cm = GEOLOC__V1__CLIENT_MESSAGE__INIT;
  fr.format = gl_cli_sniff_format(data, len);
  if (fr.format == GEOLOC__V1__IMAGE_FORMAT__IMAGE_FORMAT_UNSPECIFIED ||
      (b->max_bytes && len + 128 > b->max_bytes)) {
    bool bad = fr.format == GEOLOC__V1__IMAGE_FORMAT__IMAGE_FORMAT_UNSPECIFIED;
    free(data);
    local_answer(b, f, bad ? "BAD_IMAGE" : "TOO_LARGE",
                 bad ? "not a JPEG or PNG file" : "larger than the server's message limit");
    return GL_OK;
  }
  /* A tracked stream's capture times never go backwards. */
  if (f->capture_us < b->last_capture_us)
    f->capture_us = b->last_capture_us;
  b->last_capture_us = f->capture_us;
  fr.has_format = fr.has_frame_id = fr.has_capture_time_us = fr.has_image = 1;
  fr.frame_id = f->id = ++b->next_id;
  fr.capture_time_us = f->capture_us;
  fr.image.data = data;
  fr.image.len = len;
  if (!isnan(f->vel[0]) && !isnan(f->vel[1])) {
    fr.has_velocity_north_mps = fr.has_velocity_east_mps = 1;
    fr.velocity_north_mps = f->vel[0];
    fr.velocity_east_mps = f->vel[1];
  }
  cm.msg_case = GEOLOC__V1__CLIENT_MESSAGE__MSG_FRAME;
  cm.frame = &fr;
  f->sent_us = b->last_io_us = now_us();
  int rc = gl_client_send(b->client, &cm);
  free(data);
  if (rc != GL_OK) {
    say(b, gl_client_last_error(b->client));
    return rc;
  }
  f->state = IN_FLIGHT;
  b->in_flight++;
  return GL_OK;
}

/* Sends what the window allows. */
static int send_frames(struct bridge *b) {
  const uint64_t max_age = (uint64_t)(b->o->max_age_s * 1e6);
  for (; b->next < b->len && b->in_flight < b->window; b->next++) {
    struct frame *f = at(b, b->next);
    if (f->state != QUEUED)
      continue;
    if (max_age && now_us() - f->queued_us > max_age) {
      f->state = DONE;
      b->pending_old++;
      continue;
    }
    if (b->pending_old) {
      fprintf(stderr, "geoloc bridge: dropped %llu frame(s) older than %g s\n",
              (unsigned long long)b->pending_old, b->o->max_age_s);
      b->dropped_old += b->pending_old;
      b->pending_old = 0;
    }
    int rc = send_frame(b, f);
    if (rc != GL_OK)
      return rc;
  }
  return GL_OK;
}

static struct frame *in_flight_frame(struct bridge *b, uint64_t id) {
  for (size_t i = 0; i < b->next && i < b->len; i++)
    if (at(b, i)->state == IN_FLIGHT && at(b, i)->id == id)
      return at(b, i);
  return NULL;
}

/* Handles one message. Returns 0, or an error that drops the connection. */
static int handle(struct bridge *b, const gl_server_msg *m) {
  struct gl_report_candidate cand[GL_CLI_MAX_CANDIDATES];
  struct gl_cli_answer a = {.track_lat = NAN, .track_lon = NAN, .cand = cand};
  uint64_t id;
  if (m->msg_case == GEOLOC__V1__SERVER_MESSAGE__MSG_ESTIMATE) {
    id = m->estimate->frame_id;
    gl_cli_answer_of_estimate(m->estimate, cand, &a);
  } else if (m->msg_case == GEOLOC__V1__SERVER_MESSAGE__MSG_ERROR && m->error->has_frame_id) {
    id = m->error->frame_id;
    a.status = gl_cli_error_name(m->error->code);
  } else if (m->msg_case == GEOLOC__V1__SERVER_MESSAGE__MSG_ERROR) {
    char err[300];
    snprintf(err, sizeof err, "server error %s: %s", gl_cli_error_name(m->error->code),
             m->error->message ? m->error->message : "");
    say(b, err);
    return GL_EPROTO;
  } else {
    return GL_OK; /* a Pong */
  }
  struct frame *f = in_flight_frame(b, id);
  if (!f) {
    say(b, "answer for a frame not in flight");
    return GL_EPROTO;
  }
  if (m->msg_case == GEOLOC__V1__SERVER_MESSAGE__MSG_ERROR)
    fprintf(stderr, "geoloc bridge: %s: %s: %s\n", f->path, a.status,
            m->error->message ? m->error->message : "");
  b->in_flight--;
  a.latency_ms = (double)(now_us() - f->sent_us) / 1000.0;
  answered(b, f, &a);
  return GL_OK;
}

/* Receives whatever has arrived (TLS may hold records the socket no longer
 * shows, hence until the client says there is nothing). */
static int receive_all(struct bridge *b) {
  for (;;) {
    gl_server_msg *m = NULL;
    int rc = gl_client_recv(b->client, 0, &m);
    if (rc == GL_ETIMEDOUT)
      return GL_OK;
    if (rc != GL_OK) {
      say(b,
          gl_client_last_error(b->client)[0] ? gl_client_last_error(b->client) : gl_strerror(rc));
      return rc;
    }
    b->last_io_us = now_us();
    rc = handle(b, m);
    gl_wire_free(m);
    if (rc != GL_OK)
      return rc;
  }
}

/* A Ping when the stream has been quiet, so geolocd's idle timeout does not
 * close it while the camera pauses. */
static int keepalive(struct bridge *b) {
  if (now_us() - b->last_io_us < PING_IDLE_US)
    return GL_OK;
  Geoloc__V1__Ping ping = GEOLOC__V1__PING__INIT;
  gl_client_msg cm = GEOLOC__V1__CLIENT_MESSAGE__INIT;
  cm.msg_case = GEOLOC__V1__CLIENT_MESSAGE__MSG_PING;
  cm.ping = &ping;
  b->last_io_us = now_us();
  int rc = gl_client_send(b->client, &cm);
  if (rc != GL_OK)
    say(b, gl_client_last_error(b->client));
  return rc;
}

/* Waits for geolocd, stdin, the next scan, retry or heartbeat. */
static void wait_events(struct bridge *b) {
  struct pollfd p[2];
  int n = 0;
  if (b->client)
    p[n++] = (struct pollfd){.fd = gl_client_fd(b->client), .events = POLLIN};
  if (b->o->stdin_frames && !b->stdin_eof)
    p[n++] = (struct pollfd){.fd = STDIN_FILENO, .events = POLLIN};
  uint64_t now = now_us(), until = now + 1000000u; /* heartbeats */
  if (b->o->camera && b->next_scan_us < until)
    until = b->next_scan_us;
  if (!b->client && b->next_connect_us < until)
    until = b->next_connect_us;
  int timeout = until > now ? (int)((until - now + 999) / 1000) : 0;
  if (poll(p, (nfds_t)n, timeout) < 0)
    return; /* EINTR: a signal; the loop looks at it */
  if (b->o->stdin_frames && !b->stdin_eof && (p[n - 1].revents & (POLLIN | POLLHUP | POLLERR)))
    stdin_read(b);
}

static int bridge_run(const struct bridge_opts *o) {
  struct bridge b = {.o = o};
  int status = 1;
  struct sigaction sa = {.sa_handler = on_signal};
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);
  if (gl_cli_autopilot_open(&b.ap, "geoloc bridge", &o->mav, false) != GL_OK)
    return 2;
  if (o->have_format) {
    gl_report_begin(&b.report, stdout, o->fmt);
    b.report.mavlink.opts = o->mav.opts;
  }
  if (o->camera && !o->backlog)
    camera_scan(&b, false);
  while (!stop_requested) {
    if (o->camera && now_us() >= b.next_scan_us) {
      camera_scan(&b, true);
      b.next_scan_us = now_us() + (uint64_t)(o->poll_s * 1e6);
    }
    if (!b.client && now_us() >= b.next_connect_us)
      connect_geolocd(&b);
    if (b.client &&
        (send_frames(&b) != GL_OK || receive_all(&b) != GL_OK || keepalive(&b) != GL_OK))
      disconnect(&b);
    pop_done(&b);
    gl_cli_autopilot_tick(&b.ap);
    if (o->stdin_frames && b.stdin_eof && b.len == 0) {
      status = 0;
      break;
    }
    wait_events(&b);
  }
  if (stop_requested)
    status = 0;
  fprintf(stderr, "geoloc bridge: %llu frame(s) answered, %zu waiting, %llu dropped as too old\n",
          (unsigned long long)b.answered, b.len,
          (unsigned long long)(b.dropped_old + b.pending_old));
  if (o->have_format)
    gl_report_end(&b.report);
  gl_client_destroy(b.client);
  gl_cli_autopilot_close(&b.ap);
  for (size_t i = 0; i < b.len; i++) {
    free(at(&b, i)->path);
    free(at(&b, i)->held);
  }
  free(b.q);
  free(b.last_name);
  return status;
}

static int bridge_option(void *opts, int o, const char *flag, const char *arg) {
  struct bridge_opts *bo = opts;
  switch (o) {
  case 'c':
    bo->co.address = arg;
    return GL_OK;
  case 'm':
    bo->map = arg;
    return GL_OK;
  case 'C':
    bo->camera = arg;
    return GL_OK;
  case 1400:
    bo->stdin_frames = true;
    return GL_OK;
  case 1401:
    bo->backlog = true;
    return GL_OK;
  case 1402:
    return gl_cli_positive(flag, arg, 60, &bo->poll_s);
  case 1403:
    bo->track = true;
    return GL_OK;
  case 1404:
    return gl_cli_positive(flag, arg, 1000, &bo->max_speed);
  case 'w':
    return gl_cli_u32(flag, arg, 1, 4096, &bo->window);
  case 1405:
    return gl_cli_positive(flag, arg, 3600, &bo->retry_s);
  case 1406:
    return gl_cli_double(flag, arg, 0, 86400, &bo->max_age_s);
  case 'f':
    if (gl_report_format_parse(arg, &bo->fmt) != GL_OK) {
      fprintf(stderr, "geoloc: --format: table, csv, geojson, nmea or mavlink, not '%s'\n", arg);
      return GL_EINVAL;
    }
    bo->have_format = true;
    return GL_OK;
  case 'a':
  case 'e':
  case 'K':
  case 's':
  case 'T':
    gl_cli_tls_option(o, arg, &bo->co);
    return GL_OK;
  default:
    if (o >= 1300 && o <= 1307)
      return gl_cli_mavlink_option(o, flag, arg, &bo->mav);
  }
  return GL_EINVAL;
}

static int bridge_parse(int argc, char **argv, struct bridge_opts *bo) {
  static const struct option opts[] = {
      {"connect", required_argument, NULL, 'c'},
      {"map", required_argument, NULL, 'm'},
      {"camera", required_argument, NULL, 'C'},
      {"stdin-frames", no_argument, NULL, 1400},
      {"backlog", no_argument, NULL, 1401},
      {"poll", required_argument, NULL, 1402},
      {"track", no_argument, NULL, 1403},
      {"max-speed", required_argument, NULL, 1404},
      {"window", required_argument, NULL, 'w'},
      {"retry", required_argument, NULL, 1405},
      {"max-age", required_argument, NULL, 1406},
      {"format", required_argument, NULL, 'f'},
      GL_CLI_MAVLINK_OPTIONS,
      GL_CLI_TLS_OPTIONS,
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  *bo = (struct bridge_opts){.poll_s = 0.1, .retry_s = 1, .window = 4};
  gl_cli_mavlink_init(&bo->mav);
  int st = gl_cli_getopt(argc, argv, "c:", opts, bridge_option, bo, usage);
  if (st != GL_CLI_RUN)
    return st;
  if (!bo->co.address || !bo->camera == !bo->stdin_frames || optind != argc) {
    usage(stderr);
    return 2;
  }
  if (!bo->mav.link && !bo->have_format) {
    fprintf(stderr, "geoloc bridge: nowhere to send the answers: give --mavlink or --format\n");
    return 2;
  }
  if (bo->backlog && !bo->camera) {
    fprintf(stderr, "geoloc bridge: --backlog goes with --camera\n");
    return 2;
  }
  return GL_CLI_RUN;
}

int gl_cmd_bridge(int argc, char **argv) {
  struct bridge_opts bo;
  int st = bridge_parse(argc, argv, &bo);
  return st == GL_CLI_RUN ? bridge_run(&bo) : st;
}
