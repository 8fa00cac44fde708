/* What the files of geolocd's server share (docs/ARCHITECTURE.md section 11).
 *
 *   server.c  create, run, destroy: the order things start and stop in
 *   listen.c  listeners (tcp, unix, tls, systemd's), accept, admission:
 *             max_clients, per-address counts, eviction, refusals
 *   conn.c    one connection's life: reading and writing through its
 *             transport (core/transport.h), output limits, timers, closing
 *   proto.c   the protocol: framing, Hello/Welcome, Frame, Ping, Error, the
 *             pre-scan of a message's fields, and each job's answer
 *   reload.c  signals: SIGHUP's reload, SIGTERM's drain; systemd's status
 *             and watchdog
 *
 * Everything runs on the loop thread, except where reload.c says so. */
#ifndef GL_DAEMON_SERVER_INTERNAL_H
#define GL_DAEMON_SERVER_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>
#include <uv.h>

#include "core/config.h"
#include "core/transport.h"
#include "pipeline.h"
#include "proto/wire.h"
#include "server.h"

#define GL_MAX_LISTENERS 16
/* Buckets of the per-source-address connection counts. */
#define GL_SRC_BUCKETS 1024
/* The largest message accepted before Hello (a Hello is a few short
 * strings): an unauthenticated peer cannot make the server buffer and
 * unpack max_message_bytes. Raised to max_message_bytes after Welcome. */
#define GL_HELLO_MAX_BYTES (64u << 10)
#define GL_READ_CHUNK 65536

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
  bool tls; /* its connections get a TLS transport */
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

/* A connection's output bytes: what libuv is writing, or what waits for
 * that write to finish. */
struct gl_outbuf {
  uint8_t *data;
  size_t len, cap;
};

struct gl_conn {
  struct gl_server *srv;
  union gl_stream io;
  uv_timer_t timer; /* handshake, idle or linger deadline, by state */
  uv_shutdown_t shutdown_req;
  /* Output: at most one write in flight (wr); answers made meanwhile are
   * appended to out and leave together when it completes (conn.c). */
  uv_write_t write_req;
  struct gl_outbuf wr, out;
  bool writing;        /* write_req is in flight with wr */
  bool shutdown_due;   /* uv_shutdown once the output is all written */
  struct gl_conn *prev, *next;
  /* Plaintext or TLS, chosen by the listener; the I/O paths only call it. */
  struct gl_transport tp;
  struct gl_transport_plain plain; /* tp's state when it is plaintext */
  struct gl_wire_decoder dec;
  enum gl_conn_state state;
  bool admitted; /* holds one of max_clients slots */
  bool reject;   /* over the limit: refuse once we can speak */
  bool read_paused;
  bool peer_eof;
  bool shutdown_done;
  bool closing;         /* uv_close issued */
  bool draining;        /* SIGTERM: answer what is in flight, then say goodbye */
  uint32_t inflight;    /* frames accepted and not answered yet */
  gl_err_code bye_code; /* while draining: the fatal Error to send last */
  char bye_text[256];
  char map[65];                /* the map this stream localizes against */
  struct gl_stream_track *trk; /* a tracked stream (StreamOptions.track); NULL otherwise */
  struct gl_decode_queue dq;   /* its frames waiting for a decode worker */
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

struct gl_server {
  uv_loop_t *loop;
  struct gl_config cfg;
  struct gl_runtime *rt; /* NULL without a [model] */
  uint32_t search_threads; /* [search] threads, resolved at start: never changes */
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
  bool unready; /* SIGTERM during stop_delay_ms: /readyz says 503, serving goes on */
  bool stopping, finished;
  uint8_t read_buf[GL_READ_CHUNK]; /* the loop reads one chunk at a time */
  uint8_t plain_buf[GL_READ_CHUNK];
  /* A message being encoded, before its transport takes it: one buffer
   * for every answer, since the loop sends one at a time. */
  uint8_t send_buf[GL_READ_CHUNK];
};

static inline uint64_t gl__realtime_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* ---- server.c ------------------------------------------------------------ */

/* The runtime's backend and map count, to the metrics. */
void gl__report_runtime(struct gl_server *srv);

/* ---- listen.c ------------------------------------------------------------ */

/* Opens the listeners: systemd's sockets, else [listen]'s addresses. */
int gl__listen_all(struct gl_server *srv, char *err, size_t errlen);
bool gl__has_tls_listener(const struct gl_server *srv);
/* Closes the listeners, removing the unix socket files we bound. */
void gl__close_listeners(struct gl_server *srv);
/* Gives up c's slot among max_clients (and its address's count). */
void gl__conn_unadmit(struct gl_conn *c);
/* Refuses a connection that was over the limits when it arrived, now that
 * it can be told (after its TLS handshake). */
void gl__conn_refuse_new(struct gl_conn *c);

/* ---- conn.c -------------------------------------------------------------- */

/* Starts (or resumes) reading from the socket. */
void gl__conn_read_start(struct gl_conn *c);
/* Encodes m and queues it through the connection's transport; on failure
 * the connection is closed. */
void gl__conn_send(struct gl_conn *c, const gl_server_msg *m);
/* Ends the conversation: flushes, shuts the transport and the socket down,
 * closes after the peer (or the linger timer). */
void gl__conn_finish(struct gl_conn *c);
/* Closes the handles now; c is freed once its frames are answered. */
void gl__conn_close(struct gl_conn *c);
/* Frees c when its handles are closed and no frame of it is in flight. */
void gl__conn_release(struct gl_conn *c);
/* The handshake or idle deadline, by state. */
void gl__conn_arm_timer(struct gl_conn *c);

/* ---- proto.c ------------------------------------------------------------- */

/* Plaintext protocol bytes in. */
void gl__proto_input(struct gl_conn *c, const uint8_t *data, size_t len);
/* Sends an Error; a fatal one ends the connection after it is flushed. */
void gl__conn_error(struct gl_conn *c, gl_err_code code, const uint64_t *frame_id, bool fatal,
                    const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* The pipeline's done callback, on the loop thread: the frame's answer. */
void gl__on_job_done(void *ud, struct gl_job *job);

/* ---- reload.c ------------------------------------------------------------ */

/* Starts SIGTERM, SIGINT, SIGHUP handling and the systemd watchdog. */
void gl__srv_signals_start(struct gl_server *srv);
void gl__notify_status(struct gl_server *srv, const char *prefix);
/* Once stopping and without connections: stops the pipeline and closes
 * the server's own handles, so that the loop ends. */
void gl__srv_maybe_done(struct gl_server *srv);

#endif
