#include "server.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "core/addr.h"
#include "core/err.h"
#include "core/log.h"
#include "gl_build_config.h"
#include "metrics.h"
#include "pipeline.h"
#include "proto/wire.h"
#include "runtime.h"
#include "sd.h"
#include "tls.h"

#define GL_MAX_LISTENERS 16
/* Connections beyond max_clients are still accepted long enough to be told
 * why they are refused. A plaintext one is told at once and closed as soon
 * as that is written; a TLS one needs its TLS handshake first, and beyond
 * this many connections over max_clients it is closed without a word. */
#define GL_REJECT_SLACK 64
/* Refused and evicted connections are logged in a summary at most this
 * often (each one at debug level): a flood must not flood the log. */
#define GL_REFUSAL_LOG_MS 10000
/* Buckets of the per-source-address connection counts. */
#define GL_SRC_BUCKETS 1024
/* After a fatal error the server keeps reading (and discarding) for this
 * long, so that the peer sees the Error rather than a reset. */
#define GL_LINGER_MS 2000
/* A client that does not read its answers stops being read from once this
 * much memory holds output queued for it, and is resumed below the low
 * mark. The count is of the memory itself (each write request and its
 * allocation, not only the payload: a 17-byte Pong costs ~250 bytes), so
 * 256 clients that never read cost at most ~256 MiB. One that still grows
 * past GL_WRITE_MAX (the answers to the frames it had in flight) is
 * closed. */
/* The largest message accepted before Hello (a Hello is a few short
 * strings): an unauthenticated peer cannot make the server buffer and
 * unpack max_message_bytes. Raised to max_message_bytes after Welcome. */
#define GL_HELLO_MAX_BYTES (64u << 10)
#define GL_WRITE_HIGH (1u << 20)
#define GL_WRITE_LOW (256u << 10)
#define GL_WRITE_MAX (8u << 20)
/* What one queued write costs besides its payload: the request and the
 * allocator's own header. */
#define GL_WRITE_OVERHEAD (sizeof(struct gl_write) + 16u)
#define GL_READ_CHUNK 65536
/* Room for a client's string (a map or client name) quoted in a log line
 * or an Error, escaped by gl_log_escape: the longest map name (64 bytes)
 * fits with room to spare, and anything longer ends in "...". */
#define GL__CLIENT_STR 96

typedef Geoloc__V1__Error__Code gl_err_code;

union gl_stream {
  uv_handle_t handle;
  uv_stream_t stream;
  uv_tcp_t tcp;
  uv_pipe_t pipe;
};

struct gl_listener {
  union gl_stream io;
  struct gl_server *srv;
  bool tls;
  bool is_pipe;
  char name[160];    /* for the log: "tls 127.0.0.1:7443" */
  char *unlink_path; /* unix socket file we created, removed on stop */
  dev_t unix_dev;    /* ... while it is still the file we bound */
  ino_t unix_ino;
};

enum gl_conn_state {
  GL_CONN_HANDSHAKE, /* waiting for TLS and Hello */
  GL_CONN_READY,     /* Welcome sent */
  GL_CONN_CLOSING,   /* no more messages are read; flushing, then close */
};

struct gl_conn {
  struct gl_server *srv;
  union gl_stream io;
  uv_timer_t timer; /* handshake, idle or linger deadline, by state */
  uv_shutdown_t shutdown_req;
  struct gl_conn *prev, *next;
  struct gl_tls_conn *tls; /* NULL for plaintext */
  struct gl_wire_decoder dec;
  enum gl_conn_state state;
  bool tls_up;     /* TLS handshake complete */
  bool admitted;   /* holds one of max_clients slots */
  bool reject;     /* over the limit: refuse once we can speak */
  bool read_paused;
  size_t out_bytes; /* memory held by queued writes (GL_WRITE_OVERHEAD each + payload) */
  bool peer_eof;
  bool shutdown_done;
  bool closing;  /* uv_close issued */
  bool draining; /* SIGTERM: answer what is in flight, then say goodbye */
  uint32_t inflight; /* frames accepted and not answered yet */
  gl_err_code bye_code; /* while draining: the fatal Error to send last */
  char bye_text[256];
  char map[65];      /* the map this stream localizes against */
  struct gl_stream_track *trk; /* a tracked stream (StreamOptions.track); NULL otherwise */
  int open_handles;
  uint64_t session_id;
  char peer[96];

  bool peer_done;   /* the client sends no more (EOF, close_notify): answer, then close */
  bool reject_addr; /* rejected for its source address (max_clients_per_address) */
  bool refused;     /* told RESOURCE_EXHAUSTED: closed once that is flushed */
  /* The stream's limits from Hello's StreamOptions, within the server's. */
  uint32_t max_inflight; /* frames in flight at once */
  uint32_t top_k;        /* candidates when a Frame does not set top_k */
  uint32_t dropped;      /* answers that found the connection closed */
  /* While admitted: its place among the connections without Hello, oldest
   * first (in_hs), and its source address's count (NULL for unix). */
  bool in_hs;
  struct gl_conn *hs_prev, *hs_next;
  struct gl_src *src;
};

/* Admitted connections from one source address (max_clients_per_address). */
struct gl_src {
  struct gl_src *next; /* in its hash bucket */
  uint8_t addr[16];    /* IPv6, or IPv4 as ::ffff:a.b.c.d */
  uint32_t n;
};

struct gl_write {
  uv_write_t req;
  struct gl_conn *conn;
  uv_buf_t buf;
  uint8_t data[];
};

struct gl_server {
  uv_loop_t *loop;
  struct gl_config cfg;
  struct gl_runtime *rt; /* NULL without a [model] */
  struct gl_metrics *metrics;
  uv_timer_t heartbeat;
  struct gl_pipeline *pipe;
  uint32_t queued; /* frames in the pipeline, all clients */
  /* A SIGHUP loads the new runtime on the thread pool. */
  bool reloading, reload_again;
  uv_work_t reload_work;
  struct gl_config reload_cfg;
  struct gl_runtime *reload_rt;
  struct gl_tls_ctx *reload_ctx;
  int reload_rc;
  char reload_err[512];
  struct gl_tls_ctx *tls_ctx;
  struct gl_listener listeners[GL_MAX_LISTENERS];
  int n_listeners;
  bool activated; /* listeners came from systemd */
  uv_signal_t sig_term, sig_int, sig_hup;
  uv_timer_t watchdog, drain;
  uint64_t watchdog_ms;
  struct gl_conn *conns;
  uint32_t n_conns, n_admitted;
  /* Admitted connections that have not said Hello, oldest first: the ones
   * evicted when a new connection finds max_clients taken. */
  struct gl_conn *hs_head, *hs_tail;
  struct gl_src *src[GL_SRC_BUCKETS];
  uint32_t src_seed;
  /* Refused, evicted, and cut (closed without a word) since the last
   * summary in the log. */
  uint64_t n_refused[3];
  uint64_t refusal_logged_ms;
  bool refusal_logged;
  uint64_t next_session;
  bool stopping, finished;
  uint8_t read_buf[GL_READ_CHUNK]; /* the loop reads one chunk at a time */
  uint8_t plain_buf[GL_READ_CHUNK];
};

static void gl__conn_finish(struct gl_conn *c);
static void gl__conn_close(struct gl_conn *c);
static void gl__on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void gl__on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void gl__srv_maybe_done(struct gl_server *srv);

static uint64_t gl__realtime_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* ---- output ------------------------------------------------------------ */

static void gl__on_write(uv_write_t *req, int status) {
  struct gl_write *w = (struct gl_write *)req;
  struct gl_conn *c = w->conn;
  c->out_bytes -= GL_WRITE_OVERHEAD + w->buf.len;
  free(w);
  if (status < 0 && status != UV_ECANCELED) {
    GL_LOG_D("session %llu: write failed: %s", (unsigned long long)c->session_id,
             uv_strerror(status));
    gl__conn_close(c);
    return;
  }
  if (c->read_paused && !c->closing && !c->draining && c->out_bytes < GL_WRITE_LOW) {
    c->read_paused = false;
    if (!c->peer_eof) /* after EOF there is nothing more to read */
      uv_read_start(&c->io.stream, gl__on_alloc, gl__on_read);
  }
}

/* Queues len bytes from a buffer made by gl__write_alloc. */
static struct gl_write *gl__write_alloc(struct gl_conn *c, size_t len) {
  struct gl_write *w = malloc(sizeof *w + len);
  if (w) {
    w->conn = c;
    w->buf = uv_buf_init((char *)w->data, (unsigned)len);
  }
  return w;
}

static int gl__write_queue(struct gl_conn *c, struct gl_write *w) {
  if (c->out_bytes + GL_WRITE_OVERHEAD + w->buf.len > GL_WRITE_MAX) {
    GL_LOG_N("session %llu (%s): closed: it does not read its answers (%zu bytes of output "
             "queued)",
             (unsigned long long)c->session_id, c->peer, c->out_bytes);
    free(w);
    return GL_EBUSY;
  }
  int r = uv_write(&w->req, &c->io.stream, &w->buf, 1, gl__on_write);
  if (r < 0) {
    free(w);
    GL_LOG_D("session %llu: write: %s", (unsigned long long)c->session_id, uv_strerror(r));
    return GL_EIO;
  }
  c->out_bytes += GL_WRITE_OVERHEAD + w->buf.len;
  return GL_OK;
}

static int gl__tls_flush(struct gl_conn *c) {
  size_t n = gl_tls_conn_pending_output(c->tls);
  if (n == 0)
    return GL_OK;
  struct gl_write *w = gl__write_alloc(c, n);
  if (!w)
    return GL_ENOMEM;
  w->buf.len = (unsigned)gl_tls_conn_take_output(c->tls, w->data, n);
  return gl__write_queue(c, w);
}

static void gl__conn_send(struct gl_conn *c, const gl_server_msg *m) {
  if (c->closing)
    return;
  size_t n = gl_wire_encoded_size(&m->base);
  struct gl_write *w = gl__write_alloc(c, n);
  int rc = GL_ENOMEM;
  if (!w)
    goto fail;
  gl_wire_encode(&m->base, w->data);
  if (!c->tls) {
    rc = gl__write_queue(c, w);
  } else {
    rc = gl_tls_conn_write(c->tls, w->data, n);
    free(w);
    if (rc == GL_OK)
      rc = gl__tls_flush(c);
  }
  if (rc == GL_OK)
    return;
fail:
  GL_LOG_W("session %llu: cannot send: %s", (unsigned long long)c->session_id, gl_strerror(rc));
  gl__conn_close(c);
}

