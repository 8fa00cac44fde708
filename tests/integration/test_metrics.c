/* The metrics endpoint of geolocd on its own: a gl_metrics server on a
 * loopback port, updated from several threads at once, read back over real
 * HTTP/1.1 requests written by hand, and the exposition text parsed and
 * checked value by value. No daemon is started. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "harness.h"
#include "metrics.h"

#define N_THREADS 8
#define N_ITERS 100000

/* Workers pause halfway until the main thread has scraped the frozen state,
 * then race the scrapes that follow. */
static atomic_int g_halfway, g_done;
static atomic_bool g_go;

/* ---- HTTP client ------------------------------------------------------------ */

struct http_reply {
  int status;
  char *head; /* status line and headers */
  char *body;
  size_t body_len;
};

static void http_reply_free(struct http_reply *r) {
  free(r->head);
  free(r->body);
  memset(r, 0, sizeof *r);
}

/* Value of header name in head (case-insensitive name), into out; false if absent. */
static bool http_header(const struct http_reply *r, const char *name, char *out, size_t len) {
  size_t nl = strlen(name);
  for (const char *p = strstr(r->head, "\r\n"); p; p = strstr(p, "\r\n")) {
    p += 2;
    if (strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
      const char *v = p + nl + 1;
      while (*v == ' ')
        v++;
      const char *e = strstr(v, "\r\n");
      size_t n = e ? (size_t)(e - v) : strlen(v);
      if (n >= len)
        n = len - 1;
      memcpy(out, v, n);
      out[n] = '\0';
      return true;
    }
  }
  return false;
}

/* Sends "METHOD path HTTP/1.1" with Connection: close and reads the reply
 * until the server closes. Fails the test on any socket error. */
static void http_request(uint16_t port, const char *method, const char *path,
                         struct http_reply *r) {
  memset(r, 0, sizeof *r);
  int fd = gl_test_raw_connect(port, 0);
  GL_CHECKF(fd >= 0, "connect 127.0.0.1:%u: %s", (unsigned)port, strerror(errno));
  struct timeval tv = {.tv_sec = GL_TEST_WAIT_MS / 1000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);

  char req[512];
  int n = snprintf(req, sizeof req,
                   "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%u\r\nUser-Agent: test_metrics\r\n"
                   "Accept: */*\r\nConnection: close\r\n%s\r\n",
                   method, path, (unsigned)port,
                   strcmp(method, "POST") == 0 ? "Content-Length: 0\r\n" : "");
  GL_CHECK(n > 0 && (size_t)n < sizeof req);
  for (size_t off = 0; off < (size_t)n;) {
    ssize_t w = send(fd, req + off, (size_t)n - off, MSG_NOSIGNAL);
    GL_CHECKF(w > 0, "send %s %s: %s", method, path, strerror(errno));
    off += (size_t)w;
  }

  size_t cap = 65536, len = 0;
  char *buf = malloc(cap);
  GL_CHECK(buf);
  for (;;) {
    if (cap - len < 4096) {
      cap *= 2;
      buf = realloc(buf, cap);
      GL_CHECK(buf);
    }
    ssize_t got = recv(fd, buf + len, cap - len - 1, 0);
    if (got == 0)
      break;
    GL_CHECKF(got > 0, "recv %s %s: %s", method, path, strerror(errno));
    len += (size_t)got;
  }
  close(fd);
  buf[len] = '\0';

  char *sep = strstr(buf, "\r\n\r\n");
  GL_CHECKF(sep, "%s %s: no end of headers in %zu bytes", method, path, len);
  size_t head_len = (size_t)(sep - buf);
  r->head = strndup(buf, head_len);
  r->body_len = len - head_len - 4;
  r->body = malloc(r->body_len + 1);
  GL_CHECK(r->head && r->body);
  memcpy(r->body, sep + 4, r->body_len);
  r->body[r->body_len] = '\0';
  free(buf);

  GL_CHECKF(sscanf(r->head, "HTTP/1.1 %d", &r->status) == 1, "%s %s: status line '%.40s'", method,
            path, r->head);
  char cl[32];
  /* The replies carry Content-Length (never chunked), and a HEAD reply
   * announces the GET length without sending a body. */
  GL_CHECKF(http_header(r, "Content-Length", cl, sizeof cl), "%s %s: no Content-Length", method,
            path);
  if (strcmp(method, "HEAD") == 0)
    GL_CHECKF(r->body_len == 0, "HEAD %s: %zu body bytes", path, r->body_len);
  else
    GL_CHECKF(strtoull(cl, NULL, 10) == r->body_len, "%s %s: Content-Length %s, body %zu", method,
              path, cl, r->body_len);
}

