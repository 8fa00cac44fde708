/* Integration tests of geolocd: one scenario per run.
 *
 *   test_daemon SCENARIO            (daemon from $GEOLOCD)
 *   test_daemon GEOLOCD SCENARIO
 *   test_daemon list
 *
 * Each scenario starts the real daemon with its own config, temp dir and
 * ports, talks to it over real sockets, and ends by requiring exit status 0
 * after SIGTERM (so an ASan build of the daemon fails the test on a leak).
 * Exit status: 0 pass, 1 fail, 77 skip. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define CODE(name) GEOLOC__V1__ERROR__CODE__##name
#define IS_WELCOME(m) ((m)->msg_case == GEOLOC__V1__SERVER_MESSAGE__MSG_WELCOME)
#define IS_ERROR(m) ((m)->msg_case == GEOLOC__V1__SERVER_MESSAGE__MSG_ERROR)
#define IS_PONG(m) ((m)->msg_case == GEOLOC__V1__SERVER_MESSAGE__MSG_PONG)

static void put_be32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

static void check_welcome(const gl_server_msg *m, uint32_t max_bytes, const char *what) {
  GL_CHECKF(IS_WELCOME(m), "%s: expected Welcome, got %s", what, gl_test_msg_str(m));
  const Geoloc__V1__Welcome *w = m->welcome;
  GL_CHECKF(w->has_protocol_version && w->protocol_version == 1,
            "%s: Welcome.protocol_version must be 1: %s", what, gl_test_msg_str(m));
  GL_CHECKF(w->server && strncmp(w->server, "geolocd ", 8) == 0,
            "%s: Welcome.server must start with \"geolocd \": %s", what, gl_test_msg_str(m));
  GL_CHECKF(!w->map || w->map[0] == '\0', "%s: Welcome.map must be empty: %s", what,
            gl_test_msg_str(m));
  GL_CHECKF(w->n_maps == 0, "%s: Welcome.maps must be empty: %s", what, gl_test_msg_str(m));
  GL_CHECKF(w->has_max_message_bytes && w->max_message_bytes == max_bytes,
            "%s: Welcome.max_message_bytes must be %u: %s", what, max_bytes, gl_test_msg_str(m));
  GL_CHECKF(w->has_session_id, "%s: Welcome.session_id must be set: %s", what, gl_test_msg_str(m));
}

/* Connect + Hello -> Welcome (checked against max_bytes), freed. */
static struct gl_client *hello_client(struct gl_test_env *e, const char *address, bool tls,
                                      uint32_t max_bytes, const char *what) {
  struct gl_client *c = gl_test_connect_addr(e, address, tls, GL_TEST_CERT_A);
  gl_server_msg *w = gl_test_hello_ok(c, what);
  check_welcome(w, max_bytes, what);
  gl_wire_free(w);
  return c;
}

/* ---- handshake ------------------------------------------------------------ */

static void sc_handshake(struct gl_test_env *e) {
  struct gl_test_conf c;
  gl_test_conf_defaults(&c);
  c.max_message_bytes = 77777;
  gl_test_start_conf(e, &c);

  /* Through the client library's own Hello. */
  struct gl_client *a = gl_test_connect_plain(e);
  gl_server_msg *r = NULL;
  int rc = gl_client_hello(a, "geolocd-it", "", 0, GL_TEST_WAIT_MS, &r);
  GL_CHECKF(rc == 0 && r, "gl_client_hello: %s (%s)", gl_err_name(rc), gl_client_last_error(a));
  check_welcome(r, 77777, "client a");
  gl_test_logf("welcome: %s", gl_test_msg_str(r));
  uint64_t sid_a = r->welcome->session_id;
  gl_wire_free(r);

  /* Through a Hello built here. */
  struct gl_client *b = gl_test_connect_plain(e);
  r = gl_test_hello_ok(b, "client b");
  check_welcome(r, 77777, "client b");
  uint64_t sid_b = r->welcome->session_id;
  gl_wire_free(r);
  GL_CHECKF(sid_a != sid_b, "session_id must be unique per connection, both are %llu",
            (unsigned long long)sid_a);

  /* Both stay usable. */
  gl_test_ping_ok(a, 1, "client a after Welcome");
  gl_test_ping_ok(b, 2, "client b after Welcome");
  gl_client_destroy(a);
  gl_client_destroy(b);
  gl_test_stop(e);
}

static void sc_second_hello(struct gl_test_env *e) {
  struct gl_test_conf c;
  gl_test_conf_defaults(&c);
  gl_test_start_conf(e, &c);
  struct gl_client *a = hello_client(e, e->tcp_addr, false, c.max_message_bytes, "first hello");
  struct gl_test_cmsg b;
  gl_test_send(a, gl_test_msg_hello(&b, 1, "again", NULL), "second hello");
  gl_test_expect_error(a, CODE(PROTOCOL), true, -1, "second hello");
  gl_test_expect_eof(a, "after second hello");
  gl_client_destroy(a);
  gl_test_stop(e);
}

static void sc_hello_unknown_map(struct gl_test_env *e) {
  struct gl_test_conf c;
  gl_test_conf_defaults(&c);
  gl_test_start_conf(e, &c);
  struct gl_client *a = gl_test_connect_plain(e);
  struct gl_test_cmsg b;
  gl_test_send(a, gl_test_msg_hello(&b, 1, "geolocd-it", "no-such-map"), "hello with map");
  gl_test_expect_error(a, CODE(UNAVAILABLE), true, -1, "hello naming a map");
  gl_test_expect_eof(a, "after hello naming a map");
  gl_client_destroy(a);
  gl_test_stop(e);
}

/* ---- ping ----------------------------------------------------------------- */