static void gl__conn_error(struct gl_conn *c, gl_err_code code, const uint64_t *frame_id,
                           bool fatal, const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Sends an Error; a fatal one ends the connection after it is flushed. */
static void gl__conn_error(struct gl_conn *c, gl_err_code code, const uint64_t *frame_id,
                           bool fatal, const char *fmt, ...) {
  char text[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  if (fatal && c->inflight > 0) {
    /* Frames in flight are answered first; the stream ends after them. */
    if (!c->draining) {
      c->draining = true;
      c->bye_code = code;
      snprintf(c->bye_text, sizeof c->bye_text, "%.*s", (int)sizeof c->bye_text - 1, text);
      uv_read_stop(&c->io.stream);
    }
    return;
  }
  const ProtobufCEnumValue *ev =
      protobuf_c_enum_descriptor_get_value(&geoloc__v1__error__code__descriptor, (int)code);
  /* The callers escape the client's strings they quote (the Error carries
   * that form too); escaping is idempotent, so this only catches any other
   * text (a decoder's message) that could break the log line. */
  char safe[4 * sizeof text];
  gl_log_escape(safe, sizeof safe, text);
  gl_log(fatal ? GL_LOG_NOTICE : GL_LOG_DEBUG, "session %llu (%s): %s error %s: %s",
         (unsigned long long)c->session_id, c->peer, fatal ? "fatal" : "frame", ev ? ev->name : "?",
         safe);

  Geoloc__V1__Error e = GEOLOC__V1__ERROR__INIT;
  gl_server_msg m = GEOLOC__V1__SERVER_MESSAGE__INIT;
  e.has_code = 1;
  e.code = code;
  e.message = text;
  e.has_fatal = 1;
  e.fatal = fatal;
  if (frame_id) {
    e.has_frame_id = 1;
    e.frame_id = *frame_id;
  }
  m.msg_case = GEOLOC__V1__SERVER_MESSAGE__MSG_ERROR;
  m.error = &e;
  gl__conn_send(c, &m);
  if (fatal)
    gl__conn_finish(c);
}

/* ---- connection lifecycle ---------------------------------------------- */

static void gl__hs_unlink(struct gl_conn *c) {
  struct gl_server *srv = c->srv;
  if (!c->in_hs)
    return;
  c->in_hs = false;
  if (c->hs_prev)
    c->hs_prev->hs_next = c->hs_next;
  else
    srv->hs_head = c->hs_next;
  if (c->hs_next)
    c->hs_next->hs_prev = c->hs_prev;
  else
    srv->hs_tail = c->hs_prev;
  c->hs_prev = c->hs_next = NULL;
}

/* The source address of a TCP peer as 16 bytes (IPv4 mapped into IPv6, so
 * that a dual-stack listener counts one host once). False for others. */
static bool gl__src_key(const struct sockaddr_storage *ss, uint8_t key[16]) {
  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
    memset(key, 0, 10);
    key[10] = key[11] = 0xff;
    memcpy(key + 12, &a->sin_addr, 4);
    return true;
  }
  if (ss->ss_family == AF_INET6) {
    memcpy(key, &((const struct sockaddr_in6 *)ss)->sin6_addr, 16);
    return true;
  }
  return false;
}

static struct gl_src **gl__src_slot(struct gl_server *srv, const uint8_t key[16]) {
  uint32_t h = 2166136261u ^ srv->src_seed; /* FNV-1a, seeded per process */
  for (int i = 0; i < 16; i++)
    h = (h ^ key[i]) * 16777619u;
  struct gl_src **p = &srv->src[h % GL_SRC_BUCKETS];
  while (*p && memcmp((*p)->addr, key, 16) != 0)
    p = &(*p)->next;
  return p;
}

/* Gives up c's slot among max_clients (and its address's count). */
static void gl__conn_unadmit(struct gl_conn *c) {
  struct gl_server *srv = c->srv;
  if (!c->admitted)
    return;
  c->admitted = false;
  srv->n_admitted--;
  gl__hs_unlink(c);
  if (c->src && --c->src->n == 0) {
    struct gl_src **p = gl__src_slot(srv, c->src->addr);
    *p = c->src->next;
    free(c->src);
  }
  c->src = NULL;
  gl_metrics_set_clients(srv->metrics, srv->n_admitted);
}

/* A connection is freed once its handles are closed and none of its frames
 * is still in the pipeline (a job points at it until it is answered). */
static void gl__conn_release(struct gl_conn *c) {
  if (c->open_handles > 0 || c->inflight > 0)
    return;
  struct gl_server *srv = c->srv;
  if (c->prev)
    c->prev->next = c->next;
  else
    srv->conns = c->next;
  if (c->next)
    c->next->prev = c->prev;
  gl__conn_unadmit(c);
  srv->n_conns--;
  GL_LOG_D("session %llu (%s): closed", (unsigned long long)c->session_id, c->peer);
  if (c->dropped)
    GL_LOG_N("session %llu (%s): %u frame(s) not answered: the connection closed first",
             (unsigned long long)c->session_id, c->peer, c->dropped);
  gl_tls_conn_destroy(c->tls);
  gl_wire_decoder_fini(&c->dec);
  if (c->trk)
    gl_track_destroy(c->trk->filter);
  free(c->trk);
  free(c);
  gl__srv_maybe_done(srv);
}

static void gl__on_conn_closed(uv_handle_t *h) {
  struct gl_conn *c = h->data;
  c->open_handles--;
  gl__conn_release(c);
}

static void gl__conn_close(struct gl_conn *c) {
  if (c->closing)
    return;
  c->closing = true;
  c->state = GL_CONN_CLOSING;
  uv_close(&c->io.handle, gl__on_conn_closed);
  uv_close((uv_handle_t *)&c->timer, gl__on_conn_closed);
}

static void gl__on_shutdown(uv_shutdown_t *req, int status) {
  struct gl_conn *c = req->data;
  c->shutdown_done = true;
  if (c->refused && status == 0 && !c->peer_eof) {
    /* A refused connection is not lingered on: its Error is out. What the
     * peer sent is read first (a close with unread bytes would reset the
     * connection, and the reset could overtake the Error). */
    uv_os_fd_t fd;
    int reads = 0;
    if (uv_fileno(&c->io.handle, &fd) == 0)
      while (reads++ < 16 &&
             recv(fd, c->srv->read_buf, sizeof c->srv->read_buf, MSG_DONTWAIT) > 0) {
      }
    gl__conn_close(c);
    return;
  }
  if (status < 0 || c->peer_eof)
    gl__conn_close(c);
  /* Otherwise the linger timer or the peer's EOF closes it. */
}

static void gl__on_timer(uv_timer_t *t);

/* Ends the conversation: flushes what is queued, tells TLS and TCP we are
 * done, and closes once the peer has closed too (or the linger expires). */
static void gl__conn_finish(struct gl_conn *c) {
  if (c->state == GL_CONN_CLOSING)
    return;
  c->state = GL_CONN_CLOSING;
  gl__conn_unadmit(c);
  if (c->tls) {
    gl_tls_conn_shutdown(c->tls);
    if (gl__tls_flush(c) != GL_OK) {
      gl__conn_close(c);
      return;
    }
  }
  uv_timer_start(&c->timer, gl__on_timer, GL_LINGER_MS, 0);
  c->shutdown_req.data = c;
  if (uv_shutdown(&c->shutdown_req, &c->io.stream, gl__on_shutdown) < 0)
    gl__conn_close(c);
}

static void gl__conn_arm_timer(struct gl_conn *c) {
  const struct gl_config *cfg = &c->srv->cfg;
  if (c->state == GL_CONN_HANDSHAKE)
    uv_timer_start(&c->timer, gl__on_timer, cfg->handshake_timeout_ms, 0);
  else if (c->state == GL_CONN_READY && cfg->idle_timeout_ms)
    uv_timer_start(&c->timer, gl__on_timer, cfg->idle_timeout_ms, 0);
  else if (c->state == GL_CONN_READY)
    uv_timer_stop(&c->timer);
}

static void gl__on_timer(uv_timer_t *t) {
  struct gl_conn *c = t->data;
  switch (c->state) {
  case GL_CONN_HANDSHAKE:
    if (c->tls && !c->tls_up) {
      GL_LOG_N("session %llu (%s): TLS handshake not done within %u ms",
               (unsigned long long)c->session_id, c->peer, c->srv->cfg.handshake_timeout_ms);
      gl__conn_close(c);
      return;
    }
    gl__conn_error(c, GEOLOC__V1__ERROR__CODE__TIMEOUT, NULL, true, "no Hello within %u ms",
                   c->srv->cfg.handshake_timeout_ms);
    return;
  case GL_CONN_READY:
    gl__conn_error(c, GEOLOC__V1__ERROR__CODE__TIMEOUT, NULL, true, "no message for %u ms",
                   c->srv->cfg.idle_timeout_ms);
    return;
  case GL_CONN_CLOSING:
    gl__conn_close(c); /* the peer never closed its side */
    return;
  }
}

/* The client will send nothing more: EOF, or TLS close_notify. What it sent
 * is still answered, every accepted frame exactly once: the stream ends when
 * the last answer is out (gl__on_job_done), at once when none is due. */
static void gl__conn_peer_done(struct gl_conn *c) {
  if (c->state == GL_CONN_CLOSING || c->peer_done)
    return;
  if (gl_wire_decoder_partial(&c->dec))
    GL_LOG_D("session %llu (%s): the stream ended inside a message, which is dropped",
             (unsigned long long)c->session_id, c->peer);
  if (c->inflight == 0) {
    gl__conn_finish(c);
    return;
  }
  c->peer_done = true;
  uv_timer_stop(&c->timer); /* nothing more can come: no idle timeout */
  GL_LOG_D("session %llu (%s): the client closed its side; answering %u frame(s) first",
           (unsigned long long)c->session_id, c->peer, c->inflight);
}

/* ---- admission --------------------------------------------------------- */

enum { GL__REFUSED, GL__EVICTED, GL__CUT };

/* Counts a connection refused, evicted or cut (closed without a word), each
 * logged at debug level, and logs a summary at most every
 * GL_REFUSAL_LOG_MS: a flood of connections must not flood the log. */
static void gl__note_refusal(struct gl_server *srv, int kind, const struct gl_conn *c,
                             const char *why) {
  static const char *const what[] = {"refused", "evicted", "closed without a message"};
  GL_LOG_D("session %llu (%s): %s: %s", (unsigned long long)c->session_id, c->peer, what[kind],
           why);
  srv->n_refused[kind]++;
  uint64_t now = uv_now(srv->loop);
  if (srv->refusal_logged && now - srv->refusal_logged_ms < GL_REFUSAL_LOG_MS)
    return;
  GL_LOG_W("connections over the limits%s: %llu refused, %llu evicted before Hello, %llu closed "
           "without a message (%u of max_clients %u held, %u connection(s) open)",
           srv->refusal_logged ? " since the last report" : "",
           (unsigned long long)srv->n_refused[GL__REFUSED],
           (unsigned long long)srv->n_refused[GL__EVICTED],
           (unsigned long long)srv->n_refused[GL__CUT], srv->n_admitted, srv->cfg.max_clients,
           srv->n_conns);
  memset(srv->n_refused, 0, sizeof srv->n_refused);
  srv->refusal_logged = true;
  srv->refusal_logged_ms = now;
}

static void gl__conn_refuse(struct gl_conn *c, int kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Sends Error{RESOURCE_EXHAUSTED, fatal} and closes the connection as soon
 * as it is written, without the linger of other fatal errors, so that a
 * flood of refused connections holds no descriptors. */
static void gl__conn_refuse(struct gl_conn *c, int kind, const char *fmt, ...) {
  char text[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  gl__note_refusal(c->srv, kind, c, text);
  gl__conn_unadmit(c);
  c->refused = true;
  Geoloc__V1__Error e = GEOLOC__V1__ERROR__INIT;
  gl_server_msg m = GEOLOC__V1__SERVER_MESSAGE__INIT;
  e.has_code = e.has_fatal = 1;
  e.code = GEOLOC__V1__ERROR__CODE__RESOURCE_EXHAUSTED;
  e.fatal = true;
  e.message = text;
  m.msg_case = GEOLOC__V1__SERVER_MESSAGE__MSG_ERROR;
  m.error = &e;
  gl__conn_send(c, &m);
  gl__conn_finish(c);
}

/* A new connection over the limits, once it can be told: at once in
 * plaintext, after its TLS handshake otherwise. */
static void gl__conn_refuse_new(struct gl_conn *c) {
  const struct gl_config *cfg = &c->srv->cfg;
  if (c->reject_addr)
    gl__conn_refuse(c, GL__REFUSED, "too many connections from %s (max_clients_per_address %u)",
                    c->peer, cfg->max_clients_per_address);
  else
    gl__conn_refuse(c, GL__REFUSED, "server full: %u clients", cfg->max_clients);
}

/* At max_clients, makes room for a new connection by evicting the oldest
 * one that has not said Hello: idle or slow peers would otherwise hold
 * every slot until handshake_timeout_ms and lock real clients out. It is
 * told why in plaintext or once its TLS is up; a TLS handshake still under
 * way is just closed. Returns false when every slot holds a client past
 * Hello. */
static bool gl__evict_one(struct gl_server *srv) {
  struct gl_conn *v;
  while ((v = srv->hs_head)) {
    gl__hs_unlink(v);
    if (v->state != GL_CONN_HANDSHAKE || !v->admitted || v->closing)
      continue; /* past Hello since it was queued, or going */
    if (v->tls && !v->tls_up) {
      gl__conn_unadmit(v);
      gl__note_refusal(srv, GL__EVICTED, v, "TLS handshake not done while the server is full");
      gl__conn_close(v);
    } else {
      gl__conn_refuse(v, GL__EVICTED,
                      "server full: %u clients; a connection that has not said Hello makes room "
                      "for a new one",
                      srv->cfg.max_clients);
    }
    return true;
  }
  return false;
}

/* ---- protocol ---------------------------------------------------------- */

/* StreamOptions.track: the stream's filter, when its map can be tracked on
 * (a dense layer and the fine stage); otherwise the stream goes on
 * untracked and Welcome.tracking says so. Returns 0, or an error after
 * answering it (fatal). */
static int gl__conn_track(struct gl_conn *c, const Geoloc__V1__StreamOptions *o) {
  const struct gl_config *cfg = &c->srv->cfg;
  const struct gl_runtime *rt = c->srv->rt;
  int i = rt ? gl_runtime_find_map(rt, c->map) : -1;
  uint32_t rows, cols;
  double cell;
  char err[256];
  if (!cfg->track || i < 0 || !rt->maps[i].fine || !rt->fine ||
      gl_track_grid(rt->maps[i].map, rt->fine, &rows, &cols, &cell)) {
    GL_LOG_D("session %llu (%s): tracking asked for, but %s", (unsigned long long)c->session_id,
             c->peer,
             !cfg->track ? "[track] enabled is off"
                         : "the map has no dense layer or the fine stage is off");
    return GL_OK;
  }
  struct gl_stream_track *t = calloc(1, sizeof *t);
  if (!t) {
    gl__conn_error(c, GEOLOC__V1__ERROR__CODE__INTERNAL, NULL, true, "out of memory");
    return GL_ENOMEM;
  }
  gl_track_params_init(&t->params);
  t->params.max_speed_mps = cfg->track_max_speed_mps;
  t->params.window_cells = cfg->track_window_cells;
  if (o->has_max_speed_mps && o->max_speed_mps > 0)
    t->params.max_speed_mps = o->max_speed_mps < 0.1f ? 0.1 : o->max_speed_mps;
  if (o->has_fixed_lag_frames)
    t->params.fixed_lag = o->fixed_lag_frames;
  int rc = gl_track_create(&t->params, rows, cols, cell, &t->filter, err, sizeof err);
  if (rc) {
    free(t);
    gl__conn_error(c, rc == GL_ENOMEM ? GEOLOC__V1__ERROR__CODE__RESOURCE_EXHAUSTED
                                      : GEOLOC__V1__ERROR__CODE__BAD_REQUEST,
                   NULL, true, "tracking: %s", err);
    return rc;
  }
  c->trk = t;
  return GL_OK;
}

static void gl__conn_hello(struct gl_conn *c, const Geoloc__V1__Hello *h) {
  const struct gl_config *cfg = &c->srv->cfg;
  uint32_t version = h->has_protocol_version ? h->protocol_version : 0;
  if (version != GL_PROTOCOL_VERSION) {
    gl__conn_error(c, GEOLOC__V1__ERROR__CODE__VERSION, NULL, true,
                   "protocol version %u is not supported; this server speaks version %d", version,
                   GL_PROTOCOL_VERSION);
    return;
  }
  const struct gl_runtime *rt = c->srv->rt;
  const char *names[GL_CONFIG_MAX_MAPS];
  uint32_t n_maps = rt ? rt->n_maps : 0;
  char list[256] = "";
  for (uint32_t i = 0; i < n_maps; i++) {
    names[i] = rt->maps[i].name;
    snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "", names[i]);
  }
  /* The client's map name, escaped for the Error and the log it goes to. */
  char map_name[GL__CLIENT_STR];
  gl_log_escape(map_name, sizeof map_name, h->map);
  if (n_maps == 0 && h->map && h->map[0]) {
    gl__conn_error(c, GEOLOC__V1__ERROR__CODE__UNAVAILABLE, NULL, true,
                   "map '%s' is not loaded (this server has no maps)", map_name);
    return;
  }
  if (n_maps > 0) {
    int i = gl_runtime_find_map(rt, h->map);
    if (i < 0 && h->map && h->map[0]) {
      gl__conn_error(c, GEOLOC__V1__ERROR__CODE__UNAVAILABLE, NULL, true,
                     "no map named '%s' (maps: %s)", map_name, list);
      return;
    }
    if (i < 0) {
      gl__conn_error(c, GEOLOC__V1__ERROR__CODE__BAD_REQUEST, NULL, true,
                     "this server has several maps: name one of %s in Hello", list);
      return;
    }
    snprintf(c->map, sizeof c->map, "%s", rt->maps[i].name);
  }
  const Geoloc__V1__StreamOptions *o = h->options;
  if (o && o->has_max_speed_mps && !(o->max_speed_mps >= 0 && o->max_speed_mps <= 1000)) {
    gl__conn_error(c, GEOLOC__V1__ERROR__CODE__BAD_REQUEST, NULL, true,
                   "max_speed_mps %g is not a speed in m/s (0 for the server's default, up to "
                   "1000)",
                   (double)o->max_speed_mps);
    return;
  }
  if (o && o->has_fixed_lag_frames && o->fixed_lag_frames > GL_TRACK_MAX_LAG) {
    gl__conn_error(c, GEOLOC__V1__ERROR__CODE__BAD_REQUEST, NULL, true,
                   "fixed_lag_frames %u is above the limit of %d", o->fixed_lag_frames,
                   GL_TRACK_MAX_LAG);
    return;
  }
  if (o && o->has_track && o->track && gl__conn_track(c, o) != GL_OK)
    return;
  /* The stream's own limits (0: the server's), within the server's; Welcome
   * tells the client what it got. */
  c->max_inflight = cfg->max_frames_in_flight;
  if (o && o->has_max_frames_in_flight && o->max_frames_in_flight > 0 &&
      o->max_frames_in_flight < c->max_inflight)
    c->max_inflight = o->max_frames_in_flight;
  c->top_k = cfg->default_top_k;
  if (o && o->has_default_top_k && o->default_top_k > 0)
    c->top_k = o->default_top_k < GL_JOB_MAX_CANDIDATES ? o->default_top_k : GL_JOB_MAX_CANDIDATES;
  Geoloc__V1__Welcome w = GEOLOC__V1__WELCOME__INIT;
  gl_server_msg m = GEOLOC__V1__SERVER_MESSAGE__INIT;
  w.has_protocol_version = 1;
  w.protocol_version = GL_PROTOCOL_VERSION;
  w.server = (char *)"geolocd " GL_VERSION;
  w.map = c->map;
  w.n_maps = n_maps;
  w.maps = (char **)names;
  w.has_max_frames_in_flight = 1;
  w.max_frames_in_flight = c->max_inflight;
  w.has_default_top_k = 1;
  w.default_top_k = c->top_k;
  w.has_max_message_bytes = 1;
  w.max_message_bytes = cfg->max_message_bytes;
  w.has_session_id = 1;
  w.session_id = c->session_id;
  w.has_tracking = 1;
  w.tracking = c->trk != NULL;
  m.msg_case = GEOLOC__V1__SERVER_MESSAGE__MSG_WELCOME;
  m.welcome = &w;
  c->state = GL_CONN_READY;
  gl_wire_decoder_set_max(&c->dec, cfg->max_message_bytes);
  char client_name[GL__CLIENT_STR];
  gl_log_escape(client_name, sizeof client_name, h->client_name);
  GL_LOG_D("session %llu (%s): hello from '%s'", (unsigned long long)c->session_id, c->peer,
           client_name);
  gl__conn_send(c, &m);
}

static void gl__conn_ping(struct gl_conn *c, const Geoloc__V1__Ping *p) {
  Geoloc__V1__Pong pong = GEOLOC__V1__PONG__INIT;
  gl_server_msg m = GEOLOC__V1__SERVER_MESSAGE__INIT;
  pong.has_nonce = p->has_nonce;
  pong.nonce = p->nonce;
  pong.has_send_time_us = p->has_send_time_us;
  pong.send_time_us = p->send_time_us;
  pong.has_server_time_us = 1;
  pong.server_time_us = gl__realtime_us();
  m.msg_case = GEOLOC__V1__SERVER_MESSAGE__MSG_PONG;
  m.pong = &pong;
  gl__conn_send(c, &m);
}

/* Estimate{status} with no candidates, for frames answered before
 * inference (BUSY). */
static void gl__conn_status(struct gl_conn *c, uint64_t frame_id,
                            Geoloc__V1__Estimate__Status status) {
  Geoloc__V1__Estimate e = GEOLOC__V1__ESTIMATE__INIT;
  gl_server_msg m = GEOLOC__V1__SERVER_MESSAGE__INIT;
  e.has_frame_id = e.has_status = 1;
  e.frame_id = frame_id;
  e.status = status;
  e.map = c->map;
  m.msg_case = GEOLOC__V1__SERVER_MESSAGE__MSG_ESTIMATE;
  m.estimate = &e;
  gl__conn_send(c, &m);
}

/* Checks a Frame and queues it. Takes ownership of m when it returns true
 * (the job frees it); every path answers the frame or queues it, so it is
 * answered exactly once. */
static bool gl__conn_frame(struct gl_conn *c, gl_client_msg *m) {
  struct gl_server *srv = c->srv;
  const struct gl_config *cfg = &srv->cfg;
  const Geoloc__V1__Frame *f = m->frame;
  uint64_t id = f->frame_id;
  const gl_err_code BAD = GEOLOC__V1__ERROR__CODE__BAD_REQUEST;
  if (c->state != GL_CONN_READY) {
    gl__conn_error(c, GEOLOC__V1__ERROR__CODE__PROTOCOL, &id, true, "Frame before Hello");
    return false;
  }
  int map = srv->rt ? gl_runtime_find_map(srv->rt, c->map) : -1;
  if (map < 0)
    gl_metrics_frame(srv->metrics, GL_METRICS_FRAME_UNAVAILABLE);
  if (map < 0 && (!srv->rt || srv->rt->n_maps == 0)) {
    gl__conn_error(c, GEOLOC__V1__ERROR__CODE__UNAVAILABLE, &id, false,
                   "frame %llu: no model or map is loaded", (unsigned long long)id);
    return false;
  }
  if (map < 0) { /* a reload dropped the stream's map */
    gl__conn_error(c, GEOLOC__V1__ERROR__CODE__UNAVAILABLE, &id, false,
                   "frame %llu: map '%s' is no longer loaded", (unsigned long long)id, c->map);
    return false;
  }
  if (!f->has_image || f->image.len == 0) {
    gl_metrics_frame(srv->metrics, GL_METRICS_FRAME_BAD_IMAGE);
    gl__conn_error(c, GEOLOC__V1__ERROR__CODE__BAD_IMAGE, &id, false, "frame %llu has no image",
                   (unsigned long long)id);
    return false;
  }
  if (f->top_k > GL_JOB_MAX_CANDIDATES) {
    gl_metrics_frame(srv->metrics, GL_METRICS_FRAME_ERROR);
    gl__conn_error(c, BAD, &id, false, "top_k %u is above the limit of %d", f->top_k,
                   GL_JOB_MAX_CANDIDATES);
    return false;
  }
  const Geoloc__V1__Prior *pr = f->prior;
  if (pr && !(pr->lat >= -90 && pr->lat <= 90 && pr->lon >= -180 && pr->lon <= 180 &&
              pr->radius_m > 0 && pr->radius_m <= 20037509)) {
    gl_metrics_frame(srv->metrics, GL_METRICS_FRAME_ERROR);
    gl__conn_error(c, BAD, &id, false,
                   "prior needs lat in [-90, 90], lon in [-180, 180] and radius_m in "
                   "(0, 20037509]");
    return false;
  }
  if (f->has_heading_deg && !(f->heading_deg >= -360 && f->heading_deg <= 720)) {
    gl_metrics_frame(srv->metrics, GL_METRICS_FRAME_ERROR);
    gl__conn_error(c, BAD, &id, false,
                   "heading_deg %g is not a heading in degrees (-360 to 720, clockwise from "
                   "north)",
                   f->heading_deg);
    return false;
  }
  /* The camera's footprint: the fields are checked here, the footprint
   * (which needs the decoded frame's size) when the frame is decoded. */
  static const char *const camera_fields[3] = {"altitude_m", "hfov_deg", "tilt_deg"};
  const struct gl_img_camera camera = {f->altitude_m, f->hfov_deg, f->tilt_deg};
  const unsigned camera_given = (f->has_altitude_m ? GL_IMG_CAMERA_ALTITUDE : 0u) |
                                (f->has_hfov_deg ? GL_IMG_CAMERA_HFOV : 0u) |
                                (f->has_tilt_deg ? GL_IMG_CAMERA_TILT : 0u);
  char camera_err[256];
  if (gl_img_camera_check(camera_given, &camera, camera_fields, camera_err, sizeof camera_err) !=
      GL_OK) {
    gl_metrics_frame(srv->metrics, GL_METRICS_FRAME_ERROR);
    gl__conn_error(c, BAD, &id, false, "frame %llu: %s", (unsigned long long)id, camera_err);
    return false;
  }
  if (f->has_velocity_north_mps != f->has_velocity_east_mps ||
      (f->has_velocity_north_mps &&
       !(fabs(f->velocity_north_mps) <= 1000 && fabs(f->velocity_east_mps) <= 1000))) {
    gl_metrics_frame(srv->metrics, GL_METRICS_FRAME_ERROR);
    gl__conn_error(c, BAD, &id, false,
                   "velocity_north_mps and velocity_east_mps go together, each within +-1000 m/s");
    return false;
  }
  if (c->trk && !f->has_capture_time_us) {
    gl_metrics_frame(srv->metrics, GL_METRICS_FRAME_ERROR);
    gl__conn_error(c, BAD, &id, false,
                   "frame %llu has no capture_time_us, which a tracked stream needs",
                   (unsigned long long)id);
    return false;
  }
  if (c->trk && c->trk->has_time && f->capture_time_us < c->trk->last_time_us) {
    gl_metrics_frame(srv->metrics, GL_METRICS_FRAME_ERROR);
    gl__conn_error(c, BAD, &id, false,
                   "frame %llu: capture_time_us %llu is before the previous frame's (%llu); a "
                   "tracked stream's frames must not go back in time",
                   (unsigned long long)id, (unsigned long long)f->capture_time_us,
                   (unsigned long long)c->trk->last_time_us);
    return false;
  }
  /* Backpressure: a bounded pipeline answers BUSY at once rather than
   * letting frames grow stale in a queue. */
  if (c->inflight >= c->max_inflight || srv->queued >= cfg->queue_depth) {
    gl_metrics_frame(srv->metrics, GL_METRICS_FRAME_BUSY);
    gl__conn_status(c, id, GEOLOC__V1__ESTIMATE__STATUS__BUSY);
    return false;
  }
  struct gl_job *job = calloc(1, gl_job_size(srv->rt->dim));
  if (!job) {
    gl_metrics_frame(srv->metrics, GL_METRICS_FRAME_ERROR);
    gl__conn_error(c, GEOLOC__V1__ERROR__CODE__INTERNAL, &id, false, "out of memory");
    return false;
  }
  job->owner = c;
  job->rt = gl_runtime_ref(srv->rt);
  job->map = (uint32_t)map;
  job->msg = m;
  job->frame_id = id;
  job->top_k = f->top_k ? f->top_k : c->top_k;
  job->max_pixels = cfg->max_decoded_pixels;
  job->t_received = gl_pipeline_now_us();
  job->heading_deg = f->has_heading_deg ? f->heading_deg : NAN;
  job->has_camera = camera_given == GL_IMG_CAMERA_ALL;
  job->camera = camera;
  job->vel[0] = f->has_velocity_north_mps ? f->velocity_north_mps : NAN;
  job->vel[1] = f->has_velocity_east_mps ? f->velocity_east_mps : NAN;
  job->time_us = f->capture_time_us;
  if (c->trk) {
    job->trk = c->trk;
    job->seq = c->trk->next_seq++;
    c->trk->last_time_us = f->capture_time_us;
    c->trk->has_time = true;
  }
  if (pr) {
    job->has_prior = true;
    job->prior = (struct gl_map_prior){pr->lat, pr->lon, pr->radius_m};
  }
  c->inflight++;
  srv->queued++;
  gl_metrics_add_in_flight(srv->metrics, 1);
  gl_pipeline_submit(srv->pipe, job);
  return true;
}

/* Reads a protobuf varint; a value beyond 64 bits reads as UINT64_MAX. */
static bool gl__pb_varint(const uint8_t **p, const uint8_t *end, uint64_t *v) {
  uint64_t x = 0;
  bool over = false;
  for (unsigned shift = 0; shift < 70 && *p < end; shift += 7) {
    uint64_t b = *(*p)++;
    if (shift < 64)
      x |= (b & 0x7f) << shift;
    over |= (shift == 63 && (b & 0x7e)) || (shift > 63 && (b & 0x7f));
    if (!(b & 0x80)) {
      *v = over ? UINT64_MAX : x;
      return true;
    }
  }
  return false;
}

/* Skips a field's value of wire type wt. */
static bool gl__pb_skip(const uint8_t **p, const uint8_t *end, unsigned wt) {
  uint64_t n;
  switch (wt) {
  case 0:
    return gl__pb_varint(p, end, &n);
  case 1:
  case 5:
    n = wt == 1 ? 8 : 4;
    break;
  case 2:
    if (!gl__pb_varint(p, end, &n))
      return false;
    break;
  default:
    return false;
  }
  if (n > (uint64_t)(end - *p))
    return false;
  *p += n;
  return true;
}

/* Hello.protocol_version is a uint32, and protobuf-c (like protobuf itself)
 * narrows a wider varint to its low 32 bits: 2^32 + 1 would read as 1, and
 * a client speaking some future version could be taken for version 1. So
 * the wire value is checked here, in the raw ClientMessage body, before the
 * narrowed one is looked at: every Hello (field 1; protobuf merges repeated
 * ones) and in it every protocol_version (field 1, varint). Returns true and
 * the widest such value when one does not fit in 32 bits.
 *
 * Declaring the field uint64 would not do: the wire encoding is the same
 * (varints), but geoloc.proto is the clients' contract too, and every
 * client's generated type would change with it; and a varint of more than
 * 64 bits would still be narrowed there. */
static bool gl__hello_version_wide(const uint8_t *body, size_t len, uint64_t *version) {
  const uint8_t *p = body, *end = body + len;
  bool wide = false;
  *version = 0;
  while (p < end) {
    uint64_t key, n;
    if (!gl__pb_varint(&p, end, &key))
      break;
    if (key != (1u << 3 | 2)) { /* not ClientMessage.hello */
      if (!gl__pb_skip(&p, end, (unsigned)(key & 7)))
        break;
      continue;
    }
    if (!gl__pb_varint(&p, end, &n) || n > (uint64_t)(end - p))
      break;
    const uint8_t *q = p, *hend = p + n;
    p = hend;
    while (q < hend && gl__pb_varint(&q, hend, &key)) {
      uint64_t v;
      if (key != (1u << 3 | 0)) { /* not Hello.protocol_version */
        if (!gl__pb_skip(&q, hend, (unsigned)(key & 7)))
          break;
      } else if (!gl__pb_varint(&q, hend, &v)) {
        break;
      } else if (v > UINT32_MAX) {
        wide = true;
        *version = v > *version ? v : *version;
      }
    }
  }
  return wide;
}

static void gl__conn_message(struct gl_conn *c, const uint8_t *body, size_t len) {
  gl_client_msg *m;
  uint64_t wide;
  if (gl_wire_unpack_client(body, len, &m) != GL_OK) {
    gl__conn_error(c, GEOLOC__V1__ERROR__CODE__MALFORMED, NULL, true,
                   "%zu bytes that are not a geoloc.v1.ClientMessage", len);
    return;
  }
  const bool ready = c->state == GL_CONN_READY;
  switch (m->msg_case) {
  case GEOLOC__V1__CLIENT_MESSAGE__MSG_HELLO:
    if (ready)
      gl__conn_error(c, GEOLOC__V1__ERROR__CODE__PROTOCOL, NULL, true, "second Hello");
    else if (gl__hello_version_wide(body, len, &wide))
      gl__conn_error(c, GEOLOC__V1__ERROR__CODE__VERSION, NULL, true,
                     "protocol version %llu is not supported; this server speaks version %d",
                     (unsigned long long)wide, GL_PROTOCOL_VERSION);
    else
      gl__conn_hello(c, m->hello);
    break;
  case GEOLOC__V1__CLIENT_MESSAGE__MSG_PING:
    if (ready)
      gl__conn_ping(c, m->ping);
    else
      gl__conn_error(c, GEOLOC__V1__ERROR__CODE__PROTOCOL, NULL, true, "Ping before Hello");
    break;
  case GEOLOC__V1__CLIENT_MESSAGE__MSG_FRAME:
    if (gl__conn_frame(c, m))
      m = NULL; /* the job owns it */
    break;
  default: /* gl_wire_unpack_client refuses a message without a oneof */
    break;
  }
  gl_wire_free(m);
  gl__conn_arm_timer(c);
}

static void gl__job_metrics(struct gl_metrics *mx, const struct gl_job *job) {
  static const enum gl_metrics_status status[] = {
      [GL_JOB_OK] = GL_METRICS_FRAME_OK,
      [GL_JOB_BAD_IMAGE] = GL_METRICS_FRAME_BAD_IMAGE,
      [GL_JOB_BAD_REQUEST] = GL_METRICS_FRAME_ERROR,
      [GL_JOB_STALE] = GL_METRICS_FRAME_DROPPED_STALE,
      [GL_JOB_FAILED] = GL_METRICS_FRAME_ERROR,
  };
  gl_metrics_add_in_flight(mx, -1);
  gl_metrics_frame(mx, job->result == GL_JOB_OK && job->n_cand == 0 ? GL_METRICS_FRAME_NO_MATCH
                                                                    : status[job->result]);
  gl_metrics_observe(mx, GL_METRICS_DECODE, job->decode_us);
  if (job->result == GL_JOB_BAD_IMAGE || job->result == GL_JOB_BAD_REQUEST)
    return; /* never queued for inference */
  gl_metrics_observe(mx, GL_METRICS_QUEUE, job->t_batched - job->t_decoded);
  if (job->result != GL_JOB_OK)
    return;
  gl_metrics_observe(mx, GL_METRICS_INFER, job->infer_us);
  gl_metrics_observe(mx, GL_METRICS_SEARCH, job->search_us);
  if (job->batch_first)
    gl_metrics_batch(mx, job->batch_size);
}

/* A finished job, on the loop thread: the frame's one answer. */
static void gl__on_job_done(void *ud, struct gl_job *job) {
  struct gl_server *srv = ud;
  struct gl_conn *c = job->owner;
  uint64_t id = job->frame_id;
  srv->queued--;
  c->inflight--;
  gl__job_metrics(srv->metrics, job);
  if (c->state != GL_CONN_CLOSING) {
    switch (job->result) {
    case GL_JOB_BAD_IMAGE:
      gl__conn_error(c, GEOLOC__V1__ERROR__CODE__BAD_IMAGE, &id, false, "frame %llu: %s",
                     (unsigned long long)id, job->error);
      break;
    case GL_JOB_BAD_REQUEST:
      gl__conn_error(c, GEOLOC__V1__ERROR__CODE__BAD_REQUEST, &id, false, "frame %llu: %s",
                     (unsigned long long)id, job->error);
      break;
    case GL_JOB_FAILED:
      gl__conn_error(c, GEOLOC__V1__ERROR__CODE__INTERNAL, &id, false, "frame %llu: %s",
                     (unsigned long long)id, job->error);
      break;
    case GL_JOB_STALE:
      gl__conn_status(c, id, GEOLOC__V1__ESTIMATE__STATUS__DROPPED_STALE);
      break;
    case GL_JOB_OK: {
      Geoloc__V1__Candidate cand[GL_JOB_MAX_CANDIDATES], *cp[GL_JOB_MAX_CANDIDATES];
      Geoloc__V1__Timing t = GEOLOC__V1__TIMING__INIT;
      Geoloc__V1__Estimate e = GEOLOC__V1__ESTIMATE__INIT;
      gl_server_msg m = GEOLOC__V1__SERVER_MESSAGE__INIT;
      for (uint32_t i = 0; i < job->n_cand; i++) {
        const struct gl_job_candidate *jc = &job->cand[i];
        geoloc__v1__candidate__init(&cand[i]);
        cand[i].has_lat = cand[i].has_lon = cand[i].has_score = cand[i].has_radius_m = 1;
        cand[i].has_tile_id = cand[i].has_confidence = 1;
        cand[i].lat = jc->lat;
        cand[i].lon = jc->lon;
        cand[i].score = jc->score;
        cand[i].radius_m = jc->radius_m;
        cand[i].tile_id = (uint64_t)jc->tile_id;
        cand[i].confidence = jc->confidence;
        if (!isnan(jc->heading_deg)) {
          cand[i].has_heading_deg = 1;
          cand[i].heading_deg = jc->heading_deg;
        }
        cp[i] = &cand[i];
      }
      t.has_decode_us = t.has_queue_us = t.has_infer_us = t.has_search_us = t.has_total_us = 1;
      t.decode_us = job->decode_us;
      t.queue_us = (uint32_t)(job->t_batched - job->t_decoded);
      t.infer_us = job->infer_us;
      t.search_us = job->search_us;
      t.total_us = (uint32_t)(job->t_done - job->t_received);
      e.has_frame_id = e.has_status = 1;
      e.frame_id = id;
      e.status = job->n_cand ? GEOLOC__V1__ESTIMATE__STATUS__OK
                             : GEOLOC__V1__ESTIMATE__STATUS__NO_MATCH;
      e.n_candidates = job->n_cand;
      e.candidates = cp;
      e.timing = &t;
      e.map = job->rt->maps[job->map].name;
      Geoloc__V1__Track tr = GEOLOC__V1__TRACK__INIT;
      if (job->has_fix) {
        const struct gl_track_fix *x = &job->fix;
        tr.has_status = tr.has_lat = tr.has_lon = tr.has_radius_m = tr.has_confidence = 1;
        tr.status = (Geoloc__V1__Track__Status)x->s.status;
        tr.lat = x->lat;
        tr.lon = x->lon;
        tr.radius_m = (float)x->s.radius_m;
        tr.confidence = (float)x->s.confidence;
        if (!isnan(x->s.heading_deg)) {
          tr.has_heading_deg = 1;
          tr.heading_deg = (float)x->s.heading_deg;
        }
        e.track = &tr;
      }
      Geoloc__V1__Track sm = GEOLOC__V1__TRACK__INIT;
      if (job->has_fix && job->fix.has_smoothed) {
        const struct gl_track_fix *x = &job->fix;
        sm.has_status = sm.has_lat = sm.has_lon = sm.has_radius_m = sm.has_confidence = 1;
        sm.has_frame_id = 1;
        sm.status = (Geoloc__V1__Track__Status)x->ss.status;
        sm.lat = x->slat;
        sm.lon = x->slon;
        sm.radius_m = (float)x->ss.radius_m;
        sm.confidence = (float)x->ss.confidence;
        sm.frame_id = job->smoothed_id;
        e.smoothed = &sm;
      }
      m.msg_case = GEOLOC__V1__SERVER_MESSAGE__MSG_ESTIMATE;
      m.estimate = &e;
      gl__conn_send(c, &m);
      break;
    }
    }
    if (c->draining && c->inflight == 0 && c->state != GL_CONN_CLOSING)
      gl__conn_error(c, c->bye_code, NULL, true, "%s", c->bye_text);
    else if (c->peer_done && c->inflight == 0) /* a half-closed client has its answers */
      gl__conn_finish(c);
  } else {
    c->dropped++; /* the connection is gone (reset, write error): logged on release */
  }
  gl_runtime_unref(job->rt);
  gl_job_free(job);
  gl__conn_release(c);
}

/* Plaintext protocol bytes in. */
static void gl__conn_input(struct gl_conn *c, const uint8_t *data, size_t len) {
  while (len > 0 && c->state != GL_CONN_CLOSING && !c->draining) {
    size_t used;
    const uint8_t *body;
    size_t body_len;
    int r = gl_wire_decoder_feed(&c->dec, data, len, &used, &body, &body_len);
    data += used;
    len -= used;
    if (r == GL_ETOOBIG) {
      gl__conn_error(c, GEOLOC__V1__ERROR__CODE__TOO_LARGE, NULL, true,
                     "message of %u bytes exceeds the limit of %u bytes%s", c->dec.body_len,
                     c->dec.max_bytes, c->state == GL_CONN_READY ? "" : " before Hello");
      return;
    }
    if (r < 0) {
      gl__conn_error(c, GEOLOC__V1__ERROR__CODE__INTERNAL, NULL, true, "%s", gl_strerror(r));
      return;
    }
    if (r == 1)
      gl__conn_message(c, body, body_len);
  }
}

static void gl__conn_tls_input(struct gl_conn *c, const uint8_t *data, size_t len) {
  if (gl_tls_conn_feed(c->tls, data, len) != GL_OK)
    goto tls_failed;
  if (!c->tls_up) {
    int r = gl_tls_conn_handshake(c->tls);
    if (gl__tls_flush(c) != GL_OK) {
      gl__conn_close(c);
      return;
    }
    if (r < 0)
      goto tls_failed;
    if (r == 0)
      return;
    c->tls_up = true;
    char subject[256], safe[256];
    gl_tls_conn_peer(c->tls, subject, sizeof subject);
    gl_log_escape(safe, sizeof safe, subject); /* the client's certificate says it */
    GL_LOG_D("session %llu (%s): TLS up, client '%s'", (unsigned long long)c->session_id, c->peer,
             safe);
    if (c->reject) {
      gl__conn_refuse_new(c);
      return;
    }
  }
  while (c->state != GL_CONN_CLOSING) {
    int n = gl_tls_conn_read(c->tls, c->srv->plain_buf, sizeof c->srv->plain_buf);
    if (n > 0) {
      gl__conn_input(c, c->srv->plain_buf, (size_t)n);
      continue;
    }
    if (n == GL_ECLOSED) { /* close_notify: the client is done */
      gl__conn_peer_done(c);
      return;
    }
    if (n < 0)
      goto tls_failed;
    break;
  }
  if (gl__tls_flush(c) != GL_OK)
    gl__conn_close(c);
  return;
tls_failed:
  GL_LOG_N("session %llu (%s): %s", (unsigned long long)c->session_id, c->peer,
           gl_tls_conn_error(c->tls));
  /* The alert is queued; send it, then close. */
  gl__tls_flush(c);
  gl__conn_finish(c);
}

static void gl__on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  struct gl_conn *c = h->data;
  (void)suggested;
  *buf = uv_buf_init((char *)c->srv->read_buf, sizeof c->srv->read_buf);
}

static void gl__on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  struct gl_conn *c = s->data;
  if (nread == 0 || c->closing)
    return;
  if (nread < 0) {
    c->peer_eof = true;
    if (nread != UV_EOF)
      GL_LOG_D("session %llu (%s): read: %s", (unsigned long long)c->session_id, c->peer,
               uv_strerror((int)nread));
    if (nread != UV_EOF || c->shutdown_done)
      gl__conn_close(c);
    else
      gl__conn_peer_done(c); /* answer what it sent, then close */
    return;
  }
  if (c->state == GL_CONN_CLOSING || c->draining || c->peer_done)
    return; /* lingering, draining or half-closed: what the peer still sends is discarded */
  if (c->tls)
    gl__conn_tls_input(c, (const uint8_t *)buf->base, (size_t)nread);
  else
    gl__conn_input(c, (const uint8_t *)buf->base, (size_t)nread);
  if (!c->closing && c->state != GL_CONN_CLOSING && c->out_bytes > GL_WRITE_HIGH) {
    c->read_paused = true;
    uv_read_stop(&c->io.stream);
  }
}

