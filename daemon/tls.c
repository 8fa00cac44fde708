/* The server's TLS context, from [tls]: what it accepts and what it asks
 * of clients. Connections then use the TLS transport (src/core/tls.c). */
#include "tls.h"

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "core/err.h"
#include "core/log.h"
#include "gl_build_config.h"

#if GL_HAVE_TLS
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

/* [tls] ciphers when unset (conf/geolocd.conf says why). */
#define GL_TLS_DEFAULT_CIPHERS "ECDHE+AESGCM:ECDHE+CHACHA20"

static void gl__ssl_err(char *buf, size_t len, const char *what) {
  unsigned long e = ERR_get_error();
  char reason[200] = "unknown reason";
  if (e)
    ERR_error_string_n(e, reason, sizeof reason);
  snprintf(buf, len, "%s: %s", what, reason);
  ERR_clear_error();
}

/* A private key others can read (or anyone but its owner can write) is a
 * key others may hold: said in the log, not refused, since a packaging
 * step may still be fixing modes. */
static void gl__check_key_mode(const char *path) {
  struct stat st;
  if (stat(path, &st) == 0 && (st.st_mode & (S_IROTH | S_IWOTH | S_IWGRP)))
    GL_LOG_W("[tls] key %s has mode %04o: other users can %s it; make it 0600 or 0640", path,
             (unsigned)(st.st_mode & 07777), (st.st_mode & S_IROTH) ? "read" : "write");
}

int gl_tls_ctx_create(const struct gl_config *cfg, struct gl_tls_ctx **out, char *err,
                      size_t errlen) {
  SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
  *out = NULL;
  if (!ctx) {
    gl__ssl_err(err, errlen, "TLS context");
    return GL_ETLS;
  }
  if (!SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION)) {
    gl__ssl_err(err, errlen, "TLS minimum version");
    goto fail;
  }
  /* No renegotiation, no compression, no tickets kept on the server side
   * beyond OpenSSL's defaults. */
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                               SSL_OP_CIPHER_SERVER_PREFERENCE);
  /* TLS 1.2 gets AEAD suites with forward secrecy only unless configured
   * otherwise; TLS 1.3's suites are all AEAD. */
  if (SSL_CTX_set_cipher_list(ctx, cfg->tls_ciphers ? cfg->tls_ciphers : GL_TLS_DEFAULT_CIPHERS) !=
      1) {
    gl__ssl_err(err, errlen, "[tls] ciphers");
    goto fail;
  }
  gl__check_key_mode(cfg->tls_key);
  if (SSL_CTX_use_certificate_chain_file(ctx, cfg->tls_cert) != 1) {
    gl__ssl_err(err, errlen, cfg->tls_cert);
    goto fail;
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, cfg->tls_key, SSL_FILETYPE_PEM) != 1) {
    gl__ssl_err(err, errlen, cfg->tls_key);
    goto fail;
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    gl__ssl_err(err, errlen, "[tls] key does not match [tls] cert");
    goto fail;
  }
  if (cfg->tls_ca) {
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(cfg->tls_ca);
    if (SSL_CTX_load_verify_locations(ctx, cfg->tls_ca, NULL) != 1 || !names) {
      sk_X509_NAME_pop_free(names, X509_NAME_free);
      gl__ssl_err(err, errlen, cfg->tls_ca);
      goto fail;
    }
    SSL_CTX_set_client_CA_list(ctx, names);
  }
  if (cfg->require_client_cert)
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
  else if (cfg->tls_ca)
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
  *out = (struct gl_tls_ctx *)ctx;
  return GL_OK;
fail:
  SSL_CTX_free(ctx);
  return GL_ETLS;
}

#else /* built without TLS: a TLS listener is a startup error */

int gl_tls_ctx_create(const struct gl_config *cfg, struct gl_tls_ctx **out, char *err,
                      size_t errlen) {
  (void)cfg;
  *out = NULL;
  snprintf(err, errlen, "[listen] tls: geolocd was built without TLS (-Dtls=disabled)");
  return GL_ENOTSUP;
}
#endif