static void expect_reply(uint16_t port, const char *method, const char *path, int status,
                         const char *body) {
  struct http_reply r;
  http_request(port, method, path, &r);
  GL_CHECKF(r.status == status, "%s %s: status %d, expected %d", method, path, r.status, status);
  if (body)
    GL_CHECKF(strcmp(r.body, body) == 0, "%s %s: body '%s', expected '%s'", method, path, r.body,
              body);
  http_reply_free(&r);
}

/* ---- exposition parsing ------------------------------------------------------ */

struct sample {
  char key[160]; /* name{labels} exactly as written */
  char value[64];
};

struct exposition {
  struct sample *s;
  size_t n;
  char *text; /* parsed in place */
  char *raw;  /* as received */
};

/* Parses every sample line; checks that each metric name is announced by a
 * "# TYPE" line first and that comment lines are well formed. */
static void parse_exposition(const char *text, struct exposition *x) {
  memset(x, 0, sizeof *x);
  x->text = strdup(text);
  x->raw = strdup(text);
  GL_CHECK(x->text && x->raw);
  size_t cap = 256;
  x->s = calloc(cap, sizeof *x->s);
  GL_CHECK(x->s);
  char typed[64][64];
  int n_typed = 0;
  GL_CHECKF(text[0] && text[strlen(text) - 1] == '\n', "exposition does not end with a newline");
  for (char *line = x->text, *next; line && *line; line = next) {
    next = strchr(line, '\n');
    GL_CHECK(next);
    *next++ = '\0';
    if (line[0] == '#') {
      char kind[16], name[64], rest[128];
      GL_CHECKF(sscanf(line, "# %15s %63s %127[^\n]", kind, name, rest) == 3, "comment '%s'", line);
      GL_CHECKF(strcmp(kind, "HELP") == 0 || strcmp(kind, "TYPE") == 0, "comment '%s'", line);
      if (strcmp(kind, "TYPE") == 0) {
        GL_CHECKF(strcmp(rest, "counter") == 0 || strcmp(rest, "gauge") == 0 ||
                      strcmp(rest, "histogram") == 0,
                  "type '%s'", line);
        GL_CHECK(n_typed < 64);
        snprintf(typed[n_typed++], sizeof typed[0], "%s", name);
      }
      continue;
    }
    if (x->n == cap) {
      cap *= 2;
      x->s = realloc(x->s, cap * sizeof *x->s);
      GL_CHECK(x->s);
    }
    struct sample *s = &x->s[x->n++];
    char *sp = strrchr(line, ' ');
    GL_CHECKF(sp, "sample line '%s'", line);
    *sp = '\0';
    snprintf(s->key, sizeof s->key, "%s", line);
    snprintf(s->value, sizeof s->value, "%s", sp + 1);
    char *end;
    strtod(s->value, &end);
    GL_CHECKF(*end == '\0' && end != s->value, "value of %s: '%s'", s->key, s->value);
    /* The family is the name up to '{', less a histogram suffix. */
    char fam[160];
    snprintf(fam, sizeof fam, "%s", s->key);
    fam[strcspn(fam, "{")] = '\0';
    bool ok = false;
    for (int i = 0; i < n_typed && !ok; i++) {
      size_t tl = strlen(typed[i]);
      ok = strcmp(fam, typed[i]) == 0 ||
           (strncmp(fam, typed[i], tl) == 0 &&
            (strcmp(fam + tl, "_bucket") == 0 || strcmp(fam + tl, "_sum") == 0 ||
             strcmp(fam + tl, "_count") == 0));
    }
    GL_CHECKF(ok, "sample %s before its # TYPE line", s->key);
  }
}