static void gl__on_connection(uv_stream_t *ls, int status) {
  struct gl_listener *l = ls->data;
  struct gl_server *srv = l->srv;
  if (status < 0) {
    GL_LOG_W("%s: accept: %s", l->name, uv_strerror(status));
    return;
  }
  struct gl_conn *c = calloc(1, sizeof *c);
  if (!c) {
    GL_LOG_E("%s: out of memory accepting a connection", l->name);
    return;
  }
  c->srv = srv;
  c->session_id = ++srv->next_session;
  c->io.handle.data = c;
  c->timer.data = c;
  if (l->is_pipe)
    uv_pipe_init(srv->loop, &c->io.pipe, 0);
  else
    uv_tcp_init(srv->loop, &c->io.tcp);
  uv_timer_init(srv->loop, &c->timer);
  c->open_handles = 2;
  c->next = srv->conns;
  if (srv->conns)
    srv->conns->prev = c;
  srv->conns = c;
  srv->n_conns++;
  gl_wire_decoder_init(&c->dec, srv->cfg.max_message_bytes < GL_HELLO_MAX_BYTES
                                    ? srv->cfg.max_message_bytes
                                    : GL_HELLO_MAX_BYTES);

  int r = uv_accept(ls, &c->io.stream);
  if (r < 0) {
    GL_LOG_W("%s: accept: %s", l->name, uv_strerror(r));
    gl__conn_close(c);
    return;
  }
  struct sockaddr_storage ss;
  uint8_t key[16];
  bool has_key = false;
  if (l->is_pipe) {
    snprintf(c->peer, sizeof c->peer, "unix");
  } else {
    int len = sizeof ss;
    uv_tcp_nodelay(&c->io.tcp, 1); /* answers are small and latency matters */
    if (uv_tcp_getpeername(&c->io.tcp, (struct sockaddr *)&ss, &len) == 0) {
      gl_addr_format(&ss, c->peer, sizeof c->peer);
      has_key = gl__src_key(&ss, key);
    }
  }
  /* Admission: a slot among max_clients, within the address's share; at
   * max_clients the oldest connection still without Hello makes room. */
  const struct gl_config *cfg = &srv->cfg;
  const bool crowded = srv->n_conns > cfg->max_clients + GL_REJECT_SLACK;
  struct gl_src **src = has_key ? gl__src_slot(srv, key) : NULL;
  if (crowded) {
    c->reject = true;
  } else if (cfg->max_clients_per_address && src && *src &&
             (*src)->n >= cfg->max_clients_per_address) {
    c->reject = c->reject_addr = true;
  } else {
    while (srv->n_admitted >= cfg->max_clients && gl__evict_one(srv)) {
    }
    c->reject = srv->n_admitted >= cfg->max_clients;
  }
  if (!c->reject) {
    c->admitted = true;
    srv->n_admitted++;
    gl_metrics_set_clients(srv->metrics, srv->n_admitted);
    src = has_key ? gl__src_slot(srv, key) : NULL; /* an eviction may have changed the table */
    if (src && !*src && (*src = calloc(1, sizeof **src)) != NULL)
      memcpy((*src)->addr, key, sizeof key);
    if (src && *src) {
      (*src)->n++;
      c->src = *src;
    }
    c->in_hs = true; /* the newest connection without Hello */
    c->hs_prev = srv->hs_tail;
    if (srv->hs_tail)
      srv->hs_tail->hs_next = c;
    else
      srv->hs_head = c;
    srv->hs_tail = c;
  }
  if (c->reject && l->tls && crowded) {
    /* It could only be told after a TLS handshake, which would cost more
     * than the flood it belongs to is worth. */
    gl__note_refusal(srv, GL__CUT, c, "too many connections open to answer one more over TLS");
    gl__conn_close(c);
    return;
  }
  if (l->tls && gl_tls_conn_create(srv->tls_ctx, &c->tls) != GL_OK) {
    GL_LOG_E("%s: cannot create TLS state for %s", l->name, c->peer);
    gl__conn_close(c);
    return;
  }
  GL_LOG_D("session %llu (%s): connected on %s", (unsigned long long)c->session_id, c->peer,
           l->name);
  if (c->reject && !c->tls) {
    gl__conn_refuse_new(c); /* told at once, closed once that is written */
    return;
  }
  gl__conn_arm_timer(c);
  uv_read_start(&c->io.stream, gl__on_alloc, gl__on_read);
}

