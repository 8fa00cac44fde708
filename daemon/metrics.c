/* Metrics registry and its HTTP endpoint (see metrics.h). */
#include "metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#include "core/addr.h"
#include "core/err.h"
#include "core/log.h"
#include "gl_build_config.h"

/* A scrape is a handful of short requests from one Prometheus, and a probe
 * one request: a few connections at a time are plenty.
 *
 * A peer that trickles its request a byte at a time (a slowloris) would
 * hold a connection for as long as it likes under libmicrohttpd's idle
 * timeout, which every byte renews. So each request must arrive, and its
 * answer leave, within GL_METRICS_REQUEST_DEADLINE_MS of the accept (or of
 * the previous answer on a kept-alive connection), however many bytes
 * trickle in; and beyond GL_METRICS_MAX_CONNS open connections a new one
 * evicts the one whose deadline is nearest, which is never a probe that has
 * just connected: /healthz and /readyz stay answerable while slow peers
 * come and go. libmicrohttpd's own limit, twice that, only backs this up. */
#define GL_METRICS_MAX_CONNS 32u
#define GL_METRICS_HARD_CONNS (2u * GL_METRICS_MAX_CONNS)
#define GL_METRICS_REQUEST_DEADLINE_MS 5000u
#define GL_METRICS_CONN_TIMEOUT_S 10u /* idle: the deadline above comes first */
#define GL_METRICS_LOG_BURST 10u      /* libmicrohttpd's messages a minute */
#define GL_METRICS_BACKEND_MAX 64

const uint64_t gl_metrics_latency_bounds_us[GL_METRICS_LATENCY_BUCKETS] = {
    100,   250,    500,    1000,   2500,    5000,    10000,   25000,
    50000, 100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000,
};

static const char *const k_status_label[GL_METRICS_FRAME__COUNT] = {
    [GL_METRICS_FRAME_OK] = "ok",
    [GL_METRICS_FRAME_NO_MATCH] = "no_match",
    [GL_METRICS_FRAME_DROPPED_STALE] = "dropped_stale",
    [GL_METRICS_FRAME_BUSY] = "busy",
    [GL_METRICS_FRAME_BAD_IMAGE] = "bad_image",
    [GL_METRICS_FRAME_UNAVAILABLE] = "unavailable",
    [GL_METRICS_FRAME_ERROR] = "error",
    [GL_METRICS_FRAME_ABANDONED] = "abandoned",
};

static const struct {
  const char *name;
  const char *help;
} k_hist_info[GL_METRICS_HIST__COUNT] = {
    [GL_METRICS_QUEUE] = {"geoloc_queue_seconds",
                          "Time a decoded frame waited for the inference batcher."},
    [GL_METRICS_INFER] = {"geoloc_infer_seconds",
                          "Inference time of the batch that carried a frame."},
    [GL_METRICS_SEARCH] = {"geoloc_search_seconds", "Map search and clustering time of a frame."},
    [GL_METRICS_DECODE] = {"geoloc_decode_seconds",
                           "Image decoding and preprocessing time of a frame."},
};

/* Buckets hold plain (not cumulative) counts, so an observation touches one
 * bucket and the sum; the cumulative counts and _count are computed when
 * rendering. _count is the sum of the buckets as read, which keeps
 * _count == the +Inf bucket in every scrape even while observations race it. */
struct gl_hist_lat {
  atomic_uint_fast64_t bucket[GL_METRICS_LATENCY_BUCKETS + 1]; /* last: +Inf */
  atomic_uint_fast64_t sum_us; /* integer: C11 has no portable atomic add on doubles */
};

struct gl_hist_batch {
  atomic_uint_fast64_t bucket[GL_METRICS_BATCH_BUCKETS + 1];
  atomic_uint_fast64_t sum;
};

/* An open HTTP connection, on the HTTP thread's list (oldest deadline
 * first). */
struct gl_http_conn {
  struct gl_http_conn *prev, *next;
  MHD_socket fd;
  uint64_t deadline_ms; /* CLOCK_MONOTONIC */
  bool cut;             /* shut down; libmicrohttpd closes it at its next turn */
};

