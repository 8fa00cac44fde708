/* A connection's transport: what turns the bytes on a socket into the
 * protocol's bytes and back. Two implementations, pass-through (plain TCP
 * and unix sockets, transport.c) and TLS (OpenSSL over memory BIOs,
 * tls.c), behind one vtable, so that the code moving bytes (geolocd's
 * connections, daemon/conn.c; the client, src/client/client.c) never asks
 * which one it has (docs/ARCHITECTURE.md section 11).
 *
 * A transport owns no socket: its user reads the socket and feeds what
 * arrived, reads the plaintext out, writes plaintext in and sends what the
 * transport then has as output. That is the shape libuv needs (it owns the
 * socket and hands over filled buffers) and a blocking client can pump it
 * as well. Every entry runs on its user's thread; none blocks. */
#ifndef GL_CORE_TRANSPORT_H
#define GL_CORE_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct gl_transport_i {
  /* "plain" or "TLS": for log lines and labels, never for a decision. */
  const char *name;
  /* Bytes received from the socket. Read until read() returns 0 before
   * feeding more: the pass-through transport keeps no copy. Returns 0 or
   * a negative GL_E* code (the reason is in error()). */
  int (*feed)(void *t, const uint8_t *data, size_t len);
  /* The socket says end of file: reads return what is left, then the end
   * (GL_ECLOSED), or GL_ETLS where the protocol needed a closing message
   * that never came (a truncated TLS stream). */
  void (*end_of_input)(void *t);
  /* True once the transport can carry protocol bytes: at once for the
   * pass-through, after the handshake for TLS. */
  bool (*ready)(const void *t);
  /* Advances the handshake with what was fed (its messages go to the
   * output). Returns 1 when complete, 0 when it needs more input, a
   * negative GL_E* code on failure. */
  int (*handshake)(void *t);
  /* Protocol bytes out: up to cap. Returns the count with *out pointing at
   * them (into buf, or into the bytes last fed where nothing is to be
   * transformed), 0 when none are buffered, GL_ECLOSED at the peer's
   * orderly end, another negative GL_E* code on failure. */
  int (*read)(void *t, uint8_t *buf, size_t cap, const uint8_t **out);
  /* Protocol bytes in; they become output at once. The pass-through keeps
   * a reference to data until its output is taken, so take it before data
   * goes away. Returns 0 or a negative GL_E* code. */
  int (*write)(void *t, const uint8_t *data, size_t len);
  /* Output waiting to be sent: its size, then the bytes themselves into a
   * buffer of the caller's (as many as fit; returns how many). */
  size_t (*pending_output)(void *t);
  size_t (*take_output)(void *t, uint8_t *buf, size_t cap);
  /* Queues the transport's own end of the conversation (TLS close_notify;
   * nothing for the pass-through). */
  void (*shutdown)(void *t);
  /* Why the last call failed, for a log line or a client's error text. */
  const char *(*error)(const void *t);
  /* Who the peer says it is (a TLS client certificate's subject), "" when
   * the transport cannot tell. */
  void (*peer)(const void *t, char *buf, size_t len);
  void (*destroy)(void *t);
};

/* One connection's transport: the vtable beside its context. */
struct gl_transport {
  const struct gl_transport_i *i;
  void *ctx;
};

static inline int gl_transport_feed(struct gl_transport *t, const uint8_t *data, size_t len) {
  return t->i->feed(t->ctx, data, len);
}
static inline void gl_transport_end_of_input(struct gl_transport *t) { t->i->end_of_input(t->ctx); }
static inline bool gl_transport_ready(const struct gl_transport *t) { return t->i->ready(t->ctx); }
static inline int gl_transport_handshake(struct gl_transport *t) { return t->i->handshake(t->ctx); }
static inline int gl_transport_read(struct gl_transport *t, uint8_t *buf, size_t cap,
                                    const uint8_t **out) {
  return t->i->read(t->ctx, buf, cap, out);
}
static inline int gl_transport_write(struct gl_transport *t, const uint8_t *data, size_t len) {
  return t->i->write(t->ctx, data, len);
}
static inline size_t gl_transport_pending_output(struct gl_transport *t) {
  return t->i->pending_output(t->ctx);
}
static inline size_t gl_transport_take_output(struct gl_transport *t, uint8_t *buf, size_t cap) {
  return t->i->take_output(t->ctx, buf, cap);
}
static inline void gl_transport_shutdown(struct gl_transport *t) { t->i->shutdown(t->ctx); }
static inline const char *gl_transport_error(const struct gl_transport *t) {
  return t->i->error(t->ctx);
}
static inline void gl_transport_peer(const struct gl_transport *t, char *buf, size_t len) {
  t->i->peer(t->ctx, buf, len);
}
/* Releases the transport's state and clears t; accepts a cleared t. */
static inline void gl_transport_destroy(struct gl_transport *t) {
  if (t->i)
    t->i->destroy(t->ctx);
  t->i = NULL;
  t->ctx = NULL;
}

/* ---- pass-through (transport.c) ------------------------------------------ */

/* Its state, kept by the user (inside a connection) so that a plaintext
 * connection costs no allocation. The fields are the transport's own. */
struct gl_transport_plain {
  const uint8_t *in; /* fed and not read yet */
  size_t in_len;
  const uint8_t *out; /* written and not taken yet */
  size_t out_len;
  bool eof;
  char err[64];
};

/* Makes *out a pass-through over p. Cannot fail. */
void gl_transport_plain_init(struct gl_transport_plain *p, struct gl_transport *out);

/* ---- TLS (tls.c) ------------------------------------------------------------- */

/* Certificates, key and trust: an SSL_CTX, shared by connections, each of
 * which holds a reference (so a server reload can drop the old context
 * while connections made from it live on). The server's is built from its
 * configuration (daemon/tls.h), a client's by gl_tls_client_ctx_create. */
struct gl_tls_ctx;

/* Drops the caller's reference; transports keep theirs. Accepts NULL. */
void gl_tls_ctx_release(struct gl_tls_ctx *ctx);

/* A client context: TLS 1.2 or newer, the server verified against the CA
 * file ca (required), cert/key (both or neither) presented as the client's.
 * Writes the reason to err and returns GL_EINVAL (options), GL_ETLS (a file
 * OpenSSL refuses) or GL_ENOTSUP (built without TLS). */
int gl_tls_client_ctx_create(const char *ca, const char *cert, const char *key,
                             struct gl_tls_ctx **out, char *err, size_t errlen);

/* A TLS transport from ctx: the server side when server_name is NULL, else
 * the client side, which checks that the server's certificate names
 * server_name (a host name, sent as SNI, or an IP address). Writes the
 * reason to err (when errlen > 0) and returns GL_ENOMEM, GL_ETLS or
 * GL_ENOTSUP. */
int gl_transport_tls_create(struct gl_tls_ctx *ctx, const char *server_name,
                            struct gl_transport *out, char *err, size_t errlen);

#endif