/* ---- listeners --------------------------------------------------------- */

static int gl__listener_start(struct gl_server *srv, struct gl_listener *l, char *err,
                              size_t errlen) {
  l->srv = srv;
  l->io.handle.data = l;
  int r = uv_listen(&l->io.stream, 511, gl__on_connection);
  if (r < 0) {
    snprintf(err, errlen, "%s: listen: %s", l->name, uv_strerror(r));
    return GL_EADDR;
  }
  GL_LOG_I("listening: %s", l->name);
  return GL_OK;
}

static int gl__listen_tcp(struct gl_server *srv, const char *addr, bool tls, char *err,
                          size_t errlen) {
  struct gl_listener *l = &srv->listeners[srv->n_listeners];
  struct sockaddr_storage ss;
  if (gl_addr_parse(addr, &ss) != GL_OK) {
    snprintf(err, errlen, "[listen] %s: bad address '%s'", tls ? "tls" : "tcp", addr);
    return GL_EADDR;
  }
  uv_tcp_init(srv->loop, &l->io.tcp);
  srv->n_listeners++; /* from here on it is closed with the others */
  l->tls = tls;
  snprintf(l->name, sizeof l->name, "%s %s", tls ? "tls" : "tcp", addr);
  int r = uv_tcp_bind(&l->io.tcp, (const struct sockaddr *)&ss, 0);
  if (r < 0) {
    snprintf(err, errlen, "%s: bind: %s", l->name, uv_strerror(r));
    return GL_EADDR;
  }
  return gl__listener_start(srv, l, err, errlen);
}