static void exposition_free(struct exposition *x) {
  free(x->s);
  free(x->text);
  free(x->raw);
  memset(x, 0, sizeof *x);
}

static const char *sample(const struct exposition *x, const char *key) {
  for (size_t i = 0; i < x->n; i++)
    if (strcmp(x->s[i].key, key) == 0)
      return x->s[i].value;
  GL_FAIL("no sample %s in the exposition", key);
}

static uint64_t sample_u64(const struct exposition *x, const char *key) {
  const char *v = sample(x, key);
  char *end;
  unsigned long long u = strtoull(v, &end, 10);
  GL_CHECKF(*end == '\0', "%s = '%s': not an integer", key, v);
  return u;
}

static void expect_u64(const struct exposition *x, const char *key, uint64_t want) {
  uint64_t got = sample_u64(x, key);
  GL_CHECKF(got == want, "%s = %" PRIu64 ", expected %" PRIu64, key, got, want);
}

static void fetch_metrics(uint16_t port, struct exposition *x) {
  struct http_reply r;
  http_request(port, "GET", "/metrics", &r);
  GL_CHECKF(r.status == 200, "GET /metrics: %d", r.status);
  char ct[128];
  GL_CHECK(http_header(&r, "Content-Type", ct, sizeof ct));
  GL_CHECKF(strncmp(ct, "text/plain; version=0.0.4", 25) == 0, "Content-Type '%s'", ct);
  parse_exposition(r.body, x);
  http_reply_free(&r);
}

/* Checks a histogram family: buckets in order of le, cumulative (never
 * decreasing), the +Inf bucket equal to _count. Returns the buckets in
 * cum[] (n_le + 1 entries, the last +Inf). */
static void check_histogram(const struct exposition *x, const char *name, const char *const *le,
                            int n_le, uint64_t *cum) {
  char key[160];
  uint64_t prev = 0;
  for (int i = 0; i <= n_le; i++) {
    snprintf(key, sizeof key, "%s_bucket{le=\"%s\"}", name, i < n_le ? le[i] : "+Inf");
    cum[i] = sample_u64(x, key);
    GL_CHECKF(cum[i] >= prev, "%s: %" PRIu64 " after %" PRIu64 ": not cumulative", key, cum[i],
              prev);
    prev = cum[i];
  }
  snprintf(key, sizeof key, "%s_count", name);
  uint64_t count = sample_u64(x, key);
  GL_CHECKF(count == cum[n_le], "%s = %" PRIu64 ", +Inf bucket %" PRIu64, key, count, cum[n_le]);
}

/* ---- the workload -------------------------------------------------------------- */

static const char *const k_lat_le[GL_METRICS_LATENCY_BUCKETS] = {
    "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025",
    "0.05",   "0.1",     "0.25",   "0.5",   "1",      "2.5",   "5",    "10",
};
static const char *const k_batch_le[GL_METRICS_BATCH_BUCKETS] = {"1",  "2",  "4",   "8",  "16",
                                                                 "32", "64", "128", "256"};