struct gl_metrics {
  atomic_uint_fast64_t frames[GL_METRICS_FRAME__COUNT];
  struct gl_hist_lat hist[GL_METRICS_HIST__COUNT];
  struct gl_hist_batch batch;
  atomic_uint_fast64_t clients;
  atomic_int_fast64_t in_flight;
  atomic_uint_fast64_t maps;
  atomic_uint_fast64_t heartbeat_ms; /* CLOCK_MONOTONIC of the last heartbeat */
  /* The longest a heartbeat came after the one before beyond its period:
   * how long the event loop was kept from running its timers. Only the
   * loop thread writes these; prev_beat_ms is 0 before the first beat (the
   * start, model loading included, is not a stall). */
  atomic_uint_fast64_t loop_lag_max_ms;
  uint64_t prev_beat_ms;
  atomic_uint_fast32_t stall_ms;
  atomic_bool ready;

  pthread_mutex_t backend_lock; /* guards backend: a string cannot be swapped atomically */
  char backend[GL_METRICS_BACKEND_MAX];

  uint64_t start_time_cs; /* process start, centiseconds since the epoch */
  struct MHD_Daemon *httpd;
  uint16_t port;

  /* The HTTP thread drives libmicrohttpd (external polling), so that the
   * connection list below is only ever touched by it: by libmicrohttpd's
   * callbacks, which run inside MHD_run, and by the deadline sweep between
   * two runs. MHD_stop_daemon runs after the thread is joined. */
  pthread_t thread;
  bool thread_started;
  int wake[2]; /* written once to stop the thread */
  int epoll_fd;
  struct gl_http_conn *conn_head, *conn_tail;
  unsigned n_conns; /* on the list and not cut */
  /* libmicrohttpd's messages in the current minute (gl__on_mhd_log). */
  uint64_t log_window_ms;
  unsigned log_count, log_dropped;
};

/* ---- clocks ---------------------------------------------------------------- */

static uint64_t gl__mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* process_start_time_seconds is meant for detecting restarts, so it should
 * be the time the process started rather than when this object was made:
 * the kernel's boot time plus the process's start in clock ticks since boot,
 * as the Prometheus client libraries compute it. Falls back to now. */
static uint64_t gl__process_start_cs(void) {
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  uint64_t fallback = (uint64_t)now.tv_sec * 100u + (uint64_t)now.tv_nsec / 10000000u;

  char buf[1024];
  unsigned long long btime = 0, ticks = 0;
  long hz = sysconf(_SC_CLK_TCK);
  FILE *f = fopen("/proc/stat", "re");
  if (!f)
    return fallback;
  bool found = false;
  while (fgets(buf, sizeof buf, f))
    if (sscanf(buf, "btime %llu", &btime) == 1) {
      found = true;
      break;
    }
  fclose(f);
  if (!found || hz <= 0)
    return fallback;

  f = fopen("/proc/self/stat", "re");
  if (!f)
    return fallback;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  /* The command name (field 2) may hold spaces and parentheses: the fields
   * that follow start after its last ')'. starttime is field 22. */
  char *p = strrchr(buf, ')');
  if (!p)
    return fallback;
  p++;
  for (int field = 3; field < 22 && p; field++) {
    p = strchr(p + 1, ' ');
  }
  if (!p || sscanf(p, " %llu", &ticks) != 1)
    return fallback;
  return (uint64_t)btime * 100u + (uint64_t)ticks * 100u / (uint64_t)hz;
}

/* ---- updates (any thread, lock-free) -------------------------------------- */

void gl_metrics_frame(struct gl_metrics *m, enum gl_metrics_status status) {
  if (!m)
    return;
  unsigned i = (unsigned)status;
  if (i >= GL_METRICS_FRAME__COUNT)
    i = GL_METRICS_FRAME_ERROR;
  atomic_fetch_add_explicit(&m->frames[i], 1, memory_order_relaxed);
}

void gl_metrics_observe(struct gl_metrics *m, enum gl_metrics_hist h, uint64_t us) {
  if (!m || (unsigned)h >= GL_METRICS_HIST__COUNT)
    return;
  struct gl_hist_lat *hs = &m->hist[h];
  unsigned b = 0;
  while (b < GL_METRICS_LATENCY_BUCKETS && us > gl_metrics_latency_bounds_us[b])
    b++;
  atomic_fetch_add_explicit(&hs->bucket[b], 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&hs->sum_us, us, memory_order_relaxed);
}

void gl_metrics_batch(struct gl_metrics *m, uint32_t n) {
  if (!m)
    return;
  if (n == 0)
    n = 1;
  unsigned b = 0;
  while (b < GL_METRICS_BATCH_BUCKETS && n > (1u << b))
    b++;
  atomic_fetch_add_explicit(&m->batch.bucket[b], 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&m->batch.sum, n, memory_order_relaxed);
}