/* What is at a unix socket path before we bind it. A socket that accepts
 * a connection belongs to a live process (another geolocd, most likely):
 * replacing it would cut that one off from its clients, so the start fails.
 * A socket nobody listens on (the connection is refused) was left by a
 * process that died, and is removed. Anything else is not ours to remove. */
static int gl__unix_path_free(const char *name, const struct sockaddr_un *sa, char *err,
                              size_t errlen) {
  const char *path = sa->sun_path;
  struct stat st;
  if (lstat(path, &st) != 0) {
    if (errno == ENOENT)
      return GL_OK;
    snprintf(err, errlen, "%s: %s", name, strerror(errno));
    return GL_EADDR;
  }
  if (!S_ISSOCK(st.st_mode)) {
    snprintf(err, errlen, "%s: the path exists and is not a socket (not removing it)", name);
    return GL_EADDR;
  }
  /* Non-blocking: a live socket with a full backlog says EAGAIN at once. */
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    snprintf(err, errlen, "%s: socket: %s", name, strerror(errno));
    return GL_EADDR;
  }
  int r = connect(fd, (const struct sockaddr *)sa, sizeof *sa);
  int e = errno;
  close(fd);
  if (r == 0 || e == EAGAIN || e == EINPROGRESS) {
    snprintf(err, errlen,
             "%s: in use: another process (another geolocd?) is listening on this socket", name);
    return GL_EADDR;
  }
  if (e == ENOENT)
    return GL_OK; /* gone meanwhile */
  if (e != ECONNREFUSED) {
    snprintf(err, errlen, "%s: cannot tell whether the socket is in use (%s); not removing it",
             name, strerror(e));
    return GL_EADDR;
  }
  if (unlink(path) != 0 && errno != ENOENT) {
    snprintf(err, errlen, "%s: cannot remove the stale socket: %s", name, strerror(errno));
    return GL_EADDR;
  }
  GL_LOG_N("%s: removed a stale socket that nothing listened on", name);
  return GL_OK;
}

