/* geolocd configuration: an INI file read with libinih into a typed struct.
 *
 * Every key is documented in conf/geolocd.conf. Loading is strict: an
 * unknown section or key, a value that does not parse or is out of range, a
 * missing required key and an unsafe combination (a plaintext listener on a
 * non-loopback address without allow_remote_plaintext) are errors whose text
 * names the file, the line and the key. */
#ifndef GL_CORE_CONFIG_H
#define GL_CORE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct gl_config {
  char *path;

  /* [daemon] */
  int log_level;                 /* log_level: err|warning|notice|info|debug */
  uint32_t max_clients;          /* max_clients */
  uint32_t max_message_bytes;    /* max_message_bytes: largest accepted message */
  uint32_t handshake_timeout_ms; /* handshake_timeout_ms: connect to Hello */
  uint32_t idle_timeout_ms;      /* idle_timeout_ms: between messages, 0 = none */
  uint32_t drain_timeout_ms;     /* drain_timeout_ms: SIGTERM grace period */

  /* [listen] */
  char *tcp;                   /* tcp: plaintext "IP:port" or NULL */
  char *unix_path;             /* unix: plaintext unix socket path or NULL */
  char *tls;                   /* tls: TLS "IP:port" or NULL */
  bool allow_remote_plaintext; /* allow_remote_plaintext */

  /* [tls] */
  char *tls_cert;           /* cert: PEM certificate chain */
  char *tls_key;            /* key: PEM private key */
  char *tls_ca;             /* ca: PEM CA bundle that client certificates must chain to */
  bool require_client_cert; /* require_client_cert */
};

/* Fills cfg with the defaults of every key and no listener. */
void gl_config_defaults(struct gl_config *cfg);

/* Loads and validates path into cfg (which the caller then owns and releases
 * with gl_config_fini). On failure cfg is left empty, a message naming file,
 * line and key is written to err, and GL_ECONFIG (bad content) or GL_ENOENT
 * (unreadable file) is returned. */
int gl_config_load(const char *path, struct gl_config *cfg, char *err, size_t errlen);

void gl_config_fini(struct gl_config *cfg);

#endif