void gl_metrics_set_clients(struct gl_metrics *m, uint64_t n) {
  if (m)
    atomic_store_explicit(&m->clients, n, memory_order_relaxed);
}

void gl_metrics_add_in_flight(struct gl_metrics *m, int64_t delta) {
  if (m)
    atomic_fetch_add_explicit(&m->in_flight, delta, memory_order_relaxed);
}

void gl_metrics_set_maps(struct gl_metrics *m, uint64_t n) {
  if (m)
    atomic_store_explicit(&m->maps, n, memory_order_relaxed);
}

void gl_metrics_set_backend(struct gl_metrics *m, const char *name) {
  if (!m)
    return;
  pthread_mutex_lock(&m->backend_lock);
  snprintf(m->backend, sizeof m->backend, "%s", name ? name : "none");
  pthread_mutex_unlock(&m->backend_lock);
}

void gl_metrics_heartbeat(struct gl_metrics *m) {
  if (!m)
    return;
  uint64_t now = gl__mono_ms(), last = m->prev_beat_ms;
  atomic_store_explicit(&m->heartbeat_ms, now, memory_order_relaxed);
  m->prev_beat_ms = now;
  uint64_t lag = last && now > last + GL_METRICS_HEARTBEAT_MS ? now - last - GL_METRICS_HEARTBEAT_MS
                                                              : 0;
  if (lag > atomic_load_explicit(&m->loop_lag_max_ms, memory_order_relaxed))
    atomic_store_explicit(&m->loop_lag_max_ms, lag, memory_order_relaxed);
}

void gl_metrics_set_stall_timeout(struct gl_metrics *m, uint32_t ms) {
  if (m)
    atomic_store(&m->stall_ms, ms ? ms : GL_METRICS_STALL_MS_DEFAULT);
}

void gl_metrics_set_ready(struct gl_metrics *m, bool ready) {
  if (m)
    atomic_store(&m->ready, ready);
}

uint16_t gl_metrics_port(const struct gl_metrics *m) { return m ? m->port : 0; }

/* ---- rendering -------------------------------------------------------------- */

struct gl_buf {
  char *p;
  size_t len, cap;
  bool oom; /* sticky: the caller checks once at the end */
};

static void gl__buf_printf(struct gl_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void gl__buf_printf(struct gl_buf *b, const char *fmt, ...) {
  if (b->oom)
    return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0) {
      b->oom = true;
      return;
    }
    if ((size_t)n < b->cap - b->len) {
      b->len += (size_t)n;
      return;
    }
    size_t cap = b->cap * 2;
    while (cap - b->len <= (size_t)n)
      cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
      b->oom = true;
      return;
    }
    b->p = p;
    b->cap = cap;
  }
}

/* Label values escape backslash, double quote and newline (format 0.0.4). */
static void gl__buf_label(struct gl_buf *b, const char *s) {
  for (; *s; s++) {
    if (*s == '\\')
      gl__buf_printf(b, "\\\\");
    else if (*s == '"')
      gl__buf_printf(b, "\\\"");
    else if (*s == '\n')
      gl__buf_printf(b, "\\n");
    else
      gl__buf_printf(b, "%c", *s);
  }
}

