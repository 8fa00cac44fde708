#include "tls.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "gl_build_config.h"

#if GL_HAVE_TLS
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

/* A gl_tls_ctx is an SSL_CTX: OpenSSL already counts its references, and
 * every SSL made from it holds one, so a reload can drop the old context
 * while connections made from it live on. */
#define GL__CTX(c) ((SSL_CTX *)(c))

struct gl_tls_conn {
  SSL *ssl;
  BIO *rbio; /* ciphertext in, owned by ssl */
  BIO *wbio; /* ciphertext out, owned by ssl */
  char err[256];
};

static void gl__ssl_err(char *buf, size_t len, const char *what) {
  unsigned long e = ERR_get_error();
  char reason[200] = "unknown reason";
  if (e)
    ERR_error_string_n(e, reason, sizeof reason);
  snprintf(buf, len, "%s: %s", what, reason);
  ERR_clear_error();
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

void gl_tls_ctx_release(struct gl_tls_ctx *ctx) { SSL_CTX_free(GL__CTX(ctx)); }

int gl_tls_conn_create(struct gl_tls_ctx *ctx, struct gl_tls_conn **out) {
  struct gl_tls_conn *t = calloc(1, sizeof *t);
  *out = NULL;
  if (!t)
    return GL_ENOMEM;
  t->ssl = SSL_new(GL__CTX(ctx));
  t->rbio = BIO_new(BIO_s_mem());
  t->wbio = BIO_new(BIO_s_mem());
  if (!t->ssl || !t->rbio || !t->wbio) {
    BIO_free(t->rbio);
    BIO_free(t->wbio);
    SSL_free(t->ssl);
    free(t);
    ERR_clear_error();
    return GL_ENOMEM;
  }
  /* An empty memory BIO means "no data yet", not end of file. */
  BIO_set_mem_eof_return(t->rbio, -1);
  SSL_set_bio(t->ssl, t->rbio, t->wbio);
  SSL_set_accept_state(t->ssl);
  *out = t;
  return GL_OK;
}

void gl_tls_conn_destroy(struct gl_tls_conn *t) {
  if (!t)
    return;
  SSL_free(t->ssl);
  free(t);
}

int gl_tls_conn_feed(struct gl_tls_conn *t, const uint8_t *data, size_t len) {
  size_t w = 0;
  if (len && BIO_write_ex(t->rbio, data, len, &w) != 1) {
    gl__ssl_err(t->err, sizeof t->err, "TLS input");
    return GL_ETLS;
  }
  return GL_OK;
}

static int gl__tls_status(struct gl_tls_conn *t, int r, const char *what) {
  switch (SSL_get_error(t->ssl, r)) {
  case SSL_ERROR_WANT_READ:
  case SSL_ERROR_WANT_WRITE:
    return 0;
  case SSL_ERROR_ZERO_RETURN:
    snprintf(t->err, sizeof t->err, "%s: peer closed TLS", what);
    return GL_ECLOSED;
  default: {
    long v = SSL_get_verify_result(t->ssl);
    gl__ssl_err(t->err, sizeof t->err, what);
    if (v != X509_V_OK) {
      size_t n = strlen(t->err);
      snprintf(t->err + n, sizeof t->err - n, " (certificate: %s)",
               X509_verify_cert_error_string(v));
    }
    return GL_ETLS;
  }
  }
}

int gl_tls_conn_handshake(struct gl_tls_conn *t) {
  int r = SSL_do_handshake(t->ssl);
  if (r == 1)
    return 1;
  int rc = gl__tls_status(t, r, "TLS handshake");
  return rc == GL_ECLOSED ? GL_ETLS : rc;
}

int gl_tls_conn_read(struct gl_tls_conn *t, uint8_t *buf, size_t cap) {
  size_t n = 0;
  int r = SSL_read_ex(t->ssl, buf, cap, &n);
  if (r == 1)
    return (int)n;
  return gl__tls_status(t, r, "TLS read");
}

int gl_tls_conn_write(struct gl_tls_conn *t, const uint8_t *data, size_t len) {
  size_t n = 0;
  /* Memory BIOs grow, so a write never waits: it completes or fails. */
  if (SSL_write_ex(t->ssl, data, len, &n) != 1 || n != len) {
    gl__ssl_err(t->err, sizeof t->err, "TLS write");
    return GL_ETLS;
  }
  return GL_OK;
}

void gl_tls_conn_shutdown(struct gl_tls_conn *t) {
  if (SSL_is_init_finished(t->ssl))
    SSL_shutdown(t->ssl);
  ERR_clear_error();
}

size_t gl_tls_conn_pending_output(struct gl_tls_conn *t) { return BIO_ctrl_pending(t->wbio); }

size_t gl_tls_conn_take_output(struct gl_tls_conn *t, uint8_t *buf, size_t cap) {
  size_t n = 0;
  if (BIO_read_ex(t->wbio, buf, cap, &n) != 1)
    return 0;
  return n;
}

const char *gl_tls_conn_error(const struct gl_tls_conn *t) { return t->err; }

void gl_tls_conn_peer(const struct gl_tls_conn *t, char *buf, size_t len) {
  X509 *x = SSL_get1_peer_certificate(t->ssl);
  buf[0] = '\0';
  if (x) {
    X509_NAME_oneline(X509_get_subject_name(x), buf, (int)len);
    X509_free(x);
  }
}

#else /* built without TLS: a TLS listener is a startup error */

int gl_tls_ctx_create(const struct gl_config *cfg, struct gl_tls_ctx **out, char *err,
                      size_t errlen) {
  (void)cfg;
  *out = NULL;
  snprintf(err, errlen, "[listen] tls: geolocd was built without TLS (-Dtls=disabled)");
  return GL_ENOTSUP;
}
void gl_tls_ctx_release(struct gl_tls_ctx *ctx) { (void)ctx; }
int gl_tls_conn_create(struct gl_tls_ctx *ctx, struct gl_tls_conn **out) {
  (void)ctx;
  *out = NULL;
  return GL_ENOTSUP;
}
void gl_tls_conn_destroy(struct gl_tls_conn *t) { (void)t; }
int gl_tls_conn_feed(struct gl_tls_conn *t, const uint8_t *d, size_t n) { return GL_ENOTSUP; }
int gl_tls_conn_handshake(struct gl_tls_conn *t) { return GL_ENOTSUP; }
int gl_tls_conn_read(struct gl_tls_conn *t, uint8_t *b, size_t c) { return GL_ENOTSUP; }
int gl_tls_conn_write(struct gl_tls_conn *t, const uint8_t *d, size_t n) { return GL_ENOTSUP; }
void gl_tls_conn_shutdown(struct gl_tls_conn *t) { (void)t; }
size_t gl_tls_conn_pending_output(struct gl_tls_conn *t) { return 0; }
size_t gl_tls_conn_take_output(struct gl_tls_conn *t, uint8_t *b, size_t c) { return 0; }
const char *gl_tls_conn_error(const struct gl_tls_conn *t) { return "built without TLS"; }
void gl_tls_conn_peer(const struct gl_tls_conn *t, char *buf, size_t len) { buf[0] = '\0'; }
#endif
