/* TLS for geolocd connections, through OpenSSL memory BIOs: libuv owns the
 * socket, OpenSSL only transforms bytes. */
#ifndef GL_DAEMON_TLS_H
#define GL_DAEMON_TLS_H

#include <stddef.h>
#include <stdint.h>

#include "core/config.h"

struct gl_tls_ctx;  /* certificates, key and CA: shared by connections */
struct gl_tls_conn; /* one connection's TLS state */

/* Builds a server context from cfg's [tls] keys (TLS >= 1.2, client
 * certificates required unless cfg says otherwise). Writes the reason to err
 * and returns GL_ETLS when a file is missing or invalid. */
int gl_tls_ctx_create(const struct gl_config *cfg, struct gl_tls_ctx **out, char *err,
                      size_t errlen);
/* Drops the caller's reference; connections keep theirs. */
void gl_tls_ctx_release(struct gl_tls_ctx *ctx);

int gl_tls_conn_create(struct gl_tls_ctx *ctx, struct gl_tls_conn **out);
void gl_tls_conn_destroy(struct gl_tls_conn *t);

/* Gives received ciphertext to TLS. Returns 0 or GL_ETLS. */
int gl_tls_conn_feed(struct gl_tls_conn *t, const uint8_t *data, size_t len);

/* Advances the handshake. Returns 1 when complete, 0 when it needs more
 * bytes, GL_ETLS on failure (the reason is in gl_tls_conn_error). */
int gl_tls_conn_handshake(struct gl_tls_conn *t);

/* Reads decrypted bytes. Returns the count, 0 when none are buffered,
 * GL_ECLOSED on the peer's close_notify, GL_ETLS on error. */
int gl_tls_conn_read(struct gl_tls_conn *t, uint8_t *buf, size_t cap);

/* Encrypts len bytes of plaintext. Returns 0 or GL_ETLS. */
int gl_tls_conn_write(struct gl_tls_conn *t, const uint8_t *data, size_t len);

/* Queues a close_notify alert. */
void gl_tls_conn_shutdown(struct gl_tls_conn *t);

/* Ciphertext waiting to be sent: returns its size, or 0. Take it with
 * gl_tls_conn_take_output into a buffer of at least that size. */
size_t gl_tls_conn_pending_output(struct gl_tls_conn *t);
size_t gl_tls_conn_take_output(struct gl_tls_conn *t, uint8_t *buf, size_t cap);

/* Why the last call failed, for the log. */
const char *gl_tls_conn_error(const struct gl_tls_conn *t);

/* The client certificate's subject ("" when none). */
void gl_tls_conn_peer(const struct gl_tls_conn *t, char *buf, size_t len);

#endif