static void gl__buf_family(struct gl_buf *b, const char *name, const char *type, const char *help) {
  gl__buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Microseconds as decimal seconds, exactly: no float rounding, and the le
 * labels come out as "0.00025", "1", "2.5". */
static void gl__fmt_us(char *out, size_t len, uint64_t us, bool trim) {
  uint64_t s = us / 1000000u, frac = us % 1000000u;
  if (!trim) {
    snprintf(out, len, "%" PRIu64 ".%06" PRIu64, s, frac);
    return;
  }
  if (frac == 0) {
    snprintf(out, len, "%" PRIu64, s);
    return;
  }
  int digits = 6;
  while (frac % 10 == 0) {
    frac /= 10;
    digits--;
  }
  snprintf(out, len, "%" PRIu64 ".%0*" PRIu64, s, digits, frac);
}

static void gl__render_latency(struct gl_buf *b, struct gl_metrics *m, enum gl_metrics_hist h) {
  const char *name = k_hist_info[h].name;
  struct gl_hist_lat *hs = &m->hist[h];
  char num[48];
  uint64_t cum = 0;
  gl__buf_family(b, name, "histogram", k_hist_info[h].help);
  for (unsigned i = 0; i <= GL_METRICS_LATENCY_BUCKETS; i++) {
    cum += atomic_load_explicit(&hs->bucket[i], memory_order_relaxed);
    if (i < GL_METRICS_LATENCY_BUCKETS)
      gl__fmt_us(num, sizeof num, gl_metrics_latency_bounds_us[i], true);
    else
      snprintf(num, sizeof num, "+Inf");
    gl__buf_printf(b, "%s_bucket{le=\"%s\"} %" PRIu64 "\n", name, num, cum);
  }
  gl__fmt_us(num, sizeof num, atomic_load_explicit(&hs->sum_us, memory_order_relaxed), false);
  gl__buf_printf(b, "%s_sum %s\n%s_count %" PRIu64 "\n", name, num, name, cum);
}

static void gl__render_batch(struct gl_buf *b, struct gl_metrics *m) {
  const char *name = "geoloc_batch_size";
  uint64_t cum = 0;
  gl__buf_family(b, name, "histogram", "Frames per inference batch.");
  for (unsigned i = 0; i <= GL_METRICS_BATCH_BUCKETS; i++) {
    cum += atomic_load_explicit(&m->batch.bucket[i], memory_order_relaxed);
    if (i < GL_METRICS_BATCH_BUCKETS)
      gl__buf_printf(b, "%s_bucket{le=\"%u\"} %" PRIu64 "\n", name, 1u << i, cum);
    else
      gl__buf_printf(b, "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n", name, cum);
  }
  gl__buf_printf(b, "%s_sum %" PRIu64 "\n%s_count %" PRIu64 "\n", name,
                 (uint64_t)atomic_load_explicit(&m->batch.sum, memory_order_relaxed), name, cum);
}

int gl_metrics_render(struct gl_metrics *m, char **out, size_t *len) {
  struct gl_buf b = {.cap = 8192};
  *out = NULL;
  *len = 0;
  if (!m)
    return GL_EINVAL;
  b.p = malloc(b.cap);
  if (!b.p)
    return GL_ENOMEM;

  gl__buf_family(&b, "geoloc_frames_total", "counter", "Frames answered, by outcome.");
  for (unsigned i = 0; i < GL_METRICS_FRAME__COUNT; i++)
    gl__buf_printf(&b, "geoloc_frames_total{status=\"%s\"} %" PRIu64 "\n", k_status_label[i],
                   (uint64_t)atomic_load_explicit(&m->frames[i], memory_order_relaxed));

  static const enum gl_metrics_hist order[] = {GL_METRICS_DECODE, GL_METRICS_QUEUE,
                                               GL_METRICS_INFER, GL_METRICS_SEARCH};
  for (size_t i = 0; i < sizeof order / sizeof order[0]; i++)
    gl__render_latency(&b, m, order[i]);
  gl__render_batch(&b, m);

  gl__buf_family(&b, "geoloc_clients", "gauge", "Connected clients holding a client slot.");
  gl__buf_printf(&b, "geoloc_clients %" PRIu64 "\n",
                 (uint64_t)atomic_load_explicit(&m->clients, memory_order_relaxed));
  gl__buf_family(&b, "geoloc_frames_in_flight", "gauge", "Frames received and not yet answered.");
  gl__buf_printf(&b, "geoloc_frames_in_flight %" PRId64 "\n",
                 (int64_t)atomic_load_explicit(&m->in_flight, memory_order_relaxed));
  gl__buf_family(&b, "geoloc_loop_lag_seconds_max", "gauge",
                 "Longest the event loop ran late for its heartbeat since the start.");
  gl__buf_printf(&b, "geoloc_loop_lag_seconds_max %.3f\n",
                 (double)atomic_load_explicit(&m->loop_lag_max_ms, memory_order_relaxed) / 1e3);
  gl__buf_family(&b, "geoloc_maps", "gauge", "Maps loaded and searchable.");
  gl__buf_printf(&b, "geoloc_maps %" PRIu64 "\n",
                 (uint64_t)atomic_load_explicit(&m->maps, memory_order_relaxed));

  char backend[GL_METRICS_BACKEND_MAX];
  pthread_mutex_lock(&m->backend_lock);
  memcpy(backend, m->backend, sizeof backend);
  pthread_mutex_unlock(&m->backend_lock);
  gl__buf_family(&b, "geoloc_backend_info", "gauge", "Inference backend in use.");
  gl__buf_printf(&b, "geoloc_backend_info{backend=\"");
  gl__buf_label(&b, backend);
  gl__buf_printf(&b, "\"} 1\n");

  gl__buf_family(&b, "geoloc_build_info", "gauge", "Version of geolocd.");
  gl__buf_printf(&b, "geoloc_build_info{version=\"");
  gl__buf_label(&b, GL_VERSION);
  gl__buf_printf(&b, "\",protocol=\"%d\"} 1\n", GL_PROTOCOL_VERSION);

  gl__buf_family(&b, "process_start_time_seconds", "gauge",
                 "Start time of the process since unix epoch in seconds.");
  gl__buf_printf(&b, "process_start_time_seconds %" PRIu64 ".%02" PRIu64 "\n",
                 m->start_time_cs / 100u, m->start_time_cs % 100u);

  if (b.oom) {
    free(b.p);
    return GL_ENOMEM;
  }
  *out = b.p;
  *len = b.len;
  return GL_OK;
}

/* ---- HTTP ------------------------------------------------------------------- */

static enum MHD_Result gl__reply(struct MHD_Connection *conn, unsigned status, const char *body,
                                 const char *allow) {
  struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), (void *)(uintptr_t)body,
                                                           MHD_RESPMEM_PERSISTENT);
  if (!r)
    return MHD_NO;
  enum MHD_Result ok =
      MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
  /* A probe must see the state now, never a cached answer. */
  if (ok == MHD_YES)
    ok = MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
  if (ok == MHD_YES && allow)
    ok = MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow);
  if (ok == MHD_YES)
    ok = MHD_queue_response(conn, status, r);
  MHD_destroy_response(r);
  return ok;
}