static const char *const k_hist_name[GL_METRICS_HIST__COUNT] = {
    [GL_METRICS_QUEUE] = "geoloc_queue_seconds",
    [GL_METRICS_INFER] = "geoloc_infer_seconds",
    [GL_METRICS_SEARCH] = "geoloc_search_seconds",
    [GL_METRICS_DECODE] = "geoloc_decode_seconds",
};
static const char *const k_status[GL_METRICS_FRAME__COUNT] = {
    [GL_METRICS_FRAME_OK] = "ok",
    [GL_METRICS_FRAME_NO_MATCH] = "no_match",
    [GL_METRICS_FRAME_DROPPED_STALE] = "dropped_stale",
    [GL_METRICS_FRAME_BUSY] = "busy",
    [GL_METRICS_FRAME_BAD_IMAGE] = "bad_image",
    [GL_METRICS_FRAME_UNAVAILABLE] = "unavailable",
    [GL_METRICS_FRAME_ERROR] = "error",
    [GL_METRICS_FRAME_ABANDONED] = "abandoned",
};

/* Durations right on, just past and far from the bucket bounds, so that an
 * off-by-one in "le" (less than or EQUAL) shows. */
static const uint64_t k_durations_us[] = {
    0,       1,       99,      100,     101,      250,      251,      999,
    1000,    1001,    7777,    10000,   99999,    100000,   123456,   999999,
    1000000, 2500000, 2500001, 9999999, 10000000, 10000001, 60000000,
};
#define N_DURATIONS (sizeof k_durations_us / sizeof k_durations_us[0])
static const uint32_t k_batches[] = {0, 1, 2, 3, 4, 5, 8, 9, 16, 31, 64, 100, 128, 256, 257, 1000};
#define N_BATCHES (sizeof k_batches / sizeof k_batches[0])

struct worker {
  pthread_t tid;
  struct gl_metrics *m;
  int index;
};

/* What worker i does at step k: fully determined, so the totals can be
 * computed afterwards without sharing anything with the workers. */
static unsigned step_status(int i, int k) { return (unsigned)(i + k) % GL_METRICS_FRAME__COUNT; }
static unsigned step_hist(int i, int k) { return (unsigned)(i * 7 + k) % GL_METRICS_HIST__COUNT; }
static uint64_t step_duration(int i, int k) {
  return k_durations_us[(unsigned)(i * 3 + k) % N_DURATIONS];
}
static uint32_t step_batch(int i, int k) { return k_batches[(unsigned)(i + k * 5) % N_BATCHES]; }

static void *worker_main(void *arg) {
  struct worker *w = arg;
  for (int k = 0; k < N_ITERS; k++) {
    if (k == N_ITERS / 2) {
      atomic_fetch_add(&g_halfway, 1);
      while (!atomic_load(&g_go))
        gl_test_sleep_ms(1);
    }
    gl_metrics_add_in_flight(w->m, 1);
    gl_metrics_frame(w->m, (enum gl_metrics_status)step_status(w->index, k));
    gl_metrics_observe(w->m, (enum gl_metrics_hist)step_hist(w->index, k),
                       step_duration(w->index, k));
    if (k % 4 == 0)
      gl_metrics_batch(w->m, step_batch(w->index, k));
    /* Every thread leaves one frame in flight per 1000 steps. */
    if (k % 1000 != 0)
      gl_metrics_add_in_flight(w->m, -1);
  }
  atomic_fetch_add(&g_done, 1);
  return NULL;
}

static unsigned lat_bucket(uint64_t us) {
  unsigned b = 0;
  while (b < GL_METRICS_LATENCY_BUCKETS && us > gl_metrics_latency_bounds_us[b])
    b++;
  return b;
}

static unsigned batch_bucket(uint32_t n) {
  if (n == 0)
    n = 1;
  unsigned b = 0;
  while (b < GL_METRICS_BATCH_BUCKETS && n > (1u << b))
    b++;
  return b;
}

/* ---- scenarios ----------------------------------------------------------------- */

/* Creates on a free loopback port; another process may take the port between
 * picking and binding, hence the retries. */