/* [listen] unix: the socket file gets unix_mode and unix_group, and no
 * moment with more permissions than those (see fchmod below). */
static int gl__listen_unix(struct gl_server *srv, const char *path, char *err, size_t errlen) {
  const struct gl_config *cfg = &srv->cfg;
  struct gl_listener *l = &srv->listeners[srv->n_listeners];
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  struct stat st;
  gid_t gid = (gid_t)-1;
  char why[160];
  int fd;
  uv_pipe_init(srv->loop, &l->io.pipe, 0);
  srv->n_listeners++;
  l->is_pipe = true;
  snprintf(l->name, sizeof l->name, "unix %s", path);
  if (strlen(path) >= sizeof sa.sun_path) {
    snprintf(err, errlen, "%s: path longer than %zu bytes", l->name, sizeof sa.sun_path - 1);
    return GL_EADDR;
  }
  memcpy(sa.sun_path, path, strlen(path) + 1);
  if (cfg->unix_group && gl_config_group(cfg->unix_group, &gid, why, sizeof why) != GL_OK) {
    snprintf(err, errlen, "%s: [listen] unix_group: %s", l->name, why);
    return GL_ECONFIG;
  }
  if (gl__unix_path_free(l->name, &sa, err, errlen) != GL_OK)
    return GL_EADDR;
  fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    snprintf(err, errlen, "%s: socket: %s", l->name, strerror(errno));
    return GL_EADDR;
  }
  /* Linux creates the file with the socket's own mode less the umask: the
   * configured bits or fewer, until the chmod below makes them exact. */
  (void)fchmod(fd, (mode_t)cfg->unix_mode);
  if (bind(fd, (const struct sockaddr *)&sa, sizeof sa) != 0) {
    snprintf(err, errlen, "%s: bind: %s", l->name, strerror(errno));
    goto fail;
  }
  l->unlink_path = strdup(path);
  if (lstat(path, &st) != 0 || !l->unlink_path) {
    snprintf(err, errlen, "%s: %s", l->name, l->unlink_path ? strerror(errno) : "out of memory");
    goto fail;
  }
  l->unix_dev = st.st_dev;
  l->unix_ino = st.st_ino;
  if (gid != (gid_t)-1 && lchown(path, (uid_t)-1, gid) != 0) {
    snprintf(err, errlen, "%s: cannot give the socket to group %s: %s", l->name, cfg->unix_group,
             strerror(errno));
    goto fail;
  }
  if (chmod(path, (mode_t)cfg->unix_mode) != 0) {
    snprintf(err, errlen, "%s: chmod %04o: %s", l->name, (unsigned)cfg->unix_mode, strerror(errno));
    goto fail;
  }
  int r = uv_pipe_open(&l->io.pipe, fd);
  if (r < 0) {
    snprintf(err, errlen, "%s: %s", l->name, uv_strerror(r));
    goto fail;
  }
  return gl__listener_start(srv, l, err, errlen); /* the handle owns fd now */