static enum MHD_Result gl__serve_metrics(struct gl_metrics *m, struct MHD_Connection *conn) {
  char *text;
  size_t len;
  if (gl_metrics_render(m, &text, &len) != GL_OK)
    return MHD_NO; /* out of memory: closing the connection is all we can do */
  struct MHD_Response *r = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
  if (!r) {
    free(text);
    return MHD_NO;
  }
  enum MHD_Result ok = MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
                                               "text/plain; version=0.0.4; charset=utf-8");
  if (ok == MHD_YES)
    ok = MHD_queue_response(conn, MHD_HTTP_OK, r);
  MHD_destroy_response(r);
  return ok;
}

/* Runs on libmicrohttpd's thread. Every request is answered on its first
 * call: none of ours has a body worth reading, and libmicrohttpd closes the
 * connection itself when a body was sent but not consumed. */
static enum MHD_Result gl__on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                      const char *method, const char *version,
                                      const char *upload_data, size_t *upload_data_size,
                                      void **con_cls) {
  struct gl_metrics *m = cls;
  (void)version;
  (void)upload_data;
  (void)upload_data_size;
  (void)con_cls;
  bool known =
      strcmp(url, "/metrics") == 0 || strcmp(url, "/healthz") == 0 || strcmp(url, "/readyz") == 0;
  if (!known)
    return gl__reply(conn, MHD_HTTP_NOT_FOUND, "not found\n", NULL);
  if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
    return gl__reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed\n", "GET, HEAD");

  if (strcmp(url, "/metrics") == 0)
    return gl__serve_metrics(m, conn);
  if (strcmp(url, "/healthz") == 0) {
    uint64_t last = atomic_load_explicit(&m->heartbeat_ms, memory_order_relaxed);
    uint64_t now = gl__mono_ms();
    uint64_t age = now > last ? now - last : 0;
    if (age > atomic_load(&m->stall_ms))
      return gl__reply(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "event loop stalled\n", NULL);
    return gl__reply(conn, MHD_HTTP_OK, "ok\n", NULL);
  }
  if (atomic_load(&m->ready))
    return gl__reply(conn, MHD_HTTP_OK, "ready\n", NULL);
  return gl__reply(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "not ready\n", NULL);
}

