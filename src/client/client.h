/* A blocking client for the geoloc protocol over TCP, TLS or a unix socket.
 *
 * Used by the CLI and the tests. Sending and receiving are independent, so a
 * caller can pipeline frames: send many, then receive the answers. */
#ifndef GL_CLIENT_CLIENT_H
#define GL_CLIENT_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/wire.h"

struct gl_client;

struct gl_client_opts {
  /* "host:port", "[v6]:port" or "unix:/path/to.sock". */
  const char *address;
  /* TLS when true: the server is verified against tls_ca (required), and
   * tls_cert/tls_key (both or neither) are presented as the client's. */
  bool tls;
  const char *tls_ca;
  const char *tls_cert;
  const char *tls_key;
  /* Name verified in the server certificate; default: the host of address. */
  const char *server_name;
  /* Connect, TLS handshake and send timeout; 0 means 10 s. */
  int timeout_ms;
  /* Largest server message accepted; 0 means 64 MiB. */
  uint32_t max_message_bytes;
  /* Hello.token; NULL means the environment's GEOLOC_TOKEN, when set (an
   * environment variable does not show in ps as an argument would). */
  const char *token;
};

/* Connects (and completes the TLS handshake). On failure writes the reason to
 * err and returns GL_ECONNECT, GL_EADDR, GL_ETLS or GL_ETIMEDOUT. */
int gl_client_connect(const struct gl_client_opts *opts, struct gl_client **out, char *err,
                      size_t errlen);

void gl_client_destroy(struct gl_client *c);

/* Sends one message. Returns 0, GL_ECLOSED, GL_ETIMEDOUT, GL_ETLS or GL_EIO. */
int gl_client_send(struct gl_client *c, const gl_client_msg *msg);

/* Sends raw bytes as they are (tests use it to send broken streams). */
int gl_client_send_raw(struct gl_client *c, const void *data, size_t len);

/* Receives one message, waiting at most timeout_ms (-1: forever). Returns 0
 * with *out set (free with gl_wire_free), GL_ETIMEDOUT, GL_ECLOSED on an
 * orderly close by the server, GL_EMALFORMED, GL_ETOOBIG, GL_ETLS or GL_EIO. */
int gl_client_recv(struct gl_client *c, int timeout_ms, gl_server_msg **out);

/* Sends Hello (protocol version GL_PROTOCOL_VERSION unless version is not 0)
 * and waits for the answer, which is returned in *reply (a Welcome, or the
 * server's Error). Returns 0 when a reply arrived, else as gl_client_recv. */
int gl_client_hello(struct gl_client *c, const char *client_name, const char *map,
                    uint32_t version, int timeout_ms, gl_server_msg **reply);

/* gl_client_hello with StreamOptions (NULL: none). */
int gl_client_hello_opts(struct gl_client *c, const char *client_name, const char *map,
                         const Geoloc__V1__StreamOptions *opts, int timeout_ms,
                         gl_server_msg **reply);

/* ---- A stream that outlives its connections ----------------------------
 * A replica can be drained, restarted or killed behind a proxy; a client
 * then connects again (to whichever replica the proxy picks), says the same
 * Hello, and sends again the frames that were never answered, so that from
 * its side each frame is answered once. The caller keeps the frames; these
 * make the connection. */

/* What Hello says, every time. */
struct gl_client_hello_args {
  const char *client_name;
  const char *map;                         /* NULL: the server's only map */
  const Geoloc__V1__StreamOptions *stream; /* NULL: none */
};

/* Connects and says Hello: on success *out is a client the server has
 * welcomed and *welcome its Welcome (free with gl_wire_free). On failure
 * err says why, and the result is a connection error (as
 * gl_client_connect, gl_client_recv), GL_EUNAVAIL when the server refused
 * for now (SHUTTING_DOWN, RESOURCE_EXHAUSTED, UNAVAILABLE), or GL_EPROTO
 * for any other refusal. */
int gl_client_open(const struct gl_client_opts *co, const struct gl_client_hello_args *h,
                   struct gl_client **out, gl_server_msg **welcome, char *err, size_t errlen);

/* True when an error of gl_client_open, _send or _recv (or GL_EUNAVAIL for
 * a server's Error that is not about one frame: shutting down, too busy)
 * may go away with a new connection. */
bool gl_client_retryable(int rc);

/* Error code of a server's Error that ends the stream, as an error of
 * ours: GL_EUNAVAIL when a new connection may fare better, else
 * GL_EPROTO. */
int gl_client_error_rc(int code);

/* gl_client_open until it succeeds, fails for good (not retryable), or
 * budget_ms have passed since *lost_ms: waits before each attempt, 50 ms
 * doubling up to 2 s, each wait drawn from its upper half (jitter: clients
 * cut off together do not come back together). *lost_ms is when the stream
 * stopped getting answers (CLOCK_MONOTONIC, ms); 0 means now, and it is
 * set then. The caller sets it back to 0 when an answer comes, so that the
 * budget bounds the time without one, not each outage: a server that
 * welcomes and then drops every stream is given up on. GL_ETIMEDOUT when
 * the budget is spent. *attempts counts the tries. */
int gl_client_reopen(const struct gl_client_opts *co, const struct gl_client_hello_args *h,
                     uint32_t budget_ms, int64_t *lost_ms, struct gl_client **out,
                     gl_server_msg **welcome, unsigned *attempts, char *err, size_t errlen);

/* Text of the last TLS or system error on this client, "" when none. */
const char *gl_client_last_error(const struct gl_client *c);

/* The socket, e.g. for shutdown(2) in tests. */
int gl_client_fd(const struct gl_client *c);

#endif