fail:
  close(fd); /* the listener is closed, and its file removed, with the others */
  return GL_EADDR;
}

/* Sockets from systemd: FileDescriptorName=tls marks TLS ones. */
static int gl__listen_activated(struct gl_server *srv, int n, char **names, char *err,
                                size_t errlen) {
  for (int i = 0; i < n && srv->n_listeners < GL_MAX_LISTENERS; i++) {
    int fd = 3 + i;
    struct gl_listener *l = &srv->listeners[srv->n_listeners];
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    char addr[96];
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0) {
      snprintf(err, errlen, "socket activation: fd %d: %s", fd, strerror(errno));
      return GL_EADDR;
    }
    l->tls = names && names[i] && strcmp(names[i], "tls") == 0;
    int r;
    if (ss.ss_family == AF_UNIX) {
      uv_pipe_init(srv->loop, &l->io.pipe, 0);
      l->is_pipe = true;
      snprintf(addr, sizeof addr, "unix fd %d", fd);
      r = uv_pipe_open(&l->io.pipe, fd);
    } else {
      uv_tcp_init(srv->loop, &l->io.tcp);
      gl_addr_format(&ss, addr, sizeof addr);
      r = uv_tcp_open(&l->io.tcp, fd);
    }
    srv->n_listeners++;
    snprintf(l->name, sizeof l->name, "%s %s (systemd)", l->tls ? "tls" : "plain", addr);
    if (r < 0) {
      snprintf(err, errlen, "%s: %s", l->name, uv_strerror(r));
      return GL_EADDR;
    }
    if (!l->tls && ss.ss_family != AF_UNIX && !gl_addr_is_loopback(&ss) &&
        !srv->cfg.allow_remote_plaintext) {
      snprintf(err, errlen,
               "%s: plaintext socket on a non-loopback address (name it 'tls' with "
               "FileDescriptorName=, or set [listen] allow_remote_plaintext = true)",
               l->name);
      return GL_EADDR;
    }
    if (gl__listener_start(srv, l, err, errlen) != GL_OK)
      return GL_EADDR;
  }
  return GL_OK;
}

static int gl__listen_all(struct gl_server *srv, char *err, size_t errlen) {
  const struct gl_config *cfg = &srv->cfg;
  char **names = NULL;
  int n = gl_sd_listen_fds(&names);
  int rc = GL_OK;
  if (n < 0) {
    snprintf(err, errlen, "socket activation: invalid LISTEN_FDS");
    return GL_EADDR;
  }
  if (n > 0) {
    srv->activated = true;
    GL_LOG_I("%d socket(s) from systemd replace the [listen] addresses", n);
    rc = gl__listen_activated(srv, n, names, err, errlen);
    gl_sd_free_names(names);
    return rc;
  }
  if (cfg->tcp)
    rc = gl__listen_tcp(srv, cfg->tcp, false, err, errlen);
  if (rc == GL_OK && cfg->unix_path)
    rc = gl__listen_unix(srv, cfg->unix_path, err, errlen);
  if (rc == GL_OK && cfg->tls)
    rc = gl__listen_tcp(srv, cfg->tls, true, err, errlen);
  if (rc == GL_OK && srv->n_listeners == 0) {
    snprintf(err, errlen, "%s: no listener: set [listen] tcp, unix or tls", cfg->path);
    rc = GL_ECONFIG;
  }
  return rc;
}

static bool gl__has_tls_listener(const struct gl_server *srv) {
  for (int i = 0; i < srv->n_listeners; i++)
    if (srv->listeners[i].tls)
      return true;
  return false;
}

/* ---- signals, watchdog, stop and reload ------------------------------- */

static void gl__notify_status(struct gl_server *srv, const char *prefix) {
  gl_sd_notifyf("%sSTATUS=%s: %u client(s), %d listener(s)", prefix,
                srv->stopping ? "draining" : "serving", srv->n_admitted, srv->n_listeners);
}

static void gl__on_watchdog(uv_timer_t *t) {
  struct gl_server *srv = t->data;
  gl__notify_status(srv, "WATCHDOG=1\n");
}

static void gl__on_server_handle_closed(uv_handle_t *h) { (void)h; }

static void gl__on_heartbeat(uv_timer_t *t) {
  struct gl_server *srv = t->data;
  gl_metrics_heartbeat(srv->metrics);
}

static void gl__srv_maybe_done(struct gl_server *srv) {
  if (!srv->stopping || srv->conns || srv->finished)
    return;
  srv->finished = true;
  gl_pipeline_stop(srv->pipe); /* nothing is pending: no connection is left */
  uv_close((uv_handle_t *)&srv->sig_term, gl__on_server_handle_closed);
  uv_close((uv_handle_t *)&srv->sig_int, gl__on_server_handle_closed);
  uv_close((uv_handle_t *)&srv->sig_hup, gl__on_server_handle_closed);
  uv_close((uv_handle_t *)&srv->watchdog, gl__on_server_handle_closed);
  uv_close((uv_handle_t *)&srv->drain, gl__on_server_handle_closed);
  uv_close((uv_handle_t *)&srv->heartbeat, gl__on_server_handle_closed);
}

static void gl__on_drain_timeout(uv_timer_t *t) {
  struct gl_server *srv = t->data;
  GL_LOG_W("drain timeout: closing %u remaining connection(s)", srv->n_conns);
  for (struct gl_conn *c = srv->conns; c; c = c->next)
    gl__conn_close(c);
}