static void gl__on_mhd_log(void *cls, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

/* libmicrohttpd's own complaints (a failed accept, a malformed request)
 * belong in the daemon's log, not on a bare stderr. */
static void gl__on_mhd_log(void *cls, const char *fmt, va_list ap) {
  struct gl_metrics *m = cls;
  char line[512], safe[1024];
  /* Most messages are about one connection, so a client can cause them,
   * and every slow connection cut short adds one: at most
   * GL_METRICS_LOG_BURST a minute, then a count of the rest. */
  uint64_t now = gl__mono_ms();
  if (now - m->log_window_ms >= 60000u) {
    if (m->log_dropped)
      GL_LOG_W("metrics http: %u more messages in the last minute not logged", m->log_dropped);
    m->log_window_ms = now;
    m->log_count = m->log_dropped = 0;
  }
  if (m->log_count >= GL_METRICS_LOG_BURST) {
    m->log_dropped++;
    return;
  }
  m->log_count++;
  vsnprintf(line, sizeof line, fmt, ap);
  size_t n = strlen(line);
  while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
    line[--n] = '\0';
  /* A message may quote what a client sent. */
  gl_log_escape(safe, sizeof safe, line);
  GL_LOG_W("metrics http: %s", safe);
}

/* ---- connection deadlines (HTTP thread) ------------------------------------ */

static void gl__conn_unlink(struct gl_metrics *m, struct gl_http_conn *hc) {
  if (hc->prev)
    hc->prev->next = hc->next;
  else
    m->conn_head = hc->next;
  if (hc->next)
    hc->next->prev = hc->prev;
  else
    m->conn_tail = hc->prev;
  hc->prev = hc->next = NULL;
}

/* Appends with a fresh deadline: the list stays sorted by deadline. */
static void gl__conn_append(struct gl_metrics *m, struct gl_http_conn *hc) {
  hc->deadline_ms = gl__mono_ms() + GL_METRICS_REQUEST_DEADLINE_MS;
  hc->prev = m->conn_tail;
  hc->next = NULL;
  if (m->conn_tail)
    m->conn_tail->next = hc;
  else
    m->conn_head = hc;
  m->conn_tail = hc;
}

/* Ends a connection from outside libmicrohttpd, which has no call for it:
 * after shutdown its next read sees the end and it closes the connection
 * (and says so through gl__on_connection, which frees hc). The descriptor
 * is still open here: it is closed only after that callback. */
static void gl__conn_cut(struct gl_metrics *m, struct gl_http_conn *hc, const char *why) {
  if (hc->cut)
    return;
  hc->cut = true;
  m->n_conns--;
  shutdown(hc->fd, SHUT_RDWR);
  GL_LOG_D("metrics http: closing a connection: %s", why);
}

/* Runs on the HTTP thread, inside MHD_run. */
static void gl__on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                              enum MHD_ConnectionNotificationCode toe) {
  struct gl_metrics *m = cls;
  struct gl_http_conn *hc = *socket_context;
  if (toe == MHD_CONNECTION_NOTIFY_CLOSED) {
    if (hc) {
      if (!hc->cut)
        m->n_conns--;
      gl__conn_unlink(m, hc);
      free(hc);
      *socket_context = NULL;
    }
    return;
  }
  const union MHD_ConnectionInfo *ci =
      MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
  hc = calloc(1, sizeof *hc);
  if (!hc || !ci) {
    free(hc); /* a connection that cannot be watched is not served */
    if (ci)
      shutdown(ci->connect_fd, SHUT_RDWR);
    return;
  }
  hc->fd = ci->connect_fd;
  gl__conn_append(m, hc);
  m->n_conns++;
  *socket_context = hc;
  /* Over the limit: the connection nearest its deadline goes, which is the
   * one that has been waiting longest for its request. */
  for (struct gl_http_conn *o = m->conn_head; o && m->n_conns > GL_METRICS_MAX_CONNS; o = o->next)
    if (o != hc)
      gl__conn_cut(m, o, "over the connection limit, and the oldest");
}

/* A request was answered (or abandoned): a kept-alive connection's next
 * request has a deadline of its own. Runs on the HTTP thread. */
static void gl__on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                             enum MHD_RequestTerminationCode toe) {
  struct gl_metrics *m = cls;
  (void)con_cls;
  (void)toe;
  const union MHD_ConnectionInfo *ci =
      MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
  struct gl_http_conn *hc = ci ? ci->socket_context : NULL;
  if (!hc || hc->cut)
    return;
  gl__conn_unlink(m, hc);
  gl__conn_append(m, hc);
}

/* Cuts the connections past their deadline; returns the milliseconds until
 * the next deadline, at most max_ms. */