static void sc_ping(struct gl_test_env *e) {
  struct gl_test_conf c;
  gl_test_conf_defaults(&c);
  gl_test_start_conf(e, &c);
  struct gl_client *a = hello_client(e, e->tcp_addr, false, c.max_message_bytes, "hello");

  gl_test_ping_ok(a, 42, "single ping");
  gl_test_ping_ok(a, UINT64_MAX, "ping with nonce UINT64_MAX");

  /* A pipeline: all sent before any answer is read; answers keep order. */
  enum { N = 40 };
  uint64_t t0 = gl_test_now_us();
  struct gl_test_cmsg b;
  for (unsigned i = 0; i < N; i++)
    gl_test_send(a, gl_test_msg_ping(&b, 1000u + i * 7u, t0 + i), "pipelined ping");
  for (unsigned i = 0; i < N; i++)
    gl_test_expect_pong(a, 1000u + i * 7u, t0 + i, "pipelined pong");
  gl_test_ping_ok(a, 9, "ping after pipeline");

  /* Several messages in one write, then messages split byte by byte. */
  enum { M = 5 };
  uint8_t *enc[M];
  size_t len[M], total = 0;
  for (unsigned i = 0; i < M; i++) {
    enc[i] = gl_test_encode(gl_test_msg_ping(&b, 2000u + i, t0 + 100u + i), &len[i]);
    total += len[i];
  }
  uint8_t *all = malloc(total);
  GL_CHECK(all);
  for (unsigned i = 0, off = 0; i < M; off += (unsigned)len[i], i++)
    memcpy(all + off, enc[i], len[i]);
  gl_test_send_raw(a, all, total, "5 pings in one write");
  for (unsigned i = 0; i < M; i++)
    gl_test_expect_pong(a, 2000u + i, t0 + 100u + i, "pings from one write");
  int one = 1;
  setsockopt(gl_client_fd(a), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  for (size_t k = 0; k < total; k++) {
    gl_test_send_raw(a, all + k, 1, "one byte");
    if (k % 4 == 0)
      gl_test_sleep_ms(1);
  }
  for (unsigned i = 0; i < M; i++)
    gl_test_expect_pong(a, 2000u + i, t0 + 100u + i, "pings sent byte by byte");
  free(all);
  for (unsigned i = 0; i < M; i++)
    free(enc[i]);
  gl_test_ping_ok(a, 10, "ping at the end");
  gl_client_destroy(a);
  gl_test_stop(e);
}

/* A client that half-closes after pipelining still gets every answer, then
 * EOF. */
static void sc_half_close(struct gl_test_env *e) {
  struct gl_test_conf c;
  gl_test_conf_defaults(&c);
  gl_test_start_conf(e, &c);
  struct gl_client *a = hello_client(e, e->tcp_addr, false, c.max_message_bytes, "hello");
  enum { N = 10 };
  uint64_t t0 = gl_test_now_us();
  struct gl_test_cmsg b;
  for (unsigned i = 0; i < N; i++)
    gl_test_send(a, gl_test_msg_ping(&b, i, t0 + i), "ping before half-close");
  gl_test_send(a, gl_test_msg_frame(&b, 77), "frame before half-close");
  GL_CHECKF(shutdown(gl_client_fd(a), SHUT_WR) == 0, "shutdown: %s", strerror(errno));
  for (unsigned i = 0; i < N; i++)
    gl_test_expect_pong(a, i, t0 + i, "pong after half-close");
  gl_test_expect_error(a, CODE(UNAVAILABLE), false, 77, "frame answer after half-close");
  gl_test_expect_eof(a, "after the answers to a half-closed client");
  gl_client_destroy(a);
  gl_test_stop(e);
}

/* ---- frames ----------------------------------------------------------------- */

static void sc_frame_unavailable(struct gl_test_env *e) {
  struct gl_test_conf c;
  gl_test_conf_defaults(&c);
  gl_test_start_conf(e, &c);
  struct gl_client *a = hello_client(e, e->tcp_addr, false, c.max_message_bytes, "hello");
  struct gl_test_cmsg b;
  gl_test_send(a, gl_test_msg_frame(&b, 42), "frame 42");
  gl_test_expect_error(a, CODE(UNAVAILABLE), false, 42, "frame 42");
  gl_test_ping_ok(a, 1, "ping after a non-fatal error");

  enum { N = 50 };
  const uint64_t base = 1u << 20;
  for (unsigned i = 0; i < N; i++)
    gl_test_send(a, gl_test_msg_frame(&b, base + i * 3u), "pipelined frame");
  int seen[N] = {0};
  for (unsigned i = 0; i < N; i++) {
    gl_server_msg *m = gl_test_recv(a, GL_TEST_WAIT_MS, "pipelined frame answer");
    GL_CHECKF(IS_ERROR(m) && m->error->has_code && m->error->code == CODE(UNAVAILABLE) &&
                  !(m->error->has_fatal && m->error->fatal) && m->error->has_frame_id,
              "answer %u of %u: expected Error{UNAVAILABLE, fatal=false, frame_id}, got %s", i + 1,
              N, gl_test_msg_str(m));
    uint64_t id = m->error->frame_id;
    GL_CHECKF(id >= base && (id - base) % 3u == 0 && (id - base) / 3u < N,
              "answer names frame_id %llu, which was never sent", (unsigned long long)id);
    unsigned k = (unsigned)((id - base) / 3u);
    GL_CHECKF(seen[k] == 0, "frame_id %llu answered twice", (unsigned long long)id);
    seen[k] = 1;
    gl_wire_free(m);
  }
  /* Nothing else may follow: the next answer is the Pong. */
  gl_test_ping_ok(a, 2, "ping after 50 frames");
  gl_client_destroy(a);
  gl_test_stop(e);
}

static void sc_frame_before_hello(struct gl_test_env *e) {
  struct gl_test_conf c;
  gl_test_conf_defaults(&c);
  gl_test_start_conf(e, &c);
  struct gl_client *a = gl_test_connect_plain(e);
  struct gl_test_cmsg b;
  gl_test_send(a, gl_test_msg_frame(&b, 7), "frame before hello");
  gl_test_expect_error(a, CODE(PROTOCOL), true, 7, "frame before hello");
  gl_test_expect_eof(a, "after frame before hello");
  gl_client_destroy(a);
  gl_test_stop(e);
}

static void sc_ping_before_hello(struct gl_test_env *e) {
  struct gl_test_conf c;
  gl_test_conf_defaults(&c);
  gl_test_start_conf(e, &c);
  struct gl_client *a = gl_test_connect_plain(e);
  struct gl_test_cmsg b;
  gl_test_send(a, gl_test_msg_ping(&b, 5, gl_test_now_us()), "ping before hello");
  gl_test_expect_error(a, CODE(PROTOCOL), true, -1, "ping before hello");
  gl_test_expect_eof(a, "after ping before hello");
  gl_client_destroy(a);
  gl_test_stop(e);
}

static void sc_wrong_version(struct gl_test_env *e) {
  struct gl_test_conf c;
  gl_test_conf_defaults(&c);
  gl_test_start_conf(e, &c);
  /* Through the client library (version argument), then explicit values. */
  struct gl_client *a = gl_test_connect_plain(e);
  gl_server_msg *r = NULL;
  int rc = gl_client_hello(a, "geolocd-it", "", 2, GL_TEST_WAIT_MS, &r);
  GL_CHECKF(rc == 0 && r, "gl_client_hello(version 2): %s (%s)", gl_err_name(rc),
            gl_client_last_error(a));
  GL_CHECKF(IS_ERROR(r) && r->error->has_code && r->error->code == CODE(VERSION) &&
                r->error->has_fatal && r->error->fatal,
            "Hello version 2: expected Error{VERSION, fatal=true}, got %s", gl_test_msg_str(r));
  gl_wire_free(r);
  gl_test_expect_eof(a, "after Hello version 2");
  gl_client_destroy(a);

  const uint32_t versions[] = {0, 3, UINT32_MAX};
  for (size_t i = 0; i < sizeof versions / sizeof versions[0]; i++) {
    char what[64];
    snprintf(what, sizeof what, "Hello version %u", versions[i]);
    struct gl_client *x = gl_test_connect_plain(e);
    struct gl_test_cmsg b;
    gl_test_send(x, gl_test_msg_hello(&b, versions[i], "geolocd-it", NULL), what);
    gl_test_expect_error(x, CODE(VERSION), true, -1, what);
    gl_test_expect_eof(x, what);
    gl_client_destroy(x);
  }
  gl_test_stop(e);
}

/* ---- broken streams ---------------------------------------------------------- */

/* A Frame whose body is exactly body_len bytes (padding in the image). */
static uint8_t *frame_with_body(uint64_t frame_id, size_t body_len, size_t *out_len) {
  uint8_t *img = calloc(body_len, 1);
  GL_CHECK(img);
  gl_client_msg m = GEOLOC__V1__CLIENT_MESSAGE__INIT;
  Geoloc__V1__Frame f = GEOLOC__V1__FRAME__INIT;
  f.has_frame_id = 1;
  f.frame_id = frame_id;
  f.has_image = 1;
  f.image.data = img;
  f.has_format = 1;
  f.format = GEOLOC__V1__IMAGE_FORMAT__JPEG;
  m.msg_case = GEOLOC__V1__CLIENT_MESSAGE__MSG_FRAME;
  m.frame = &f;
  size_t n = body_len;
  for (;; n--) {
    f.image.len = n;
    size_t body = gl_wire_encoded_size(&m.base) - GL_WIRE_HEADER_BYTES;
    if (body <= body_len) {
      GL_CHECKF(body == body_len, "cannot build a frame of exactly %zu bytes", body_len);
      break;
    }
    GL_CHECK(n > 0);
  }
  uint8_t *buf = gl_test_encode(&m, out_len);
  free(img);
  GL_CHECK(*out_len == body_len + GL_WIRE_HEADER_BYTES);
  return buf;
}

static void sc_oversized_prefix(struct gl_test_env *e) {
  struct gl_test_conf c;
  gl_test_conf_defaults(&c);
  c.max_message_bytes = 4096;
  gl_test_start_conf(e, &c);

  struct gl_client *a = hello_client(e, e->tcp_addr, false, 4096, "hello");
  /* The limit itself is allowed. */
  size_t len = 0;
  uint8_t *big = frame_with_body(77, 4096, &len);
  gl_test_send_raw(a, big, len, "frame of exactly max_message_bytes");
  free(big);
  gl_test_expect_error(a, CODE(UNAVAILABLE), false, 77, "frame of exactly max_message_bytes");
  gl_test_ping_ok(a, 1, "ping after the largest frame");
  /* One more is not: only the prefix is sent, the server must not wait for
   * the body. */
  uint8_t prefix[4];
  put_be32(prefix, 4097);
  gl_test_send_raw(a, prefix, sizeof prefix, "prefix max+1");
  gl_test_expect_error(a, CODE(TOO_LARGE), true, -1, "prefix max+1");
  gl_test_expect_eof(a, "after prefix max+1");
  gl_client_destroy(a);

  /* Before Hello, and the largest prefix there is. */
  struct gl_client *x = gl_test_connect_plain(e);
  put_be32(prefix, UINT32_MAX);
  gl_test_send_raw(x, prefix, sizeof prefix, "prefix 0xffffffff before hello");
  gl_test_expect_error(x, CODE(TOO_LARGE), true, -1, "prefix 0xffffffff before hello");
  gl_test_expect_eof(x, "after prefix 0xffffffff");
  gl_client_destroy(x);
  gl_test_stop(e);
}

/* Fixed-seed pseudo-random bytes that can never parse as protobuf: the first
 * byte is a tag with wire type 7, which does not exist. */
static void garbage_bytes(uint8_t *p, size_t n, uint32_t seed) {
  uint32_t x = seed ? seed : 1;
  for (size_t i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    p[i] = (uint8_t)x;
  }
  p[0] = 0x0f;
}

static void send_garbage(struct gl_client *c, uint32_t seed, const char *what) {
  uint8_t msg[4 + 32];
  put_be32(msg, 32);
  garbage_bytes(msg + 4, 32, seed);
  gl_test_send_raw(c, msg, sizeof msg, what);
}

static void sc_garbage(struct gl_test_env *e) {
  struct gl_test_conf c;
  gl_test_conf_defaults(&c);
  gl_test_start_conf(e, &c);

  struct gl_client *a = hello_client(e, e->tcp_addr, false, c.max_message_bytes, "hello");
  send_garbage(a, 0x9e3779b9u, "garbage after hello");
  gl_test_expect_error(a, CODE(MALFORMED), true, -1, "garbage after hello");
  gl_test_expect_eof(a, "after garbage");
  gl_client_destroy(a);

  /* What was queued before the garbage is answered first ("close" flushes):
   * pings and garbage in one write. */
  struct gl_client *q = hello_client(e, e->tcp_addr, false, c.max_message_bytes, "hello q");
  struct gl_test_cmsg m;
  enum { NP = 8 };
  uint8_t buf[NP * 64 + 36];
  size_t off = 0;
  uint64_t t0 = gl_test_now_us();
  for (unsigned i = 0; i < NP; i++) {
    size_t plen = 0;
    uint8_t *ping = gl_test_encode(gl_test_msg_ping(&m, 100u + i, t0 + i), &plen);
    GL_CHECK(plen <= 64);
    memcpy(buf + off, ping, plen);
    off += plen;
    free(ping);
  }
  put_be32(buf + off, 32);
  garbage_bytes(buf + off + 4, 32, 4242u);
  off += 36;
  gl_test_send_raw(q, buf, off, "pings then garbage in one write");
  for (unsigned i = 0; i < NP; i++)
    gl_test_expect_pong(q, 100u + i, t0 + i, "pong queued before the garbage");
  gl_test_expect_error(q, CODE(MALFORMED), true, -1, "garbage after pings");
  gl_test_expect_eof(q, "after pings and garbage");
  gl_client_destroy(q);

  struct gl_client *x = gl_test_connect_plain(e);
  send_garbage(x, 12345u, "garbage before hello");
  gl_test_expect_error(x, CODE(MALFORMED), true, -1, "garbage before hello");
  gl_test_expect_eof(x, "after garbage before hello");
  gl_client_destroy(x);

  /* Valid protobuf whose oneof is not set: an empty body, then a body with
   * only an unknown field (15, varint 1). */
  struct gl_client *y = hello_client(e, e->tcp_addr, false, c.max_message_bytes, "hello y");
  uint8_t empty[4];
  put_be32(empty, 0);
  gl_test_send_raw(y, empty, sizeof empty, "empty message");
  gl_test_expect_error(y, CODE(MALFORMED), true, -1, "empty message (no oneof set)");
  gl_test_expect_eof(y, "after empty message");
  gl_client_destroy(y);

  struct gl_client *z = hello_client(e, e->tcp_addr, false, c.max_message_bytes, "hello z");
  uint8_t unknown[6] = {0, 0, 0, 2, 0x78, 0x01};
  gl_test_send_raw(z, unknown, sizeof unknown, "unknown field only");
  gl_test_expect_error(z, CODE(MALFORMED), true, -1, "message with only an unknown field");
  gl_test_expect_eof(z, "after unknown-field message");
  gl_client_destroy(z);
  gl_test_stop(e);
}

/* A timeout of a few hundred ms must have fired by then, even on a loaded
 * machine under ASan; and a daemon that ignored the configured value and used
 * the default (5000 ms) would be later. */
#define LATE_MS 3000

/* Waits for Error{TIMEOUT, fatal} then EOF; returns ms from since. */
static uint64_t expect_timeout(struct gl_client *c, uint64_t since, const char *what) {
  gl_test_expect_error(c, CODE(TIMEOUT), true, -1, what);
  uint64_t ms = gl_test_mono_ms() - since;
  gl_test_expect_eof(c, what);
  return ms;
}

static void sc_half_message_stall(struct gl_test_env *e) {
  struct gl_test_conf c;
  gl_test_conf_defaults(&c);
  c.handshake_timeout_ms = 400;
  gl_test_start_conf(e, &c);

  struct gl_test_cmsg b;
  size_t len = 0;
  uint8_t *hello = gl_test_encode(gl_test_msg_hello(&b, 1, "geolocd-it", NULL), &len);
  GL_CHECK(len > 3);
  uint64_t t_a = gl_test_mono_ms();
  struct gl_client *a = gl_test_connect_plain(e);
  gl_test_send_raw(a, hello, 3, "first 3 bytes of a Hello");
  free(hello);
  uint64_t t_b = gl_test_mono_ms();
  struct gl_client *s = gl_test_connect_plain(e); /* sends nothing at all */

  uint64_t ms_a = expect_timeout(a, t_a, "half a Hello, then nothing");
  uint64_t ms_b = expect_timeout(s, t_b, "silent connection");
  gl_test_logf("handshake timeout 400 ms: half-Hello closed after %llu ms, silent after %llu ms",
               (unsigned long long)ms_a, (unsigned long long)ms_b);
  /* Never early (minus the slack of libuv's cached loop time), and within a
   * few times the timeout even on a loaded machine. */
  GL_CHECKF(ms_a >= 300 && ms_a < LATE_MS, "half-Hello TIMEOUT after %llu ms (timeout 400 ms)",
            (unsigned long long)ms_a);
  GL_CHECKF(ms_b >= 300 && ms_b < LATE_MS,
            "silent connection TIMEOUT after %llu ms (timeout 400 ms)", (unsigned long long)ms_b);
  gl_client_destroy(a);
  gl_client_destroy(s);
  gl_test_stop(e);
}

static void sc_idle_timeout(struct gl_test_env *e) {
  struct gl_test_conf c;
  gl_test_conf_defaults(&c);
  c.idle_timeout_ms = 500;
  /* Far away, so that only the idle timer can explain a TIMEOUT. */
  c.handshake_timeout_ms = 60000;
  gl_test_start_conf(e, &c);

  struct gl_client *a = hello_client(e, e->tcp_addr, false, c.max_message_bytes, "hello");
  /* Activity keeps the connection: three timeouts' worth of pings. */
  uint64_t start = gl_test_mono_ms();
  uint64_t n = 0;
  do {
    gl_test_sleep_ms(100);
    gl_test_ping_ok(a, n++, "keep-alive ping");
  } while (gl_test_mono_ms() - start < 1500);
  uint64_t t = gl_test_mono_ms();
  uint64_t ms = expect_timeout(a, t, "idle after pings");
  gl_test_logf("idle timeout 500 ms: closed %llu ms after the last pong", (unsigned long long)ms);
  /* Never early (minus the slack of libuv's cached loop time). */
  GL_CHECKF(ms >= 400 && ms < LATE_MS, "idle TIMEOUT after %llu ms (timeout 500 ms)",
            (unsigned long long)ms);
  gl_client_destroy(a);

  /* Part of a message does not count as activity. */
  struct gl_client *p = hello_client(e, e->tcp_addr, false, c.max_message_bytes, "hello p");
  struct gl_test_cmsg b;
  size_t len = 0;
  uint8_t *ping = gl_test_encode(gl_test_msg_ping(&b, 1, 2), &len);
  t = gl_test_mono_ms();
  gl_test_send_raw(p, ping, 3, "first 3 bytes of a Ping");
  free(ping);
  ms = expect_timeout(p, t, "idle with half a Ping");
  GL_CHECKF(ms < LATE_MS, "idle TIMEOUT after %llu ms (timeout 500 ms)", (unsigned long long)ms);
  gl_client_destroy(p);
  gl_test_stop(e);
}

/* ---- many clients --------------------------------------------------------------- */

struct worker {
  struct gl_test_env *e;
  unsigned index;
  pthread_barrier_t *barrier;
};

static void *concurrent_worker(void *arg) {
  struct worker *w = arg;
  char what[64];
  snprintf(what, sizeof what, "client %u", w->index);
  pthread_barrier_wait(w->barrier);
  struct gl_client *c =
      hello_client(w->e, w->e->tcp_addr, false, w->e->conf.max_message_bytes, what);
  enum { N = 20 };
  uint64_t t0 = gl_test_now_us();
  struct gl_test_cmsg b;
  for (unsigned i = 0; i < N; i++)
    gl_test_send(c, gl_test_msg_ping(&b, w->index * 1000u + i, t0 + i), what);
  for (unsigned i = 0; i < N; i++)
    gl_test_expect_pong(c, w->index * 1000u + i, t0 + i, what);
  uint64_t fid = 500000u + w->index;
  gl_test_send(c, gl_test_msg_frame(&b, fid), what);
  gl_test_expect_error(c, CODE(UNAVAILABLE), false, (int64_t)fid, what);
  gl_client_destroy(c);
  return NULL;
}

static void sc_concurrent_64(struct gl_test_env *e) {
  struct gl_test_conf c;
  gl_test_conf_defaults(&c);
  gl_test_start_conf(e, &c);
  enum { N = 64 };
  pthread_t th[N];
  struct worker w[N];
  pthread_barrier_t barrier;
  pthread_barrier_init(&barrier, NULL, N);
  for (unsigned i = 0; i < N; i++) {
    w[i] = (struct worker){.e = e, .index = i, .barrier = &barrier};
    GL_CHECK(pthread_create(&th[i], NULL, concurrent_worker, &w[i]) == 0);
  }
  for (unsigned i = 0; i < N; i++)
    pthread_join(th[i], NULL);
  pthread_barrier_destroy(&barrier);
  gl_test_logf("%d concurrent clients done", N);
  gl_test_check_alive(e);
  gl_test_stop(e);
}

/* Connects and says Hello until admitted: a slot freed by a closing client
 * is released asynchronously. */
static struct gl_client *admit(struct gl_test_env *e, const char *address, bool tls,
                               const char *what) {
  uint64_t deadline = gl_test_mono_ms() + GL_TEST_WAIT_MS;
  for (unsigned attempt = 1;; attempt++) {
    struct gl_client *c = gl_test_connect_addr(e, address, tls, GL_TEST_CERT_A);
    struct gl_test_cmsg b;
    int rc = gl_client_send(c, gl_test_msg_hello(&b, 1, "geolocd-it", NULL));
    gl_server_msg *m = NULL;
    if (rc == 0)
      rc = gl_client_recv(c, GL_TEST_WAIT_MS, &m);
    if (rc == 0 && IS_WELCOME(m)) {
      gl_wire_free(m);
      return c;
    }
    bool rejected = rc == 0 && IS_ERROR(m) && m->error->code == CODE(RESOURCE_EXHAUSTED);
    GL_CHECKF(rejected || rc == GL_ECLOSED || rc == GL_EIO,
              "%s: expected Welcome or RESOURCE_EXHAUSTED, got %s", what,
              rc == 0 ? gl_test_msg_str(m) : gl_err_name(rc));
    gl_wire_free(m);
    gl_client_destroy(c);
    GL_CHECKF(gl_test_mono_ms() < deadline, "%s: not admitted after %u attempts in %d ms", what,
              attempt, GL_TEST_WAIT_MS);
    gl_test_sleep_ms(50);
  }
}

static void expect_rejected(struct gl_test_env *e, const char *address, bool tls,
                            const char *what) {
  struct gl_client *x = gl_test_connect_addr(e, address, tls, GL_TEST_CERT_A);
  /* The server speaks first: no Hello is sent. */
  gl_test_expect_error(x, CODE(RESOURCE_EXHAUSTED), true, -1, what);
  gl_test_expect_eof(x, what);
  gl_client_destroy(x);
}

static void sc_max_clients(struct gl_test_env *e) {
  struct gl_test_conf c;
  gl_test_conf_defaults(&c);
  c.max_clients = 4;
  gl_test_start_conf(e, &c);
  struct gl_client *cl[4];
  for (unsigned i = 0; i < 4; i++)
    cl[i] = admit(e, e->tcp_addr, false, "one of the first 4 clients");
  expect_rejected(e, e->tcp_addr, false, "5th client");
  for (unsigned i = 0; i < 4; i++)
    gl_test_ping_ok(cl[i], i, "admitted client after a rejection");
  gl_client_destroy(cl[1]);
  cl[1] = admit(e, e->tcp_addr, false, "client after one of 4 closed");
  gl_test_ping_ok(cl[1], 11, "re-admitted client");
  /* Full again. */
  expect_rejected(e, e->tcp_addr, false, "5th client after re-admission");
  for (unsigned i = 0; i < 4; i++)
    gl_test_ping_ok(cl[i], 100 + i, "admitted client at the end");
  for (unsigned i = 0; i < 4; i++)
    gl_client_destroy(cl[i]);
  gl_test_stop(e);
}

#if GL_HAVE_TLS
/* Over TLS the refusal comes after the TLS handshake; plaintext and TLS
 * clients share one max_clients. */
static void sc_max_clients_tls(struct gl_test_env *e) {
  struct gl_test_conf c;
  gl_test_conf_defaults(&c);
  c.listen_tls = true;
  c.max_clients = 2;
  gl_test_start_conf(e, &c);
  struct gl_client *a = admit(e, e->tls_addr, true, "first TLS client");
  struct gl_client *b = admit(e, e->tcp_addr, false, "plaintext client");
  expect_rejected(e, e->tls_addr, true, "3rd client, TLS");
  expect_rejected(e, e->tcp_addr, false, "3rd client, plaintext");
  gl_test_ping_ok(a, 1, "admitted TLS client");
  gl_test_ping_ok(b, 2, "admitted plaintext client");
  gl_client_destroy(b);
  b = admit(e, e->tls_addr, true, "TLS client after the plaintext one closed");
  expect_rejected(e, e->tls_addr, true, "3rd client, TLS, after re-admission");
  gl_test_ping_ok(a, 3, "admitted TLS client at the end");
  gl_test_ping_ok(b, 4, "re-admitted TLS client");
  gl_client_destroy(a);
  gl_client_destroy(b);
  gl_test_stop(e);
}
#endif

/* A client that pings in its own thread until told to stop; any error or
 * EOF fails the test. */
struct pinger {
  struct gl_test_env *e;
  const char *address;
  bool tls;
  char label[48];
  pthread_t th;
  atomic_bool stop;
  atomic_ulong pongs;
};

static void *pinger_main(void *arg) {
  struct pinger *p = arg;
  struct gl_client *c = gl_test_connect_addr(p->e, p->address, p->tls, GL_TEST_CERT_A);
  gl_server_msg *w = gl_test_hello_ok(c, p->label);
  gl_wire_free(w);
  uint64_t n = 0;
  while (!atomic_load(&p->stop)) {
    gl_test_ping_ok(c, n++, p->label);
    atomic_fetch_add(&p->pongs, 1);
    gl_test_sleep_ms(2);
  }
  gl_client_destroy(c);
  return NULL;
}

static void pinger_start(struct pinger *p, struct gl_test_env *e, const char *address, bool tls,
                         const char *label) {
  memset(p, 0, sizeof *p);
  p->e = e;
  p->address = address;
  p->tls = tls;
  snprintf(p->label, sizeof p->label, "%s", label);
  atomic_init(&p->stop, false);
  atomic_init(&p->pongs, 0);
  GL_CHECK(pthread_create(&p->th, NULL, pinger_main, p) == 0);
}

/* Waits until every pinger got at least `more` pongs beyond base[i]. */
static void pingers_progress(struct pinger *p, size_t n, unsigned long *base, unsigned long more,
                             const char *when) {
  uint64_t deadline = gl_test_mono_ms() + GL_TEST_WAIT_MS;
  for (size_t i = 0; i < n; i++) {
    while (atomic_load(&p[i].pongs) < base[i] + more) {
      GL_CHECKF(gl_test_mono_ms() < deadline, "%s: %s made no progress (%lu pongs)", when,
                p[i].label, atomic_load(&p[i].pongs));
      gl_test_sleep_ms(10);
    }
    base[i] = atomic_load(&p[i].pongs);
  }
}

static void pingers_stop(struct pinger *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    atomic_store(&p[i].stop, true);
  for (size_t i = 0; i < n; i++)
    pthread_join(p[i].th, NULL);
}

static void sc_bad_client_isolated(struct gl_test_env *e) {
  struct gl_test_conf c;
  gl_test_conf_defaults(&c);
  gl_test_start_conf(e, &c);
  struct pinger good;
  pinger_start(&good, e, e->tcp_addr, false, "good client");
  unsigned long base = 0;
  pingers_progress(&good, 1, &base, 5, "before the bad clients");

  /* Garbage. */
  struct gl_client *b = hello_client(e, e->tcp_addr, false, c.max_message_bytes, "garbage");
  send_garbage(b, 777u, "garbage");
  gl_test_expect_error(b, CODE(MALFORMED), true, -1, "garbage");
  gl_test_expect_eof(b, "garbage");
  gl_client_destroy(b);
  /* Oversized prefix. */
  struct gl_client *o = gl_test_connect_plain(e);
  uint8_t prefix[4];
  put_be32(prefix, 0x7ffffff0u);
  gl_test_send_raw(o, prefix, sizeof prefix, "oversized");
  gl_test_expect_error(o, CODE(TOO_LARGE), true, -1, "oversized");
  gl_test_expect_eof(o, "oversized");
  gl_client_destroy(o);
  /* Frame before Hello. */
  struct gl_client *f = gl_test_connect_plain(e);
  struct gl_test_cmsg m;
  gl_test_send(f, gl_test_msg_frame(&m, 3), "frame before hello");
  gl_test_expect_error(f, CODE(PROTOCOL), true, 3, "frame before hello");
  gl_test_expect_eof(f, "frame before hello");
  gl_client_destroy(f);
  /* Reset in the middle of a message. */
  size_t len = 0;
  uint8_t *hello = gl_test_encode(gl_test_msg_hello(&m, 1, "rst", NULL), &len);
  int fd = gl_test_raw_connect(e->tcp_port, 0);
  GL_CHECK(fd >= 0);
  GL_CHECK(send(fd, hello, len - 2, MSG_NOSIGNAL) == (ssize_t)(len - 2));
  free(hello);
  struct linger lg = {.l_onoff = 1, .l_linger = 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  close(fd);
  /* Connect and leave at once. */
  fd = gl_test_raw_connect(e->tcp_port, 0);
  GL_CHECK(fd >= 0);
  close(fd);
  /* Many frames, then gone without reading the answers. */
  struct gl_client *q = hello_client(e, e->tcp_addr, false, c.max_message_bytes, "quitter");
  for (unsigned i = 0; i < 200; i++)
    gl_test_send(q, gl_test_msg_frame(&m, i), "quitter frames");
  gl_client_destroy(q);

  pingers_progress(&good, 1, &base, 20, "after the bad clients");
  pingers_stop(&good, 1);
  gl_test_logf("good client: %lu pongs, no error", atomic_load(&good.pongs));
  struct gl_client *n = hello_client(e, e->tcp_addr, false, c.max_message_bytes, "new client");
  gl_test_ping_ok(n, 1, "new client");
  gl_client_destroy(n);
  gl_test_check_alive(e);
  gl_test_stop(e);
}

/* ---- TLS -------------------------------------------------------------------------- */

#if GL_HAVE_TLS
static void tls_conf(struct gl_test_conf *c) {
  gl_test_conf_defaults(c);
  c->listen_tcp = false;
  c->listen_tls = true;
}

static void sc_tls_ok(struct gl_test_env *e) {
  struct gl_test_conf c;
  tls_conf(&c);
  gl_test_start_conf(e, &c);
  struct gl_client *a = hello_client(e, e->tls_addr, true, c.max_message_bytes, "tls client");
  gl_test_ping_ok(a, 1, "tls ping");
  struct gl_test_cmsg b;
  gl_test_send(a, gl_test_msg_frame(&b, 99), "tls frame");
  gl_test_expect_error(a, CODE(UNAVAILABLE), false, 99, "tls frame");
  gl_test_ping_ok(a, 2, "tls ping after frame");
  /* The server presents server.crt (checked with OpenSSL directly). */
  int r = gl_test_tls_peer_is(e->tls_port, e->ca_a, e->client_crt, e->client_key, e->server_crt);
  GL_CHECKF(r == 1, "TLS handshake with a direct OpenSSL client: %s",
            r < 0 ? "failed" : "unexpected server certificate");
  /* TLS below 1.2 is refused. */
  r = gl_test_tls_old_version(e->tls_port, e->ca_a, e->client_crt, e->client_key);
  GL_CHECKF(r != 0, "a TLS 1.0/1.1 handshake succeeded");
  /* TLS 1.2 offers AEAD suites with forward secrecy only ([tls] ciphers'
   * default): CBC with SHA-1 MACs is refused, ECDHE with AES-GCM taken. */
  r = gl_test_tls12_cipher(e->tls_port, e->ca_a, e->client_crt, e->client_key,
                           "ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA:AES128-SHA:AES256-SHA");
  GL_CHECKF(r != 0, "a TLS 1.2 handshake offering only CBC/SHA-1 suites succeeded");
  r = gl_test_tls12_cipher(e->tls_port, e->ca_a, e->client_crt, e->client_key,
                           "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256");
  GL_CHECKF(r == 0, "a TLS 1.2 handshake with ECDHE and AES-GCM failed");
  gl_test_ping_ok(a, 3, "tls ping at the end");
  gl_client_destroy(a);
  gl_test_stop(e);
}

static void expect_tls_refused(struct gl_test_env *e, enum gl_test_cert cert, const char *what) {
  struct gl_client *c = NULL;
  char err[256];
  int rc = gl_test_try_connect(e, e->tls_addr, true, cert, &c, err, sizeof err);
  if (rc != 0) {
    GL_CHECKF(rc == GL_ETLS, "%s: connect failed with %s (%s), expected GL_ETLS", what,
              gl_err_name(rc), err);
    gl_test_logf("%s: refused in the handshake: %s", what, err);
    return;
  }
  /* TLS 1.3: the client finishes its side first; the server's verdict on
   * the certificate arrives with the first read. */
  struct gl_test_cmsg b;
  int s = gl_client_send(c, gl_test_msg_hello(&b, 1, "geolocd-it", NULL));
  GL_CHECKF(s == 0 || s == GL_ETLS || s == GL_ECLOSED || s == GL_EIO, "%s: send: %s (%s)", what,
            gl_err_name(s), gl_client_last_error(c));
  gl_server_msg *m = NULL;
  int r = gl_client_recv(c, GL_TEST_WAIT_MS, &m);
  GL_CHECKF(r != 0, "%s: the server answered: %s", what, gl_test_msg_str(m));
  GL_CHECKF(r == GL_ETLS || r == GL_ECLOSED,
            "%s: first recv: %s (%s), expected GL_ETLS or GL_ECLOSED", what, gl_err_name(r),
            gl_client_last_error(c));
  gl_test_logf("%s: refused after the handshake (send %s, recv %s: %s)", what, gl_err_name(s),
               gl_err_name(r), gl_client_last_error(c));
  gl_client_destroy(c);
}

static void sc_tls_no_client_cert(struct gl_test_env *e) {
  struct gl_test_conf c;
  tls_conf(&c);
  gl_test_start_conf(e, &c);
  expect_tls_refused(e, GL_TEST_CERT_NONE, "TLS client without a certificate");
  struct gl_client *a = hello_client(e, e->tls_addr, true, c.max_message_bytes, "good client");
  gl_test_ping_ok(a, 1, "good client after a refusal");
  gl_client_destroy(a);
  gl_test_stop(e);
}

static void sc_tls_other_ca(struct gl_test_env *e) {
  struct gl_test_conf c;
  tls_conf(&c);
  gl_test_start_conf(e, &c);
  expect_tls_refused(e, GL_TEST_CERT_B, "TLS client with a certificate from CA B");
  struct gl_client *a = hello_client(e, e->tls_addr, true, c.max_message_bytes, "good client");
  gl_test_ping_ok(a, 1, "good client after a refusal");
  gl_client_destroy(a);
  gl_test_stop(e);
}

static void sc_tls_handshake_stall(struct gl_test_env *e) {
  struct gl_test_conf c;
  tls_conf(&c);
  c.handshake_timeout_ms = 400;
  gl_test_start_conf(e, &c);

  /* A TCP connection that never starts TLS is just closed, no bytes sent. */
  uint64_t t = gl_test_mono_ms();
  int fd = gl_test_raw_connect(e->tls_port, 0);
  GL_CHECK(fd >= 0);
  struct pollfd pfd = {.fd = fd, .events = POLLIN};
  int pr = poll(&pfd, 1, GL_TEST_WAIT_MS);
  GL_CHECKF(pr == 1, "a stalled TLS handshake was not closed within %d ms", GL_TEST_WAIT_MS);
  uint8_t buf[64];
  ssize_t n = recv(fd, buf, sizeof buf, 0);
  uint64_t ms = gl_test_mono_ms() - t;
  GL_CHECKF(n == 0 || (n < 0 && errno == ECONNRESET),
            "stalled TLS handshake: expected the connection closed without data, read %zd", n);
  close(fd);
  gl_test_logf("stalled TLS handshake closed after %llu ms (timeout 400 ms)",
               (unsigned long long)ms);
  GL_CHECKF(ms >= 300 && ms < LATE_MS,
            "stalled TLS handshake closed after %llu ms (timeout 400 ms)", (unsigned long long)ms);

  /* A plaintext Hello on the TLS port gets no Welcome. */
  struct gl_client *p = gl_test_connect_addr(e, e->tls_addr, false, GL_TEST_CERT_NONE);
  struct gl_test_cmsg b;
  int s = gl_client_send(p, gl_test_msg_hello(&b, 1, "plain", NULL));
  gl_server_msg *m = NULL;
  int r = s == 0 ? gl_client_recv(p, GL_TEST_WAIT_MS, &m) : s;
  GL_CHECKF(r != 0, "plaintext Hello on the TLS port was answered: %s", gl_test_msg_str(m));
  GL_CHECKF(r != GL_ETIMEDOUT, "plaintext Hello on the TLS port: connection left open");
  gl_client_destroy(p);

  struct gl_client *a = hello_client(e, e->tls_addr, true, c.max_message_bytes, "good client");
  gl_test_ping_ok(a, 1, "good client");
  gl_client_destroy(a);
  gl_test_stop(e);
}
#endif

/* ---- SIGHUP ------------------------------------------------------------------------- */

/* New connections until one's Welcome shows max_bytes. */
static void wait_welcome_max(struct gl_test_env *e, const char *address, bool tls,
                             uint32_t max_bytes, const char *what) {
  uint64_t deadline = gl_test_mono_ms() + GL_TEST_WAIT_MS;
  uint32_t last = 0;
  for (;;) {
    struct gl_client *c = gl_test_connect_addr(e, address, tls, GL_TEST_CERT_A);
    gl_server_msg *w = gl_test_hello_ok(c, what);
    last = w->welcome->max_message_bytes;
    if (last == max_bytes) {
      check_welcome(w, max_bytes, what);
      gl_wire_free(w);
      gl_test_ping_ok(c, 1, what);
      gl_client_destroy(c);
      return;
    }
    gl_wire_free(w);
    gl_client_destroy(c);
    GL_CHECKF(gl_test_mono_ms() < deadline,
              "%s: new connections still see max_message_bytes %u, expected %u", what, last,
              max_bytes);
    gl_test_sleep_ms(50);
  }
}

#if GL_HAVE_TLS
static void wait_server_cert(struct gl_test_env *e, const char *crt, const char *what) {
  uint64_t deadline = gl_test_mono_ms() + GL_TEST_WAIT_MS;
  for (;;) {
    int r = gl_test_tls_peer_is(e->tls_port, e->ca_a, e->client_crt, e->client_key, crt);
    GL_CHECKF(r >= 0, "%s: TLS handshake failed", what);
    if (r == 1)
      return;
    GL_CHECKF(gl_test_mono_ms() < deadline, "%s: the server still presents another certificate",
              what);
    gl_test_sleep_ms(50);
  }
}
#endif

static void sc_sighup_under_load(struct gl_test_env *e) {
  struct gl_test_conf c;
  gl_test_conf_defaults(&c);
  c.listen_tls = GL_HAVE_TLS;
  gl_test_start_conf(e, &c);

  enum { NP = 8 };
  struct pinger p[NP];
  unsigned long base[NP] = {0};
  for (unsigned i = 0; i < NP; i++) {
    char label[48];
    bool tls = GL_HAVE_TLS && i % 2 == 1;
    snprintf(label, sizeof label, "%s pinger %u", tls ? "tls" : "plain", i);
    pinger_start(&p[i], e, tls ? e->tls_addr : e->tcp_addr, tls, label);
  }
  pingers_progress(p, NP, base, 3, "before reloading");

  char names[8][32], crt[8][400], key[8][400];
  uint32_t max_bytes = c.max_message_bytes;
  for (unsigned i = 1; i <= 5; i++) {
    max_bytes = 65536u + 1024u * i;
    c.max_message_bytes = max_bytes;
#if GL_HAVE_TLS
    snprintf(names[i], sizeof names[i], "server-%u", i);
    gl_test_new_server_cert(e->dir, names[i]);
    snprintf(crt[i], sizeof crt[i], "%s/%s.crt", e->dir, names[i]);
    snprintf(key[i], sizeof key[i], "%s/%s.key", e->dir, names[i]);
    c.tls_cert = crt[i];
    c.tls_key = key[i];
#else
    (void)names;
    (void)crt;
    (void)key;
#endif
    gl_test_write_conf(e, &c);
    gl_test_signal(e, SIGHUP);
    char what[64];
    snprintf(what, sizeof what, "after reload %u", i);
    wait_welcome_max(e, e->tcp_addr, false, max_bytes, what);
#if GL_HAVE_TLS
    wait_server_cert(e, crt[i], what);
    wait_welcome_max(e, e->tls_addr, true, max_bytes, what);
#endif
    gl_test_logf("reload %u applied: max_message_bytes %u", i, max_bytes);
    pingers_progress(p, NP, base, 2, what);
  }

  /* A bad config: the daemon logs the error and keeps the old values. */
  struct gl_test_conf bad = c;
  bad.max_message_bytes = 99999;
#if GL_HAVE_TLS
  bad.tls_cert = e->server_crt;
  bad.tls_key = e->server_key;
#endif
  bad.extra = "[daemon]\nbogus_reload_key = 1";
  long off = gl_test_log_size(e);
  gl_test_write_conf(e, &bad);
  gl_test_signal(e, SIGHUP);
  GL_CHECKF(gl_test_log_wait(e, off, "bogus_reload_key", GL_TEST_WAIT_MS),
            "after SIGHUP with a bad config, the daemon did not log an error naming the key");
  gl_test_check_alive(e);
  wait_welcome_max(e, e->tcp_addr, false, max_bytes, "after the failed reload");
#if GL_HAVE_TLS
  int r = gl_test_tls_peer_is(e->tls_port, e->ca_a, e->client_crt, e->client_key, crt[5]);
  GL_CHECKF(r == 1, "after the failed reload the server must keep the last good certificate (%s)",
            r < 0 ? "handshake failed" : "another certificate");
#endif
  pingers_progress(p, NP, base, 2, "after the failed reload");

  /* And a good one is applied again afterwards. */
  c.max_message_bytes = max_bytes = 131072;
  gl_test_write_conf(e, &c);
  gl_test_signal(e, SIGHUP);
  wait_welcome_max(e, e->tcp_addr, false, max_bytes, "after recovering");
  pingers_progress(p, NP, base, 2, "after recovering");

  pingers_stop(p, NP);
  for (unsigned i = 0; i < NP; i++)
    gl_test_logf("%s: %lu pongs, never an error", p[i].label, atomic_load(&p[i].pongs));
  gl_test_stop(e);
}

/* Limits told in a Welcome hold for that connection: a reload that lowers
 * max_message_bytes applies to new connections only, and an existing client
 * that stays within the limit it was told is not dropped. */
static void sc_sighup_existing_limits(struct gl_test_env *e) {
  struct gl_test_conf c;
  gl_test_conf_defaults(&c);
  c.max_message_bytes = 65536;
  gl_test_start_conf(e, &c);
  struct gl_client *old = hello_client(e, e->tcp_addr, false, 65536, "client before reload");

  c.max_message_bytes = 2048;
  gl_test_write_conf(e, &c);
  gl_test_signal(e, SIGHUP);
  wait_welcome_max(e, e->tcp_addr, false, 2048, "after lowering max_message_bytes");

  size_t len = 0;
  uint8_t *frame = frame_with_body(31, 4096, &len);
  gl_test_send_raw(old, frame, len, "4096-byte frame on a connection told 65536");
  gl_test_expect_error(old, CODE(UNAVAILABLE), false, 31,
                       "4096-byte frame on a connection whose Welcome said 65536");
  gl_test_ping_ok(old, 1, "old client after its large frame");

  struct gl_client *fresh = hello_client(e, e->tcp_addr, false, 2048, "client after reload");
  gl_test_send_raw(fresh, frame, len, "4096-byte frame on a connection told 2048");
  gl_test_expect_error(fresh, CODE(TOO_LARGE), true, -1,
                       "4096-byte frame on a connection whose Welcome said 2048");
  gl_test_expect_eof(fresh, "after TOO_LARGE");
  free(frame);
  gl_client_destroy(fresh);
  gl_client_destroy(old);
  gl_test_stop(e);
}

/* A reload that moves [listen] tcp: listeners need a restart, so the old
 * one keeps serving, the new address is not opened, and the rest of the
 * file is applied. */
static void sc_sighup_listen_change(struct gl_test_env *e) {
  struct gl_test_conf c;
  gl_test_conf_defaults(&c);
  gl_test_start_conf(e, &c);
  struct gl_client *a = hello_client(e, e->tcp_addr, false, c.max_message_bytes, "client");
  uint16_t other = gl_test_free_port();
  char other_addr[64];
  snprintf(other_addr, sizeof other_addr, "127.0.0.1:%u", (unsigned)other);
  struct gl_test_conf n = c;
  n.tcp_value = other_addr;
  n.max_message_bytes = 12345;
  gl_test_write_conf(e, &n);
  gl_test_signal(e, SIGHUP);
  wait_welcome_max(e, e->tcp_addr, false, 12345, "old address after the reload");
  gl_test_ping_ok(a, 1, "client connected before the reload");
  int fd = gl_test_raw_connect(other, 0);
  if (fd >= 0)
    close(fd);
  GL_CHECKF(fd < 0, "the reload opened the new address %s without a restart", other_addr);
  gl_client_destroy(a);
  gl_test_stop(e);
}

#if GL_HAVE_TLS
/* Connect + Hello over TLS: true when welcomed, false when the TLS
 * handshake refused the client certificate. */
static bool tls_try_hello(struct gl_test_env *e, enum gl_test_cert cert, const char *what) {
  struct gl_client *c = NULL;
  char err[256];
  int rc = gl_test_try_connect(e, e->tls_addr, true, cert, &c, err, sizeof err);
  if (rc == GL_ETLS)
    return false;
  GL_CHECKF(rc == 0, "%s: connect: %s (%s)", what, gl_err_name(rc), err);
  struct gl_test_cmsg b;
  int s = gl_client_send(c, gl_test_msg_hello(&b, 1, "geolocd-it", NULL));
  gl_server_msg *m = NULL;
  int r = s == 0 ? gl_client_recv(c, GL_TEST_WAIT_MS, &m) : s;
  bool ok = r == 0 && IS_WELCOME(m);
  GL_CHECKF(ok || r == GL_ETLS || r == GL_ECLOSED || r == GL_EIO, "%s: %s", what,
            r == 0 ? gl_test_msg_str(m) : gl_err_name(r));
  gl_wire_free(m);
  gl_client_destroy(c);
  return ok;
}

/* SIGHUP applies a new client CA to new TLS connections only. */
static void sc_sighup_client_ca(struct gl_test_env *e) {
  struct gl_test_conf c;
  gl_test_conf_defaults(&c);
  c.listen_tls = true;
  gl_test_start_conf(e, &c);
  struct gl_client *old = hello_client(e, e->tls_addr, true, c.max_message_bytes, "CA A client");
  GL_CHECKF(!tls_try_hello(e, GL_TEST_CERT_B, "CA B client before reload"),
            "a client certificate from CA B was accepted while ca = CA A");

  c.tls_ca = e->ca_b;
  gl_test_write_conf(e, &c);
  gl_test_signal(e, SIGHUP);
  uint64_t deadline = gl_test_mono_ms() + GL_TEST_WAIT_MS;
  while (!tls_try_hello(e, GL_TEST_CERT_B, "CA B client after reload")) {
    GL_CHECKF(gl_test_mono_ms() < deadline, "ca = CA B not applied %d ms after SIGHUP",
              GL_TEST_WAIT_MS);
    gl_test_sleep_ms(50);
  }
  expect_tls_refused(e, GL_TEST_CERT_A, "CA A client after ca = CA B");
  /* The connection made under the old CA stays. */
  gl_test_ping_ok(old, 1, "CA A client connected before the reload");
  struct gl_test_cmsg m;
  gl_test_send(old, gl_test_msg_frame(&m, 4), "CA A client frame");
  gl_test_expect_error(old, CODE(UNAVAILABLE), false, 4, "CA A client frame");
  gl_client_destroy(old);
  gl_test_stop(e);
}
#endif

/* ---- SIGTERM ------------------------------------------------------------------------ */

static void expect_shutting_down(struct gl_client *c, const char *what) {
  gl_test_expect_error(c, CODE(SHUTTING_DOWN), true, -1, what);
  gl_test_expect_eof(c, what);
}

static void sc_sigterm_drain(struct gl_test_env *e) {
  struct gl_test_conf c;
  gl_test_conf_defaults(&c);
  c.listen_tls = GL_HAVE_TLS;
  c.drain_timeout_ms = 5000;
  c.handshake_timeout_ms = 60000; /* the client without Hello must outlive the test */
  gl_test_start_conf(e, &c);

  /* Connected first, never says Hello. The later clients are answered, so
   * this one (earlier in the accept queue) was accepted too. */
  struct gl_client *pre = gl_test_connect_plain(e);
  struct gl_client *idle1 = hello_client(e, e->tcp_addr, false, c.max_message_bytes, "idle 1");
  struct gl_client *idle2 = hello_client(e, e->tcp_addr, false, c.max_message_bytes, "idle 2");
  struct gl_client *tls = NULL;
#if GL_HAVE_TLS
  tls = hello_client(e, e->tls_addr, true, c.max_message_bytes, "idle tls");
#endif
  struct gl_client *half = hello_client(e, e->tcp_addr, false, c.max_message_bytes, "half");
  struct gl_test_cmsg b;
  size_t len = 0;
  uint8_t *ping = gl_test_encode(gl_test_msg_ping(&b, 1, 2), &len);
  gl_test_send_raw(half, ping, 3, "half a ping");
  free(ping);
  struct gl_client *pipe = hello_client(e, e->tcp_addr, false, c.max_message_bytes, "pipeline");
  enum { N = 100 };
  uint64_t t0 = gl_test_now_us();
  for (unsigned i = 0; i < N; i++)
    gl_test_send(pipe, gl_test_msg_ping(&b, i, t0 + i), "pipelined ping");
  gl_test_expect_pong(pipe, 0, t0, "first pipelined pong");
  gl_test_ping_ok(idle1, 1, "idle 1 before SIGTERM");
  gl_test_sleep_ms(100);

  gl_test_signal(e, SIGTERM);
  /* Only Pongs, in order, then SHUTTING_DOWN, then EOF. */
  unsigned k = 1;
  for (;;) {
    gl_server_msg *m = gl_test_recv(pipe, GL_TEST_WAIT_MS, "pipeline during drain");
    if (IS_PONG(m)) {
      GL_CHECKF(k < N, "more Pongs than Pings: %s", gl_test_msg_str(m));
      GL_CHECKF(m->pong->has_nonce && m->pong->nonce == k && m->pong->send_time_us == t0 + k,
                "drain: expected Pong{nonce=%u}, got %s", k, gl_test_msg_str(m));
      k++;
      gl_wire_free(m);
      continue;
    }
    GL_CHECKF(IS_ERROR(m) && m->error->code == CODE(SHUTTING_DOWN) && m->error->has_fatal &&
                  m->error->fatal,
              "drain: after %u Pongs expected Pong or Error{SHUTTING_DOWN, fatal}, got %s", k,
              gl_test_msg_str(m));
    gl_wire_free(m);
    break;
  }
  gl_test_expect_eof(pipe, "pipeline after SHUTTING_DOWN");
  gl_test_logf("pipelined client: %u of %d Pongs before SHUTTING_DOWN", k, N);
  expect_shutting_down(idle1, "idle 1");
  expect_shutting_down(idle2, "idle 2");
  expect_shutting_down(half, "client with half a message");
  expect_shutting_down(pre, "client that never sent Hello");
  if (tls)
    expect_shutting_down(tls, "idle tls");

  /* Listeners are closed. */
  struct gl_client *late = NULL;
  char err[256];
  int rc = gl_test_try_connect(e, e->tcp_addr, false, GL_TEST_CERT_NONE, &late, err, sizeof err);
  GL_CHECKF(rc != 0, "a new plaintext connection succeeded after SIGTERM");
#if GL_HAVE_TLS
  rc = gl_test_try_connect(e, e->tls_addr, true, GL_TEST_CERT_A, &late, err, sizeof err);
  GL_CHECKF(rc != 0, "a new TLS connection succeeded after SIGTERM");
#endif
  gl_test_logf("every client drained, new connections refused");
  gl_client_destroy(pre);
  gl_client_destroy(idle1);
  gl_client_destroy(idle2);
  gl_client_destroy(half);
  gl_client_destroy(pipe);
  if (tls)
    gl_client_destroy(tls);
  gl_test_expect_exit0(e, 20000);
}

/* SIGINT stops like SIGTERM. */
static void sc_sigint(struct gl_test_env *e) {
  struct gl_test_conf c;
  gl_test_conf_defaults(&c);
  gl_test_start_conf(e, &c);
  struct gl_client *a = hello_client(e, e->tcp_addr, false, c.max_message_bytes, "client");
  gl_test_ping_ok(a, 1, "before SIGINT");
  gl_test_signal(e, SIGINT);
  expect_shutting_down(a, "client at SIGINT");
  gl_client_destroy(a);
  gl_test_expect_exit0(e, 20000);
}

/* A client that stops reading cannot hold the daemon beyond drain_timeout. */
static void sc_drain_timeout(struct gl_test_env *e) {
  struct gl_test_conf c;
  gl_test_conf_defaults(&c);
  c.drain_timeout_ms = 500;
  gl_test_start_conf(e, &c);
  struct gl_client *good = hello_client(e, e->tcp_addr, false, c.max_message_bytes, "good");

  /* The stuck client: a small receive buffer, a Hello, then frames sent as
   * fast as the daemon takes them, never reading the answers. */
  int fd = gl_test_raw_connect(e->tcp_port, 4096);
  GL_CHECK(fd >= 0);
  struct gl_test_cmsg b;
  size_t len = 0;
  uint8_t *hello = gl_test_encode(gl_test_msg_hello(&b, 1, "stuck", NULL), &len);
  GL_CHECK(send(fd, hello, len, MSG_NOSIGNAL) == (ssize_t)len);
  free(hello);
  gl_client_msg m = GEOLOC__V1__CLIENT_MESSAGE__INIT;
  Geoloc__V1__Frame f = GEOLOC__V1__FRAME__INIT;
  f.has_frame_id = 1;
  f.frame_id = 1u << 20;
  m.msg_case = GEOLOC__V1__CLIENT_MESSAGE__MSG_FRAME;
  m.frame = &f;
  uint8_t *one = gl_test_encode(&m, &len);
  enum { CHUNK = 4096 };
  size_t per = CHUNK / len, clen = per * len;
  uint8_t *chunk = malloc(clen);
  GL_CHECK(chunk);
  for (size_t i = 0; i < per; i++)
    memcpy(chunk + i * len, one, len);
  free(one);
  size_t total = 0, off = 0;
  uint64_t start = gl_test_mono_ms(), stall = 0;
  while (total < (2u << 20) && gl_test_mono_ms() - start < 3000) {
    ssize_t w = send(fd, chunk + off, clen - off, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (w > 0) {
      total += (size_t)w;
      off = (off + (size_t)w) % clen;
      stall = 0;
      continue;
    }
    GL_CHECKF(w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK), "stuck client: send failed: %s",
              w < 0 ? strerror(errno) : "0");
    if (!stall)
      stall = gl_test_mono_ms();
    else if (gl_test_mono_ms() - stall > 300)
      break;
    gl_test_sleep_ms(10);
  }
  free(chunk);
  gl_test_logf("stuck client sent %zu bytes of frames (%s)", total,
               stall ? "both directions full" : "daemon still reading");
  gl_test_ping_ok(good, 1, "good client before SIGTERM");

  uint64_t t = gl_test_mono_ms();
  gl_test_signal(e, SIGTERM);
  expect_shutting_down(good, "good client");
  gl_client_destroy(good);
  gl_test_expect_exit0(e, 15000);
  uint64_t ms = gl_test_mono_ms() - t;
  gl_test_logf("daemon exited %llu ms after SIGTERM (drain_timeout 500 ms)%s",
               (unsigned long long)ms,
               ms < 450 ? "; it flushed everything, the timeout was not needed" : "");
  close(fd);
}

/* ---- command line -------------------------------------------------------------------- */

struct run_result {
  int status;
  char *out;
  char *err;
};

static void run_daemon(struct gl_test_env *e, const char *const *args, struct run_result *r) {
  static unsigned seq;
  char out[400], err[400];
  seq++;
  snprintf(out, sizeof out, "%s/run%u.out", e->dir, seq);
  snprintf(err, sizeof err, "%s/run%u.err", e->dir, seq);
  const char *argv[8] = {e->daemon};
  for (size_t i = 0; args[i] && i < 6; i++)
    argv[i + 1] = args[i];
  struct gl_test_spawn s = {.argv = argv, .stdout_path = out, .stderr_path = err};
  pid_t pid = gl_test_spawn(&s);
  e->pid = pid;
  int st = 0;
  if (gl_test_wait_pid(pid, 15000, &st) != 0) {
    e->pid = 0;
    GL_FAIL("geolocd %s %s %s did not exit within 15 s", args[0], args[1] ? args[1] : "",
            args[1] && args[2] ? args[2] : "");
  }
  e->pid = 0;
  r->status = st;
  r->out = gl_test_read_file(out);
  r->err = gl_test_read_file(err);
  GL_CHECK(r->out && r->err);
  gl_test_logf("geolocd %s %s %s -> %s; stdout: %s; stderr: %s", args[0], args[1] ? args[1] : "",
               args[1] && args[2] ? args[2] : "", gl_test_status_str(st), r->out, r->err);
}

static void run_free(struct run_result *r) {
  free(r->out);
  free(r->err);
}

static bool exited(const struct run_result *r, int code) {
  return WIFEXITED(r->status) && WEXITSTATUS(r->status) == code;
}

static void check_config(struct gl_test_env *e, const char *path, int want_code,
                         const char *want_stderr, const char *what) {
  const char *args[] = {"--config", path, "--check-config", NULL};
  struct run_result r;
  run_daemon(e, args, &r);
  GL_CHECKF(exited(&r, want_code), "%s: --check-config should exit %d, got %s; stderr: %s", what,
            want_code, gl_test_status_str(r.status), r.err);
  if (want_code == 0) {
    char ok[420];
    snprintf(ok, sizeof ok, "%s: ok", path);
    GL_CHECKF(strstr(r.out, ok), "%s: stdout should say \"%s\", got \"%s\"", what, ok, r.out);
  }
  if (want_stderr)
    GL_CHECKF(strstr(r.err, want_stderr), "%s: stderr should name \"%s\", got \"%s\"", what,
              want_stderr, r.err);
  run_free(&r);
}

static void sc_check_config(struct gl_test_env *e) {
  char path[400], port[64];
  struct gl_test_conf c;
  gl_test_conf_defaults(&c);
  c.listen_tls = GL_HAVE_TLS;
  c.listen_unix = true;
  snprintf(path, sizeof path, "%s/good.conf", e->dir);
  gl_test_write_conf_to(e, &c, path);
  check_config(e, path, 0, NULL, "good config");

  snprintf(port, sizeof port, "0.0.0.0:%u", (unsigned)e->tcp_port);
  c.tcp_value = port;
  snprintf(path, sizeof path, "%s/remote.conf", e->dir);
  gl_test_write_conf_to(e, &c, path);
  check_config(e, path, 1, "[listen] tcp", "plaintext on 0.0.0.0");
  check_config(e, path, 1, "remote.conf", "plaintext on 0.0.0.0 (file named)");

  c.allow_remote_plaintext = true;
  snprintf(path, sizeof path, "%s/remote-allowed.conf", e->dir);
  gl_test_write_conf_to(e, &c, path);
  check_config(e, path, 0, NULL, "plaintext on 0.0.0.0 with allow_remote_plaintext");

  gl_test_conf_defaults(&c);
  c.extra = "[daemon]\nbogus_check_key = 1";
  snprintf(path, sizeof path, "%s/unknown-key.conf", e->dir);
  gl_test_write_conf_to(e, &c, path);
  check_config(e, path, 1, "bogus_check_key", "unknown key");

  gl_test_conf_defaults(&c);
  c.max_clients = 0;
  snprintf(path, sizeof path, "%s/range.conf", e->dir);
  gl_test_write_conf_to(e, &c, path);
  check_config(e, path, 1, "max_clients", "max_clients out of range");

  snprintf(path, sizeof path, "%s/does-not-exist.conf", e->dir);
  check_config(e, path, 1, "does-not-exist.conf", "missing config file");

#if GL_HAVE_TLS
  char missing[400];
  gl_test_conf_defaults(&c);
  c.listen_tls = true;
  snprintf(missing, sizeof missing, "%s/missing.crt", e->dir);
  c.tls_cert = missing;
  snprintf(path, sizeof path, "%s/missing-cert.conf", e->dir);
  gl_test_write_conf_to(e, &c, path);
  check_config(e, path, 1, NULL, "TLS certificate file missing");

  gl_test_conf_defaults(&c);
  c.listen_tls = true;
  c.tls_key = e->client_key; /* not the key of server.crt */
  snprintf(path, sizeof path, "%s/wrong-key.conf", e->dir);
  gl_test_write_conf_to(e, &c, path);
  check_config(e, path, 1, NULL, "TLS key not matching the certificate");

  /* A private key other users can read: a warning naming it, not a refusal. */
  char key[400];
  snprintf(key, sizeof key, "%s/readable.key", e->dir);
  char *pem = gl_test_read_file(e->server_key);
  FILE *f = fopen(key, "w");
  GL_CHECK(pem && f && fputs(pem, f) >= 0);
  if (f)
    fclose(f);
  free(pem);
  GL_CHECK(chmod(key, 0644) == 0);
  gl_test_conf_defaults(&c);
  c.listen_tls = true;
  c.tls_key = key;
  snprintf(path, sizeof path, "%s/readable-key.conf", e->dir);
  gl_test_write_conf_to(e, &c, path);
  check_config(e, path, 0, "readable.key has mode 0644", "world-readable TLS key");
  GL_CHECK(chmod(key, 0640) == 0);
  {
    const char *args[] = {"--config", path, "--check-config", NULL};
    struct run_result r;
    run_daemon(e, args, &r);
    GL_CHECKF(exited(&r, 0) && !strstr(r.err, "has mode"),
              "a 0640 key: --check-config should pass without a warning; stderr: %s", r.err);
    run_free(&r);
  }

  /* A cipher list OpenSSL cannot use stops the start. */
  gl_test_conf_defaults(&c);
  c.listen_tls = true;
  c.extra = "[tls]\nciphers = NO-SUCH-CIPHER";
  snprintf(path, sizeof path, "%s/ciphers.conf", e->dir);
  gl_test_write_conf_to(e, &c, path);
  check_config(e, path, 1, "[tls] ciphers", "unusable [tls] ciphers");
#endif

  /* The daemon itself refuses such a config too, and exits. */
  snprintf(path, sizeof path, "%s/remote.conf", e->dir);
  const char *args[] = {"--config", path, NULL};
  struct run_result r;
  run_daemon(e, args, &r);
  GL_CHECKF(WIFEXITED(r.status) && WEXITSTATUS(r.status) != 0,
            "geolocd with a bad config should exit non-zero, got %s", gl_test_status_str(r.status));
  run_free(&r);
}

static void sc_cli(struct gl_test_env *e) {
  struct run_result r;
  const char *version[] = {"--version", NULL};
  run_daemon(e, version, &r);
  char want[64];
  snprintf(want, sizeof want, "geolocd %s (protocol %d)\n", GL_VERSION, GL_PROTOCOL_VERSION);
  GL_CHECKF(exited(&r, 0), "--version should exit 0, got %s", gl_test_status_str(r.status));
  GL_CHECKF(strcmp(r.out, want) == 0, "--version printed \"%s\", expected \"%s\"", r.out, want);
  run_free(&r);
  const char *bad[] = {"--no-such-option", NULL};
  run_daemon(e, bad, &r);
  GL_CHECKF(exited(&r, 2), "an unknown option should exit 2, got %s", gl_test_status_str(r.status));
  run_free(&r);
  const char *noarg[] = {"--config", NULL};
  run_daemon(e, noarg, &r);
  GL_CHECKF(exited(&r, 2), "--config without a file should exit 2, got %s",
            gl_test_status_str(r.status));
  run_free(&r);
}

/* ---- unix socket --------------------------------------------------------------------- */

static void sc_unix_socket(struct gl_test_env *e) {
  struct gl_test_conf c;
  gl_test_conf_defaults(&c);
  c.listen_tcp = false;
  c.listen_unix = true;
  gl_test_start_conf(e, &c);
  struct stat st;
  GL_CHECKF(stat(e->unix_path, &st) == 0 && S_ISSOCK(st.st_mode), "%s is not a socket",
            e->unix_path);
  struct gl_client *a = hello_client(e, e->unix_addr, false, c.max_message_bytes, "unix a");
  struct gl_client *b = hello_client(e, e->unix_addr, false, c.max_message_bytes, "unix b");
  gl_test_ping_ok(a, 1, "unix ping");
  struct gl_test_cmsg m;
  gl_test_send(b, gl_test_msg_frame(&m, 5), "unix frame");
  gl_test_expect_error(b, CODE(UNAVAILABLE), false, 5, "unix frame");
  gl_test_ping_ok(b, 2, "unix ping after frame");
  send_garbage(a, 99u, "unix garbage");
  gl_test_expect_error(a, CODE(MALFORMED), true, -1, "unix garbage");
  gl_test_expect_eof(a, "unix garbage");
  gl_test_ping_ok(b, 3, "unix ping after the other client's garbage");
  gl_client_destroy(a);
  gl_client_destroy(b);
  gl_test_stop(e);
}

/* ---- systemd ----------------------------------------------------------------------------- */

#if GL_HAVE_SYSTEMD
/* Reads notify datagrams until a line equal to want arrives. Counts the
 * WATCHDOG=1 lines seen. Returns false on timeout. */
static bool notify_wait(int fd, const char *want, int timeout_ms, unsigned *watchdogs) {
  uint64_t deadline = gl_test_mono_ms() + (uint64_t)timeout_ms;
  for (;;) {
    uint64_t now = gl_test_mono_ms();
    if (now >= deadline)
      return false;
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    int pr = poll(&pfd, 1, (int)(deadline - now));
    if (pr <= 0)
      continue;
    char buf[4096];
    ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
    if (n <= 0)
      continue;
    buf[n] = '\0';
    bool found = false;
    for (char *save = NULL, *line = strtok_r(buf, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save)) {
      if (strcmp(line, "WATCHDOG=1") == 0) {
        if (watchdogs)
          (*watchdogs)++;
      } else {
        gl_test_logf("notify: %s", line);
      }
      if (want && strcmp(line, want) == 0)
        found = true;
    }
    if (found)
      return true;
  }
}

static int notify_socket(struct gl_test_env *e, char *env, size_t envlen) {
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  GL_CHECK(fd >= 0);
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  char path[400];
  snprintf(path, sizeof path, "%s/notify.sock", e->dir);
  GL_CHECKF(strlen(path) < sizeof sa.sun_path, "socket path too long: %s", path);
  memcpy(sa.sun_path, path, strlen(path) + 1);
  GL_CHECKF(bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0, "bind %s: %s", sa.sun_path,
            strerror(errno));
  snprintf(env, envlen, "NOTIFY_SOCKET=%s", sa.sun_path);
  return fd;
}

static void sc_sd_notify(struct gl_test_env *e) {
  char env_notify[200];
  int nfd = notify_socket(e, env_notify, sizeof env_notify);
  struct gl_test_conf c;
  gl_test_conf_defaults(&c);
  gl_test_write_conf(e, &c);
  const char *env[] = {env_notify, "WATCHDOG_USEC=400000", NULL};
  struct gl_test_start_opts o = {.env_add = env, .no_wait_ready = true};
  gl_test_start(e, &o);

  unsigned wd = 0;
  GL_CHECKF(notify_wait(nfd, "READY=1", 15000, &wd), "no READY=1 within 15 s");
  uint64_t t_ready = gl_test_mono_ms();
  /* READY=1 means listening: one attempt, no retry. */
  int fd = gl_test_raw_connect(e->tcp_port, 0);
  GL_CHECKF(fd >= 0, "READY=1 was sent before %s accepted connections", e->tcp_addr);
  close(fd);
  struct gl_client *a = hello_client(e, e->tcp_addr, false, c.max_message_bytes, "after READY");
  gl_test_ping_ok(a, 1, "after READY");

  wd = 0;
  int64_t left = 2000 - (int64_t)(gl_test_mono_ms() - t_ready);
  if (left > 0)
    notify_wait(nfd, NULL, (int)left, &wd);
  gl_test_logf("%u WATCHDOG=1 within 2 s of READY=1 (WATCHDOG_USEC=400000)", wd);
  GL_CHECKF(wd >= 2, "expected at least two WATCHDOG=1 within 2 s, got %u", wd);

  gl_test_signal(e, SIGHUP);
  GL_CHECKF(notify_wait(nfd, "RELOADING=1", GL_TEST_WAIT_MS, NULL), "no RELOADING=1 on SIGHUP");
  GL_CHECKF(notify_wait(nfd, "READY=1", GL_TEST_WAIT_MS, NULL),
            "no READY=1 after RELOADING=1 on SIGHUP");
  gl_test_ping_ok(a, 2, "after reload");

  gl_test_signal(e, SIGTERM);
  GL_CHECKF(notify_wait(nfd, "STOPPING=1", GL_TEST_WAIT_MS, NULL), "no STOPPING=1 on SIGTERM");
  expect_shutting_down(a, "client at SIGTERM");
  gl_client_destroy(a);
  gl_test_expect_exit0(e, 20000);
  close(nfd);
}

static int listen_on(uint32_t addr, uint16_t *port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  GL_CHECK(fd >= 0);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
  sa.sin_addr.s_addr = htonl(addr);
  GL_CHECKF(bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0, "bind: %s", strerror(errno));
  GL_CHECKF(listen(fd, 128) == 0, "listen: %s", strerror(errno));
  socklen_t sl = sizeof sa;
  GL_CHECK(getsockname(fd, (struct sockaddr *)&sa, &sl) == 0);
  *port = ntohs(sa.sin_port);
  return fd;
}

static int listen_loopback(uint16_t *port) { return listen_on(INADDR_LOOPBACK, port); }

static void set_ports(struct gl_test_env *e, uint16_t tcp, uint16_t tls) {
  e->tcp_port = tcp;
  e->tls_port = tls;
  snprintf(e->tcp_addr, sizeof e->tcp_addr, "127.0.0.1:%u", (unsigned)tcp);
  snprintf(e->tls_addr, sizeof e->tls_addr, "127.0.0.1:%u", (unsigned)tls);
}

static void sc_socket_activation(struct gl_test_env *e) {
  uint16_t port = 0;
  int lfd = listen_loopback(&port);
  set_ports(e, port, e->tls_port);
  struct gl_test_conf c;
  gl_test_conf_defaults(&c);
  c.listen_tcp = false; /* no [listen] keys at all */
  gl_test_write_conf(e, &c);
  const char *env[] = {"LISTEN_FDS=1", "LISTEN_FDNAMES=plain", NULL};
  struct gl_test_start_opts o = {
      .env_add = env, .pass_fds = &lfd, .n_pass_fds = 1, .set_listen_pid = true};
  gl_test_start(e, &o);
  close(lfd); /* the daemon holds the only copy now */

  struct gl_client *a = hello_client(e, e->tcp_addr, false, c.max_message_bytes, "activated");
  gl_test_ping_ok(a, 1, "activated");
  struct gl_test_cmsg m;
  gl_test_send(a, gl_test_msg_frame(&m, 8), "activated frame");
  gl_test_expect_error(a, CODE(UNAVAILABLE), false, 8, "activated frame");
  struct gl_client *b = hello_client(e, e->tcp_addr, false, c.max_message_bytes, "activated b");
  gl_test_ping_ok(b, 2, "activated b");
  gl_client_destroy(b);
  gl_client_destroy(a);
  gl_test_stop(e);
}

/* An activated plaintext socket on a non-loopback address is refused unless
 * allow_remote_plaintext = true. */
static void sc_socket_activation_remote(struct gl_test_env *e) {
  uint16_t port = 0;
  int lfd = listen_on(INADDR_ANY, &port);
  set_ports(e, port, e->tls_port);
  struct gl_test_conf c;
  gl_test_conf_defaults(&c);
  c.listen_tcp = false;
  gl_test_write_conf(e, &c);
  const char *env[] = {"LISTEN_FDS=1", "LISTEN_FDNAMES=plain", NULL};
  struct gl_test_start_opts o = {
      .env_add = env, .pass_fds = &lfd, .n_pass_fds = 1, .set_listen_pid = true};
  gl_test_start(e, &o);
  int st = 0;
  int r = gl_test_wait_pid(e->pid, 15000, &st);
  e->pid = 0;
  GL_CHECKF(r == 0, "geolocd served an activated plaintext socket on 0.0.0.0 without "
                    "allow_remote_plaintext (still running after 15 s)");
  GL_CHECKF(WIFEXITED(st) && WEXITSTATUS(st) != 0,
            "activated plaintext socket on 0.0.0.0: expected a non-zero exit, got %s",
            gl_test_status_str(st));
  gl_test_logf("refused without allow_remote_plaintext: %s", gl_test_status_str(st));

  c.allow_remote_plaintext = true;
  gl_test_write_conf(e, &c);
  gl_test_start(e, &o);
  close(lfd);
  struct gl_client *a = hello_client(e, e->tcp_addr, false, c.max_message_bytes, "allowed");
  gl_test_ping_ok(a, 1, "allowed");
  gl_client_destroy(a);
  gl_test_stop(e);
}

static void sc_socket_activation_tls(struct gl_test_env *e) {
#if GL_HAVE_TLS
  uint16_t p1 = 0, p2 = 0;
  int fds[2];
  fds[0] = listen_loopback(&p1);
  fds[1] = listen_loopback(&p2);
  set_ports(e, p1, p2);
  struct gl_test_conf c;
  gl_test_conf_defaults(&c);
  c.listen_tcp = false;
  c.tls_section = true;
  gl_test_write_conf(e, &c);
  const char *env[] = {"LISTEN_FDS=2", "LISTEN_FDNAMES=plain:tls", NULL};
  struct gl_test_start_opts o = {
      .env_add = env, .pass_fds = fds, .n_pass_fds = 2, .set_listen_pid = true};
  gl_test_start(e, &o);
  close(fds[0]);
  close(fds[1]);

  struct gl_client *t = hello_client(e, e->tls_addr, true, c.max_message_bytes, "activated tls");
  gl_test_ping_ok(t, 1, "activated tls");
  struct gl_client *p = hello_client(e, e->tcp_addr, false, c.max_message_bytes, "activated plain");
  gl_test_ping_ok(p, 2, "activated plain");
  expect_tls_refused(e, GL_TEST_CERT_NONE, "activated tls without a client certificate");
  gl_test_ping_ok(t, 3, "activated tls at the end");
  gl_client_destroy(t);
  gl_client_destroy(p);
  gl_test_stop(e);
#else
  (void)e;
#endif
}
#endif

/* ---- main ------------------------------------------------------------------------------- */

enum { NEED_TLS = 1, NEED_SYSTEMD = 2 };

struct scenario {
  const char *name;
  void (*fn)(struct gl_test_env *e);
  unsigned needs;
};

#if GL_HAVE_TLS
#define TLS_FN(f) f
#else
#define TLS_FN(f) NULL
#endif
#if GL_HAVE_SYSTEMD
#define SD_FN(f) f
#else
#define SD_FN(f) NULL
#endif

static const struct scenario k_scenarios[] = {
    {"handshake", sc_handshake, 0},
    {"second_hello", sc_second_hello, 0},
    {"hello_unknown_map", sc_hello_unknown_map, 0},
    {"ping", sc_ping, 0},
    {"half_close", sc_half_close, 0},
    {"frame_unavailable", sc_frame_unavailable, 0},
    {"frame_before_hello", sc_frame_before_hello, 0},
    {"ping_before_hello", sc_ping_before_hello, 0},
    {"wrong_version", sc_wrong_version, 0},
    {"oversized_prefix", sc_oversized_prefix, 0},
    {"garbage", sc_garbage, 0},
    {"half_message_stall", sc_half_message_stall, 0},
    {"idle_timeout", sc_idle_timeout, 0},
    {"concurrent_64", sc_concurrent_64, 0},
    {"max_clients", sc_max_clients, 0},
    {"max_clients_tls", TLS_FN(sc_max_clients_tls), NEED_TLS},
    {"bad_client_isolated", sc_bad_client_isolated, 0},
    {"tls_ok", TLS_FN(sc_tls_ok), NEED_TLS},
    {"tls_no_client_cert", TLS_FN(sc_tls_no_client_cert), NEED_TLS},
    {"tls_other_ca", TLS_FN(sc_tls_other_ca), NEED_TLS},
    {"tls_handshake_stall", TLS_FN(sc_tls_handshake_stall), NEED_TLS},
    {"sighup_under_load", sc_sighup_under_load, 0},
    {"sighup_existing_limits", sc_sighup_existing_limits, 0},
    {"sighup_listen_change", sc_sighup_listen_change, 0},
    {"sighup_client_ca", TLS_FN(sc_sighup_client_ca), NEED_TLS},
    {"sigterm_drain", sc_sigterm_drain, 0},
    {"sigint", sc_sigint, 0},
    {"drain_timeout", sc_drain_timeout, 0},
    {"check_config", sc_check_config, 0},
    {"cli", sc_cli, 0},
    {"unix_socket", sc_unix_socket, 0},
    {"sd_notify", SD_FN(sc_sd_notify), NEED_SYSTEMD},
    {"socket_activation", SD_FN(sc_socket_activation), NEED_SYSTEMD},
    {"socket_activation_tls", SD_FN(sc_socket_activation_tls), NEED_SYSTEMD | NEED_TLS},
    {"socket_activation_remote", SD_FN(sc_socket_activation_remote), NEED_SYSTEMD},
};

int main(int argc, char **argv) {
  const char *daemon = NULL, *name = NULL;
  setvbuf(stdout, NULL, _IONBF, 0);
  if (argc == 2) {
    name = argv[1];
    daemon = getenv("GEOLOCD");
  } else if (argc == 3) {
    daemon = argv[1];
    name = argv[2];
  }
  if (name && strcmp(name, "list") == 0) {
    for (size_t i = 0; i < sizeof k_scenarios / sizeof k_scenarios[0]; i++)
      printf("%s\n", k_scenarios[i].name);
    return 0;
  }
  if (!name) {
    fprintf(stderr, "usage: %s [GEOLOCD] SCENARIO|list   (GEOLOCD defaults to $GEOLOCD)\n",
            argv[0]);
    return 1;
  }
  const struct scenario *sc = NULL;
  for (size_t i = 0; i < sizeof k_scenarios / sizeof k_scenarios[0]; i++)
    if (strcmp(k_scenarios[i].name, name) == 0)
      sc = &k_scenarios[i];
  if (!sc) {
    fprintf(stderr, "unknown scenario '%s' (try: %s list)\n", name, argv[0]);
    return 1;
  }
  if ((sc->needs & NEED_TLS) && !GL_HAVE_TLS) {
    printf("SKIP %s: built without TLS\n", name);
    return GL_TEST_SKIP;
  }
  if ((sc->needs & NEED_SYSTEMD) && !GL_HAVE_SYSTEMD) {
    printf("SKIP %s: built without systemd\n", name);
    return GL_TEST_SKIP;
  }
  if (!daemon || !daemon[0]) {
    fprintf(stderr, "FAIL: no geolocd binary (pass it as the first argument or in $GEOLOCD)\n");
    return 1;
  }
  if (access(daemon, X_OK) != 0) {
    fprintf(stderr, "FAIL: %s is not executable: %s\n", daemon, strerror(errno));
    return 1;
  }
  struct gl_test_env e;
  gl_test_env_init(&e, daemon);
  if (GL_HAVE_TLS)
    gl_test_env_certs(&e);
  gl_test_logf("scenario %s, temp dir %s, geolocd %s", name, e.dir, daemon);
  sc->fn(&e);
  gl_test_env_fini(&e);
  printf("PASS %s\n", name);
  return 0;
}