static void gl__close_listeners(struct gl_server *srv) {
  for (int i = 0; i < srv->n_listeners; i++) {
    struct gl_listener *l = &srv->listeners[i];
    if (!uv_is_closing(&l->io.handle))
      uv_close(&l->io.handle, gl__on_server_handle_closed);
    if (l->unlink_path) {
      struct stat st;
      /* Only the socket we bound, never a file that has replaced it. */
      if (lstat(l->unlink_path, &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == l->unix_dev &&
          st.st_ino == l->unix_ino)
        unlink(l->unlink_path);
      free(l->unlink_path);
      l->unlink_path = NULL;
    }
  }
}

static void gl__srv_stop(struct gl_server *srv, int signum) {
  if (srv->stopping)
    return;
  srv->stopping = true;
  GL_LOG_N("%s: draining %u connection(s)", strsignal(signum), srv->n_conns);
  gl__notify_status(srv, "STOPPING=1\n");
  gl_metrics_set_ready(srv->metrics, false);
  gl__close_listeners(srv);
  for (struct gl_conn *c = srv->conns, *next; c; c = next) {
    next = c->next; /* closing may unlink c */
    if (c->state == GL_CONN_CLOSING)
      continue;
    if (c->tls && !c->tls_up)
      gl__conn_close(c);
    else
      gl__conn_error(c, GEOLOC__V1__ERROR__CODE__SHUTTING_DOWN, NULL, true,
                     "server is shutting down");
  }
  if (srv->cfg.drain_timeout_ms)
    uv_timer_start(&srv->drain, gl__on_drain_timeout, srv->cfg.drain_timeout_ms, 0);
  else
    gl__on_drain_timeout(&srv->drain);
  gl__srv_maybe_done(srv);
}

static bool gl__str_differs(const char *a, const char *b) {
  return (a == NULL) != (b == NULL) || (a && strcmp(a, b) != 0);
}

static void gl__swap_str(char **a, char **b) {
  char *t = *a;
  *a = *b;
  *b = t;
}

static void gl__srv_reload(struct gl_server *srv);

static void gl__report_runtime(struct gl_server *srv) {
  gl_metrics_set_backend(srv->metrics, srv->rt ? gl_nn_engine_backend_name(srv->rt->engine)
                                               : "none");
  gl_metrics_set_maps(srv->metrics, srv->rt ? srv->rt->n_maps : 0);
}

/* Adopts a reloaded configuration, its TLS context and runtime (NULL when
 * it has no [model]): everything changes at once, on the loop thread. */
static void gl__srv_apply(struct gl_server *srv, struct gl_config *nc, struct gl_tls_ctx *ctx,
                          struct gl_runtime *rt) {
  if (!srv->activated &&
      (gl__str_differs(nc->tcp, srv->cfg.tcp) ||
       gl__str_differs(nc->unix_path, srv->cfg.unix_path) ||
       gl__str_differs(nc->tls, srv->cfg.tls) || nc->unix_mode != srv->cfg.unix_mode ||
       gl__str_differs(nc->unix_group, srv->cfg.unix_group)))
    GL_LOG_W("[listen] changed: the new addresses take effect at the next restart");
  if (ctx) {
    gl_tls_ctx_release(srv->tls_ctx); /* open connections keep their reference */
    srv->tls_ctx = ctx;
  }
  /* Frames in flight keep the runtime they were accepted with. */
  gl_runtime_unref(srv->rt);
  srv->rt = rt;
  gl__report_runtime(srv);
  /* The listeners in use stay recorded as they were opened: swap their
   * addresses into nc, free the rest of the old config, adopt nc. */
  gl__swap_str(&nc->tcp, &srv->cfg.tcp);
  gl__swap_str(&nc->unix_path, &srv->cfg.unix_path);
  gl__swap_str(&nc->tls, &srv->cfg.tls);
  gl_config_fini(&srv->cfg);
  srv->cfg = *nc;
  gl_config_defaults(nc);
  /* Open connections keep the message limit their Welcome announced. */
  gl_log_init(srv->cfg.log_level);
  GL_LOG_N("configuration reloaded%s", rt ? " with its model and maps" : "");
  gl__notify_status(srv, "READY=1\n");
}

static void gl__reload_work(uv_work_t *w) {
  struct gl_server *srv = w->data;
  srv->reload_rc =
      gl_runtime_load(&srv->reload_cfg, &srv->reload_rt, srv->reload_err, sizeof srv->reload_err);
}

static void gl__reload_done(uv_work_t *w, int status) {
  struct gl_server *srv = w->data;
  struct gl_tls_ctx *ctx = srv->reload_ctx;
  srv->reloading = false;
  srv->reload_ctx = NULL;
  if (status == 0 && srv->reload_rc == GL_OK && !srv->stopping) {
    gl__srv_apply(srv, &srv->reload_cfg, ctx, srv->reload_rt);
  } else {
    if (!srv->stopping) {
      GL_LOG_E("reload failed, keeping the running model, maps and configuration: %s",
               status == 0 ? srv->reload_err : uv_strerror(status));
      gl_sd_notify("READY=1\nSTATUS=serving; last reload failed, see the log");
    }
    gl_runtime_unref(srv->reload_rt);
    gl_tls_ctx_release(ctx);
    gl_config_fini(&srv->reload_cfg);
  }
  srv->reload_rt = NULL;
  if (srv->reload_again && !srv->stopping) {
    srv->reload_again = false;
    gl__srv_reload(srv);
  }
}

static void gl__srv_reload(struct gl_server *srv) {
  struct gl_config nc;
  struct gl_tls_ctx *ctx = NULL;
  char err[512];
  if (srv->reloading) {
    srv->reload_again = true; /* after the model being loaded now */
    return;
  }
  gl_sd_notify("RELOADING=1");
  GL_LOG_N("SIGHUP: reloading %s", srv->cfg.path);
  int rc = gl_config_load(srv->cfg.path, &nc, err, sizeof err);
  if (rc != GL_OK)
    goto fail;
  if (gl__has_tls_listener(srv)) {
    if (!nc.tls_cert || !nc.tls_key) {
      snprintf(err, sizeof err, "%s: [tls] cert and key are required while a TLS listener is open",
               nc.path);
      gl_config_fini(&nc);
      goto fail;
    }
    if (gl_tls_ctx_create(&nc, &ctx, err, sizeof err) != GL_OK) {
      gl_config_fini(&nc);
      goto fail;
    }
  }
  if (!nc.model_path) {
    gl__srv_apply(srv, &nc, ctx, NULL);
    return;
  }
  /* Loading a model and maps takes seconds: off the loop, while the old
   * ones keep serving. */
  srv->reloading = true;
  srv->reload_cfg = nc;
  srv->reload_ctx = ctx;
  srv->reload_work.data = srv;
  rc = uv_queue_work(srv->loop, &srv->reload_work, gl__reload_work, gl__reload_done);
  if (rc < 0) {
    srv->reloading = false;
    snprintf(err, sizeof err, "cannot queue the model load: %s", uv_strerror(rc));
    gl_tls_ctx_release(ctx);
    gl_config_fini(&srv->reload_cfg);
    goto fail;
  }
  return;
fail:
  GL_LOG_E("reload failed, keeping the running configuration: %s", err);
  gl_sd_notify("READY=1\nSTATUS=serving; last reload failed, see the log");
}

static void gl__on_signal(uv_signal_t *h, int signum) {
  struct gl_server *srv = h->data;
  if (signum == SIGHUP)
    gl__srv_reload(srv);
  else
    gl__srv_stop(srv, signum);
}

/* ---- public ------------------------------------------------------------ */

int gl_server_create(uv_loop_t *loop, struct gl_config *cfg, struct gl_server **out, char *err,
                     size_t errlen) {
  struct gl_server *srv = calloc(1, sizeof *srv);
  int rc;
  *out = NULL;
  if (!srv) {
    snprintf(err, errlen, "out of memory");
    return GL_ENOMEM;
  }
  srv->loop = loop;
  srv->src_seed = (uint32_t)(gl__realtime_us() ^ (uintptr_t)srv);
  srv->cfg = *cfg;
  gl_config_defaults(cfg); /* ownership moved */
  uv_signal_init(loop, &srv->sig_term);
  uv_signal_init(loop, &srv->sig_int);
  uv_signal_init(loop, &srv->sig_hup);
  uv_timer_init(loop, &srv->watchdog);
  uv_timer_init(loop, &srv->drain);
  uv_timer_init(loop, &srv->heartbeat);
  srv->heartbeat.data = srv;
  srv->sig_term.data = srv->sig_int.data = srv->sig_hup.data = srv;
  srv->watchdog.data = srv->drain.data = srv;

  /* The model and maps load before any socket is opened: a client never
   * reaches a daemon that is not ready to serve it. */
  if (srv->cfg.model_path) {
    rc = gl_runtime_load(&srv->cfg, &srv->rt, err, errlen);
    if (rc != GL_OK)
      goto fail;
  }
  rc = gl_pipeline_create(loop, gl__on_job_done, srv, &srv->pipe, err, errlen);
  if (rc != GL_OK)
    goto fail;
  rc = gl__listen_all(srv, err, errlen);
  if (rc != GL_OK)
    goto fail;
  /* A NULL listen address gives a registry without an HTTP server. */
  rc = gl_metrics_create(srv->cfg.metrics_listen, &srv->metrics, err, errlen);
  if (rc != GL_OK)
    goto fail;
  gl__report_runtime(srv);
  uv_timer_start(&srv->heartbeat, gl__on_heartbeat, GL_METRICS_HEARTBEAT_MS,
                 GL_METRICS_HEARTBEAT_MS);
  if (gl__has_tls_listener(srv)) {
    if (!srv->cfg.tls_cert || !srv->cfg.tls_key) {
      snprintf(err, errlen, "%s: a TLS socket needs [tls] cert and key", srv->cfg.path);
      rc = GL_ECONFIG;
      goto fail;
    }
    rc = gl_tls_ctx_create(&srv->cfg, &srv->tls_ctx, err, errlen);
    if (rc != GL_OK)
      goto fail;
  }
  uv_signal_start(&srv->sig_term, gl__on_signal, SIGTERM);
  uv_signal_start(&srv->sig_int, gl__on_signal, SIGINT);
  uv_signal_start(&srv->sig_hup, gl__on_signal, SIGHUP);
  uint64_t wd = gl_sd_watchdog_usec();
  if (wd) {
    /* Ping at half the interval, as sd_watchdog_enabled(3) advises. */
    srv->watchdog_ms = wd / 2000 ? wd / 2000 : 1;
    uv_timer_start(&srv->watchdog, gl__on_watchdog, srv->watchdog_ms, srv->watchdog_ms);
  }
  *out = srv;
  return GL_OK;
fail:
  srv->stopping = true;
  gl__close_listeners(srv);
  gl__srv_maybe_done(srv);
  uv_run(loop, UV_RUN_DEFAULT); /* completes the closes */
  gl_server_destroy(srv);
  return rc;
}

int gl_server_run(struct gl_server *srv) {
  gl__notify_status(srv, "READY=1\n");
  gl_metrics_set_ready(srv->metrics, true);
  GL_LOG_N("geolocd %s ready (protocol %d)", GL_VERSION, GL_PROTOCOL_VERSION);
  uv_run(srv->loop, UV_RUN_DEFAULT);
  GL_LOG_N("stopped");
  return GL_OK;
}

void gl_server_destroy(struct gl_server *srv) {
  if (!srv)
    return;
  gl_metrics_destroy(srv->metrics);
  gl_pipeline_destroy(srv->pipe);
  gl_runtime_unref(srv->rt);
  gl_tls_ctx_release(srv->tls_ctx);
  gl_config_fini(&srv->cfg);
  free(srv);
}