static uint64_t gl__conn_sweep(struct gl_metrics *m, uint64_t max_ms) {
  uint64_t now = gl__mono_ms();
  for (struct gl_http_conn *hc = m->conn_head; hc; hc = hc->next) {
    if (hc->cut)
      continue;
    if (hc->deadline_ms > now)
      return hc->deadline_ms - now < max_ms ? hc->deadline_ms - now : max_ms;
    gl__conn_cut(m, hc, "its request took too long");
  }
  return max_ms;
}

static void *gl__http_thread(void *arg) {
  struct gl_metrics *m = arg;
  for (;;) {
    uint64_t wait_ms = gl__conn_sweep(m, 1000);
    MHD_UNSIGNED_LONG_LONG mhd_ms;
    if (MHD_get_timeout(m->httpd, &mhd_ms) == MHD_YES && mhd_ms < wait_ms)
      wait_ms = mhd_ms;
    struct pollfd pfd[2] = {{.fd = m->epoll_fd, .events = POLLIN},
                            {.fd = m->wake[0], .events = POLLIN}};
    if (poll(pfd, 2, (int)wait_ms) < 0 && errno != EINTR) {
      GL_LOG_E("metrics http: poll: %s", strerror(errno));
      break;
    }
    if (pfd[1].revents)
      break; /* gl_metrics_destroy */
    MHD_run(m->httpd);
  }
  return NULL;
}

/* Binds and listens here rather than in libmicrohttpd, whose start failure
 * carries no reason: the caller gets errno's text ("Address already in use"). */
static int gl__listen(const char *text, const struct sockaddr_storage *ss, int *out, char *err,
                      size_t errlen) {
  socklen_t sl = ss->ss_family == AF_INET6 ? (socklen_t)sizeof(struct sockaddr_in6)
                                           : (socklen_t)sizeof(struct sockaddr_in);
  int one = 1;
  /* Non-blocking: a connection reset between poll and accept must not
   * block libmicrohttpd's thread in accept(). */
  int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    snprintf(err, errlen, "metrics %s: socket: %s", text, strerror(errno));
    return GL_EADDR;
  }
  /* A restart must not wait out TIME_WAIT connections of the last scrape. */
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (ss->ss_family == AF_INET6)
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  if (bind(fd, (const struct sockaddr *)ss, sl) != 0) {
    snprintf(err, errlen, "metrics %s: %s", text, strerror(errno));
    goto fail;
  }
  if (listen(fd, 64) != 0) {
    snprintf(err, errlen, "metrics %s: listen: %s", text, strerror(errno));
    goto fail;
  }
  *out = fd;
  return GL_OK;
fail:
  close(fd);
  return GL_EADDR;
}

