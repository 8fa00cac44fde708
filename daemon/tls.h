/* geolocd's TLS context, built from [tls]. Connections use it through the
 * TLS transport (src/core/transport.h): OpenSSL over memory BIOs, since
 * libuv owns the socket and OpenSSL only transforms bytes. */
#ifndef GL_DAEMON_TLS_H
#define GL_DAEMON_TLS_H

#include <stddef.h>

#include "core/config.h"
#include "core/transport.h"

/* Builds a server context from cfg's [tls] keys (TLS >= 1.2, client
 * certificates required unless cfg says otherwise). Writes the reason to err
 * and returns GL_ETLS when a file is missing or invalid. Release it with
 * gl_tls_ctx_release (core/transport.h); connections keep their reference. */
int gl_tls_ctx_create(const struct gl_config *cfg, struct gl_tls_ctx **out, char *err,
                      size_t errlen);

#endif