static struct gl_metrics *create_on_free_port(uint16_t *port) {
  char addr[64], err[256];
  for (int attempt = 0; attempt < 10; attempt++) {
    *port = gl_test_free_port();
    snprintf(addr, sizeof addr, "127.0.0.1:%u", (unsigned)*port);
    struct gl_metrics *m = NULL;
    int rc = gl_metrics_create(addr, &m, err, sizeof err);
    if (rc == GL_OK) {
      GL_CHECK(m);
      GL_CHECK(gl_metrics_port(m) == *port);
      return m;
    }
    GL_CHECKF(rc == GL_EADDR, "gl_metrics_create(%s): %s: %s", addr, gl_err_name(rc), err);
    gl_test_logf("port %u taken (%s), trying another", (unsigned)*port, err);
  }
  GL_FAIL("no free port after 10 attempts");
}

static void test_create_errors(uint16_t busy_port) {
  struct gl_metrics *m = (struct gl_metrics *)1;
  char err[256], addr[64];
  int rc = gl_metrics_create("localhost:9100", &m, err, sizeof err);
  GL_CHECKF(rc == GL_EADDR && m == NULL, "host name: %s", gl_err_name(rc));
  GL_CHECKF(strstr(err, "localhost:9100"), "message '%s'", err);
  rc = gl_metrics_create("127.0.0.1", &m, err, sizeof err);
  GL_CHECKF(rc == GL_EADDR && m == NULL, "no port: %s", gl_err_name(rc));
  rc = gl_metrics_create("127.0.0.1:0", &m, err, sizeof err);
  GL_CHECKF(rc == GL_EADDR && m == NULL, "port 0: %s", gl_err_name(rc));

  /* The port the running server holds: the reason must say so. */
  snprintf(addr, sizeof addr, "127.0.0.1:%u", (unsigned)busy_port);
  rc = gl_metrics_create(addr, &m, err, sizeof err);
  GL_CHECKF(rc == GL_EADDR && m == NULL, "busy port: %s", gl_err_name(rc));
  GL_CHECKF(strstr(err, "in use"), "busy port message '%s'", err);

  /* No address: the registry alone, no server. */
  rc = gl_metrics_create("", &m, err, sizeof err);
  GL_CHECKF(rc == GL_OK && m && gl_metrics_port(m) == 0, "empty address: %s", gl_err_name(rc));
  gl_metrics_frame(m, GL_METRICS_FRAME_OK);
  char *text;
  size_t len;
  GL_CHECK(gl_metrics_render(m, &text, &len) == GL_OK && strlen(text) == len);
  GL_CHECK(strstr(text, "geoloc_frames_total{status=\"ok\"} 1\n"));
  free(text);
  gl_metrics_destroy(m);

  /* Switched off entirely: every call is a no-op on NULL. */
  gl_metrics_frame(NULL, GL_METRICS_FRAME_OK);
  gl_metrics_observe(NULL, GL_METRICS_INFER, 5);
  gl_metrics_batch(NULL, 3);
  gl_metrics_set_clients(NULL, 1);
  gl_metrics_add_in_flight(NULL, 1);
  gl_metrics_set_maps(NULL, 1);
  gl_metrics_set_backend(NULL, "cuda");
  gl_metrics_heartbeat(NULL);
  gl_metrics_set_stall_timeout(NULL, 1);
  gl_metrics_set_ready(NULL, true);
  gl_metrics_destroy(NULL);
  GL_CHECK(gl_metrics_port(NULL) == 0);
}