int gl_metrics_create(const char *listen_addr, struct gl_metrics **out, char *err, size_t errlen) {
  struct sockaddr_storage ss;
  int fd = -1, rc;
  *out = NULL;
  if (errlen)
    err[0] = '\0';

  struct gl_metrics *m = calloc(1, sizeof *m);
  if (!m) {
    snprintf(err, errlen, "out of memory");
    return GL_ENOMEM;
  }
  /* C11 wants atomics initialised with atomic_init, not by calloc's zeros. */
  for (unsigned i = 0; i < GL_METRICS_FRAME__COUNT; i++)
    atomic_init(&m->frames[i], 0);
  for (unsigned h = 0; h < GL_METRICS_HIST__COUNT; h++) {
    for (unsigned i = 0; i <= GL_METRICS_LATENCY_BUCKETS; i++)
      atomic_init(&m->hist[h].bucket[i], 0);
    atomic_init(&m->hist[h].sum_us, 0);
  }
  for (unsigned i = 0; i <= GL_METRICS_BATCH_BUCKETS; i++)
    atomic_init(&m->batch.bucket[i], 0);
  atomic_init(&m->batch.sum, 0);
  atomic_init(&m->clients, 0);
  atomic_init(&m->in_flight, 0);
  atomic_init(&m->maps, 0);
  atomic_init(&m->heartbeat_ms, gl__mono_ms());
  atomic_init(&m->loop_lag_max_ms, 0);
  atomic_init(&m->stall_ms, GL_METRICS_STALL_MS_DEFAULT);
  atomic_init(&m->ready, false);
  snprintf(m->backend, sizeof m->backend, "none");
  m->start_time_cs = gl__process_start_cs();
  m->wake[0] = m->wake[1] = -1;
  if (pthread_mutex_init(&m->backend_lock, NULL) != 0) {
    snprintf(err, errlen, "out of memory");
    rc = GL_ENOMEM;
    goto fail_mutex;
  }

  if (!listen_addr || !listen_addr[0]) {
    *out = m;
    return GL_OK;
  }
  if (gl_addr_parse(listen_addr, &ss) != GL_OK) {
    snprintf(err, errlen, "metrics listen address '%s': expected IPv4:port or [IPv6]:port",
             listen_addr);
    rc = GL_EADDR;
    goto fail_addr;
  }
  rc = gl__listen(listen_addr, &ss, &fd, err, errlen);
  if (rc != GL_OK)
    goto fail_addr;
  m->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                           : ((struct sockaddr_in *)&ss)->sin_port);

  /* External polling on epoll, by our own thread (gl__http_thread): it
   * accepts and answers, so a slow scrape never touches the libuv loop, and
   * it enforces the request deadline between two runs of libmicrohttpd. The
   * logger comes first so that start-up messages go to our log too. */
  unsigned flags = MHD_USE_EPOLL | MHD_USE_ERROR_LOG;
  if (ss.ss_family == AF_INET6)
    flags |= MHD_USE_IPv6;
  if (pipe2(m->wake, O_CLOEXEC | O_NONBLOCK) != 0) {
    snprintf(err, errlen, "metrics %s: pipe: %s", listen_addr, strerror(errno));
    rc = GL_EIO;
    goto fail_httpd;
  }
  m->httpd = MHD_start_daemon(
      flags, 0, NULL, NULL, gl__on_request, m, MHD_OPTION_EXTERNAL_LOGGER, gl__on_mhd_log, m,
      MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd, MHD_OPTION_CONNECTION_LIMIT, GL_METRICS_HARD_CONNS,
      MHD_OPTION_CONNECTION_TIMEOUT, GL_METRICS_CONN_TIMEOUT_S, MHD_OPTION_NOTIFY_CONNECTION,
      gl__on_connection, m, MHD_OPTION_NOTIFY_COMPLETED, gl__on_completed, m, MHD_OPTION_END);
  if (!m->httpd) {
    snprintf(err, errlen, "metrics %s: cannot start the HTTP server", listen_addr);
    rc = GL_EIO;
    goto fail_httpd;
  }
  /* From here the daemon owns fd and closes it in MHD_stop_daemon. */
  fd = -1;
  const union MHD_DaemonInfo *di = MHD_get_daemon_info(m->httpd, MHD_DAEMON_INFO_EPOLL_FD);
  m->epoll_fd = di ? di->epoll_fd : -1;
  if (m->epoll_fd < 0) {
    snprintf(err, errlen, "metrics %s: libmicrohttpd has no epoll descriptor", listen_addr);
    rc = GL_EIO;
    goto fail_httpd;
  }
  int e = pthread_create(&m->thread, NULL, gl__http_thread, m);
  if (e != 0) {
    snprintf(err, errlen, "metrics %s: thread: %s", listen_addr, strerror(e));
    rc = GL_EIO;
    goto fail_httpd;
  }
  m->thread_started = true;
  GL_LOG_I("metrics on http://%s/metrics", listen_addr);
  *out = m;
  return GL_OK;

fail_httpd:
  if (m->httpd)
    MHD_stop_daemon(m->httpd);
  if (fd >= 0)
    close(fd);
  for (int i = 0; i < 2; i++)
    if (m->wake[i] >= 0)
      close(m->wake[i]);
fail_addr:
  pthread_mutex_destroy(&m->backend_lock);
fail_mutex:
  free(m);
  return rc;
}

void gl_metrics_destroy(struct gl_metrics *m) {
  if (!m)
    return;
  if (m->thread_started) {
    ssize_t w = write(m->wake[1], "x", 1); /* a new pipe has room for it */
    (void)w;
    pthread_join(m->thread, NULL);
  }
  /* Closes the listen socket and every connection, whose callbacks free
   * the list on this thread now that the HTTP thread is gone. */
  if (m->httpd)
    MHD_stop_daemon(m->httpd);
  for (int i = 0; i < 2; i++)
    if (m->wake[i] >= 0)
      close(m->wake[i]);
  while (m->conn_head) { /* none left, unless libmicrohttpd did not say */
    struct gl_http_conn *hc = m->conn_head;
    gl__conn_unlink(m, hc);
    free(hc);
  }
  pthread_mutex_destroy(&m->backend_lock);
  free(m);
}