static void test_values(struct gl_metrics *m, uint16_t port) {
  struct worker w[N_THREADS];
  for (int i = 0; i < N_THREADS; i++) {
    w[i] = (struct worker){.m = m, .index = i};
    GL_CHECK(pthread_create(&w[i].tid, NULL, worker_main, &w[i]) == 0);
  }
  /* Halfway, every worker is parked: the totals must be exactly half. */
  uint64_t t0 = gl_test_mono_ms();
  while (atomic_load(&g_halfway) < N_THREADS) {
    GL_CHECKF(gl_test_mono_ms() - t0 < 60000, "workers did not reach halfway");
    gl_test_sleep_ms(1);
  }
  struct exposition x;
  char key[160], want[64];
  uint64_t cum[GL_METRICS_LATENCY_BUCKETS + 1];
  fetch_metrics(port, &x);
  uint64_t half = 0;
  for (int s = 0; s < GL_METRICS_FRAME__COUNT; s++) {
    snprintf(key, sizeof key, "geoloc_frames_total{status=\"%s\"}", k_status[s]);
    half += sample_u64(&x, key);
  }
  GL_CHECKF(half == (uint64_t)N_THREADS * (N_ITERS / 2), "frames halfway: %" PRIu64, half);
  exposition_free(&x);

  /* Scrapes racing the workers: every exposition must still be well formed,
   * with cumulative buckets and _count == +Inf. */
  atomic_store(&g_go, true);
  int racing = 0;
  do {
    fetch_metrics(port, &x);
    for (int h = 0; h < GL_METRICS_HIST__COUNT; h++)
      check_histogram(&x, k_hist_name[h], k_lat_le, GL_METRICS_LATENCY_BUCKETS, cum);
    check_histogram(&x, "geoloc_batch_size", k_batch_le, GL_METRICS_BATCH_BUCKETS, cum);
    exposition_free(&x);
    racing++;
  } while (atomic_load(&g_done) < N_THREADS);
  gl_test_logf("%d scrape(s) raced the workers", racing);
  for (int i = 0; i < N_THREADS; i++)
    GL_CHECK(pthread_join(w[i].tid, NULL) == 0);

  /* What the workers must have added up to. */
  uint64_t frames[GL_METRICS_FRAME__COUNT] = {0};
  uint64_t lat[GL_METRICS_HIST__COUNT][GL_METRICS_LATENCY_BUCKETS + 1] = {{0}};
  uint64_t lat_sum[GL_METRICS_HIST__COUNT] = {0}, lat_n[GL_METRICS_HIST__COUNT] = {0};
  uint64_t batch[GL_METRICS_BATCH_BUCKETS + 1] = {0}, batch_sum = 0, batch_n = 0;
  int64_t in_flight = 0;
  for (int i = 0; i < N_THREADS; i++)
    for (int k = 0; k < N_ITERS; k++) {
      frames[step_status(i, k)]++;
      unsigned h = step_hist(i, k);
      uint64_t us = step_duration(i, k);
      lat[h][lat_bucket(us)]++;
      lat_sum[h] += us;
      lat_n[h]++;
      if (k % 4 == 0) {
        uint32_t n = step_batch(i, k);
        batch[batch_bucket(n)]++;
        batch_sum += n ? n : 1;
        batch_n++;
      }
      if (k % 1000 == 0)
        in_flight++;
    }

  gl_metrics_set_clients(m, 5);
  gl_metrics_set_maps(m, 3);
  gl_metrics_set_backend(m, "cuda");

  fetch_metrics(port, &x);
  uint64_t total = 0;
  for (int s = 0; s < GL_METRICS_FRAME__COUNT; s++) {
    snprintf(key, sizeof key, "geoloc_frames_total{status=\"%s\"}", k_status[s]);
    expect_u64(&x, key, frames[s]);
    total += frames[s];
  }
  GL_CHECK(total == (uint64_t)N_THREADS * N_ITERS);

  for (int h = 0; h < GL_METRICS_HIST__COUNT; h++) {
    uint64_t want_cum = 0;
    check_histogram(&x, k_hist_name[h], k_lat_le, GL_METRICS_LATENCY_BUCKETS, cum);
    for (int b = 0; b <= GL_METRICS_LATENCY_BUCKETS; b++) {
      want_cum += lat[h][b];
      GL_CHECKF(cum[b] == want_cum, "%s bucket %d: %" PRIu64 ", expected %" PRIu64, k_hist_name[h],
                b, cum[b], want_cum);
    }
    snprintf(key, sizeof key, "%s_count", k_hist_name[h]);
    expect_u64(&x, key, lat_n[h]);
    snprintf(key, sizeof key, "%s_sum", k_hist_name[h]);
    snprintf(want, sizeof want, "%" PRIu64 ".%06" PRIu64, lat_sum[h] / 1000000u,
             lat_sum[h] % 1000000u);
    GL_CHECKF(strcmp(sample(&x, key), want) == 0, "%s = %s, expected %s", key, sample(&x, key),
              want);
  }

  uint64_t want_cum = 0;
  check_histogram(&x, "geoloc_batch_size", k_batch_le, GL_METRICS_BATCH_BUCKETS, cum);
  for (int b = 0; b <= GL_METRICS_BATCH_BUCKETS; b++) {
    want_cum += batch[b];
    GL_CHECKF(cum[b] == want_cum, "batch bucket %d: %" PRIu64 ", expected %" PRIu64, b, cum[b],
              want_cum);
  }
  expect_u64(&x, "geoloc_batch_size_count", batch_n);
  expect_u64(&x, "geoloc_batch_size_sum", batch_sum);

  GL_CHECKF(strtoll(sample(&x, "geoloc_frames_in_flight"), NULL, 10) == in_flight,
            "in flight %s, expected %" PRId64, sample(&x, "geoloc_frames_in_flight"), in_flight);
  expect_u64(&x, "geoloc_clients", 5);
  expect_u64(&x, "geoloc_maps", 3);
  expect_u64(&x, "geoloc_backend_info{backend=\"cuda\"}", 1);
  snprintf(key, sizeof key, "geoloc_build_info{version=\"%s\",protocol=\"%d\"}", GL_VERSION,
           GL_PROTOCOL_VERSION);
  expect_u64(&x, key, 1);
  double start = strtod(sample(&x, "process_start_time_seconds"), NULL);
  double now = (double)gl_test_now_us() / 1e6;
  GL_CHECKF(start <= now + 1 && start > now - 3600, "process_start_time_seconds %.2f, now %.2f",
            start, now);
  static const char *const families[] = {
      "# TYPE geoloc_frames_total counter\n",
      "# TYPE geoloc_queue_seconds histogram\n",
      "# TYPE geoloc_infer_seconds histogram\n",
      "# TYPE geoloc_search_seconds histogram\n",
      "# TYPE geoloc_decode_seconds histogram\n",
      "# TYPE geoloc_batch_size histogram\n",
      "# TYPE geoloc_clients gauge\n",
      "# TYPE geoloc_frames_in_flight gauge\n",
      "# TYPE geoloc_backend_info gauge\n",
      "# TYPE geoloc_build_info gauge\n",
      "# TYPE geoloc_maps gauge\n",
      "# TYPE process_start_time_seconds gauge\n",
      "# HELP geoloc_frames_total ",
  };
  for (size_t i = 0; i < sizeof families / sizeof families[0]; i++)
    GL_CHECKF(strstr(x.raw, families[i]), "no line '%s'", families[i]);
  exposition_free(&x);

  /* Label values are escaped: a backend name with a quote, a backslash and a
   * newline still makes one well-formed line. */
  gl_metrics_set_backend(m, "a\"b\\c\nd");
  fetch_metrics(port, &x);
  expect_u64(&x, "geoloc_backend_info{backend=\"a\\\"b\\\\c\\nd\"}", 1);
  exposition_free(&x);
  gl_metrics_set_backend(m, NULL);
  fetch_metrics(port, &x);
  expect_u64(&x, "geoloc_backend_info{backend=\"none\"}", 1);
  exposition_free(&x);

  /* HEAD: headers of the GET, no body. */
  struct http_reply r;
  http_request(port, "HEAD", "/metrics", &r);
  GL_CHECKF(r.status == 200, "HEAD /metrics: %d", r.status);
  http_reply_free(&r);
}

static void test_probes(struct gl_metrics *m, uint16_t port) {
  /* Ready only once the daemon says so. */
  expect_reply(port, "GET", "/readyz", 503, "not ready\n");
  gl_metrics_set_ready(m, true);
  expect_reply(port, "GET", "/readyz", 200, "ready\n");
  expect_reply(port, "HEAD", "/readyz", 200, NULL);
  gl_metrics_set_ready(m, false);
  expect_reply(port, "GET", "/readyz", 503, "not ready\n");
  gl_metrics_set_ready(m, true);
  expect_reply(port, "GET", "/readyz", 200, "ready\n");

  /* Alive while heartbeats come, stalled once they stop, alive again after.
   * Margins are wide: the suite runs on loaded machines and under ASan. */
  gl_metrics_set_stall_timeout(m, 1000);
  gl_metrics_heartbeat(m);
  expect_reply(port, "GET", "/healthz", 200, "ok\n");
  uint64_t t0 = gl_test_mono_ms();
  while (gl_test_mono_ms() - t0 < 1500) {
    gl_test_sleep_ms(100);
    gl_metrics_heartbeat(m);
  }
  expect_reply(port, "GET", "/healthz", 200, "ok\n");
  gl_test_sleep_ms(1500);
  expect_reply(port, "GET", "/healthz", 503, "event loop stalled\n");
  /* Readiness is a separate question: a stalled loop still says ready. */
  expect_reply(port, "GET", "/readyz", 200, "ready\n");
  gl_metrics_heartbeat(m);
  expect_reply(port, "GET", "/healthz", 200, "ok\n");
  gl_metrics_set_stall_timeout(m, 0); /* back to the 5 s default */
  gl_test_sleep_ms(1500);
  expect_reply(port, "GET", "/healthz", 200, "ok\n");

  /* Anything else. */
  expect_reply(port, "GET", "/", 404, NULL);
  expect_reply(port, "GET", "/nope", 404, NULL);
  expect_reply(port, "GET", "/metrics/", 404, NULL);
  expect_reply(port, "GET", "/metricsx", 404, NULL);
  /* A query string is not part of the path. */
  expect_reply(port, "GET", "/readyz?verbose=1", 200, "ready\n");
  const char *methods[] = {"POST", "PUT", "DELETE", "OPTIONS"};
  for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
    struct http_reply r;
    char allow[64];
    http_request(port, methods[i], "/metrics", &r);
    GL_CHECKF(r.status == 405, "%s /metrics: %d", methods[i], r.status);
    GL_CHECKF(http_header(&r, "Allow", allow, sizeof allow) && strcmp(allow, "GET, HEAD") == 0,
              "%s /metrics: Allow header", methods[i]);
    http_reply_free(&r);
  }
  expect_reply(port, "POST", "/healthz", 405, NULL);
}

int main(void) {
  setvbuf(stdout, NULL, _IONBF, 0);
  gl_log_init(GL_LOG_INFO);
  uint16_t port;
  struct gl_metrics *m = create_on_free_port(&port);
  gl_test_logf("metrics server on 127.0.0.1:%u", (unsigned)port);

  test_create_errors(port);
  gl_test_logf("create errors: ok");
  expect_reply(port, "GET", "/healthz", 200, "ok\n");
  test_probes(m, port);
  gl_test_logf("probes: ok");
  test_values(m, port);
  gl_test_logf("values from %d threads: ok", N_THREADS);

  gl_metrics_destroy(m);
  /* The listening socket went with the server. */
  int fd = gl_test_raw_connect(port, 0);
  GL_CHECKF(fd < 0, "127.0.0.1:%u still accepts after gl_metrics_destroy", (unsigned)port);
  printf("PASS metrics\n");
  return 0;
}
