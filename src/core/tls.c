/* The TLS transport: OpenSSL through memory BIOs, so that OpenSSL only
 * transforms bytes and its user owns the socket (libuv in geolocd, a
 * blocking socket in the client). One implementation for both sides; the
 * server's context comes from its configuration (daemon/tls.c), a client's
 * from gl_tls_client_ctx_create below. */
#include "core/transport.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "gl_build_config.h"

#if GL_HAVE_TLS
#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

/* A gl_tls_ctx is an SSL_CTX: OpenSSL already counts its references, and
 * every SSL made from it holds one. */
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

/* The client's wording (its messages predate the shared transport): the
 * system's reason when OpenSSL has none. */
static void gl__ssl_client_err(char *buf, size_t len, const char *what) {
  unsigned long e = ERR_get_error();
  char reason[200];
  if (e) {
    ERR_error_string_n(e, reason, sizeof reason);
    snprintf(buf, len, "%s: %s", what, reason);
  } else {
    snprintf(buf, len, "%s: %s", what, errno ? strerror(errno) : "connection closed");
  }
  ERR_clear_error();
}

void gl_tls_ctx_release(struct gl_tls_ctx *ctx) { SSL_CTX_free(GL__CTX(ctx)); }

int gl_tls_client_ctx_create(const char *ca, const char *cert, const char *key,
                             struct gl_tls_ctx **out, char *err, size_t errlen) {
  SSL_CTX *ctx = NULL;
  int rc = GL_ETLS;
  *out = NULL;
  if (!ca) {
    snprintf(err, errlen, "TLS needs a CA file to verify the server");
    return GL_EINVAL;
  }
  if (!cert != !key) {
    snprintf(err, errlen, "TLS client certificate and key go together");
    return GL_EINVAL;
  }
  ctx = SSL_CTX_new(TLS_client_method());
  if (!ctx || !SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION)) {
    gl__ssl_client_err(err, errlen, "TLS context");
    goto fail;
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
  if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
    gl__ssl_client_err(err, errlen, ca);
    goto fail;
  }
  if (cert && (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
               SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
               SSL_CTX_check_private_key(ctx) != 1)) {
    gl__ssl_client_err(err, errlen, cert);
    goto fail;
  }
  *out = (struct gl_tls_ctx *)ctx;
  return GL_OK;
fail:
  SSL_CTX_free(ctx);
  return rc;
}

/* ---- the transport ------------------------------------------------------- */

static int gl__tls_feed(void *t_, const uint8_t *data, size_t len) {
  struct gl_tls_conn *t = t_;
  size_t w = 0;
  if (len && BIO_write_ex(t->rbio, data, len, &w) != 1) {
    gl__ssl_err(t->err, sizeof t->err, "TLS input");
    return GL_ETLS;
  }
  return GL_OK;
}

static void gl__tls_end_of_input(void *t_) {
  struct gl_tls_conn *t = t_;
  /* From now on an empty BIO is the end of the stream: OpenSSL then tells a
   * close_notify (an orderly end) from a truncation. */
  BIO_set_mem_eof_return(t->rbio, 0);
}

static bool gl__tls_ready(const void *t_) {
  const struct gl_tls_conn *t = t_;
  return SSL_is_init_finished(t->ssl);
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

static int gl__tls_handshake(void *t_) {
  struct gl_tls_conn *t = t_;
  int r = SSL_do_handshake(t->ssl);
  if (r == 1)
    return 1;
  int rc = gl__tls_status(t, r, "TLS handshake");
  return rc == GL_ECLOSED ? GL_ETLS : rc;
}

static int gl__tls_read(void *t_, uint8_t *buf, size_t cap, const uint8_t **out) {
  struct gl_tls_conn *t = t_;
  size_t n = 0;
  int r = SSL_read_ex(t->ssl, buf, cap, &n);
  if (r == 1) {
    *out = buf;
    return (int)n;
  }
  return gl__tls_status(t, r, "TLS read");
}

static int gl__tls_write(void *t_, const uint8_t *data, size_t len) {
  struct gl_tls_conn *t = t_;
  size_t n = 0;
  /* Memory BIOs grow, so a write never waits: it completes or fails. */
  if (SSL_write_ex(t->ssl, data, len, &n) != 1 || n != len) {
    gl__ssl_err(t->err, sizeof t->err, "TLS write");
    return GL_ETLS;
  }
  return GL_OK;
}

static void gl__tls_shutdown(void *t_) {
  struct gl_tls_conn *t = t_;
  if (SSL_is_init_finished(t->ssl))
    SSL_shutdown(t->ssl);
  ERR_clear_error();
}

static size_t gl__tls_pending_output(void *t_) {
  struct gl_tls_conn *t = t_;
  return BIO_ctrl_pending(t->wbio);
}

static size_t gl__tls_take_output(void *t_, uint8_t *buf, size_t cap) {
  struct gl_tls_conn *t = t_;
  size_t n = 0;
  if (BIO_read_ex(t->wbio, buf, cap, &n) != 1)
    return 0;
  return n;
}

static const char *gl__tls_error(const void *t_) {
  const struct gl_tls_conn *t = t_;
  return t->err;
}

static void gl__tls_peer(const void *t_, char *buf, size_t len) {
  const struct gl_tls_conn *t = t_;
  X509 *x = SSL_get1_peer_certificate(t->ssl);
  buf[0] = '\0';
  if (x) {
    X509_NAME_oneline(X509_get_subject_name(x), buf, (int)len);
    X509_free(x);
  }
}

static void gl__tls_destroy(void *t_) {
  struct gl_tls_conn *t = t_;
  if (!t)
    return;
  SSL_free(t->ssl);
  free(t);
}

static const struct gl_transport_i gl__tls_i = {
    .name = "TLS",
    .feed = gl__tls_feed,
    .end_of_input = gl__tls_end_of_input,
    .ready = gl__tls_ready,
    .handshake = gl__tls_handshake,
    .read = gl__tls_read,
    .write = gl__tls_write,
    .pending_output = gl__tls_pending_output,
    .take_output = gl__tls_take_output,
    .shutdown = gl__tls_shutdown,
    .error = gl__tls_error,
    .peer = gl__tls_peer,
    .destroy = gl__tls_destroy,
};

/* The client side: SNI and the name (or address) the server's certificate
 * must carry. */
static int gl__tls_client_name(SSL *ssl, const char *name, char *err, size_t errlen) {
  struct in6_addr a;
  bool is_ip = inet_pton(AF_INET, name, &a) == 1 || inet_pton(AF_INET6, name, &a) == 1;
  X509_VERIFY_PARAM *vp = SSL_get0_param(ssl);
  if (is_ip ? X509_VERIFY_PARAM_set1_ip_asc(vp, name) != 1
            : (SSL_set_tlsext_host_name(ssl, name) != 1 || SSL_set1_host(ssl, name) != 1)) {
    gl__ssl_client_err(err, errlen, "TLS server name");
    return GL_ETLS;
  }
  SSL_set_connect_state(ssl);
  return GL_OK;
}

int gl_transport_tls_create(struct gl_tls_ctx *ctx, const char *server_name,
                            struct gl_transport *out, char *err, size_t errlen) {
  struct gl_tls_conn *t = calloc(1, sizeof *t);
  if (!t)
    return gl_fail(err, errlen, GL_ENOMEM, "out of memory");
  t->ssl = SSL_new(GL__CTX(ctx));
  t->rbio = BIO_new(BIO_s_mem());
  t->wbio = BIO_new(BIO_s_mem());
  if (!t->ssl || !t->rbio || !t->wbio) {
    BIO_free(t->rbio);
    BIO_free(t->wbio);
    SSL_free(t->ssl);
    free(t);
    ERR_clear_error();
    return gl_fail(err, errlen, GL_ENOMEM, "TLS session: out of memory");
  }
  /* An empty memory BIO means "no data yet", not end of file. */
  BIO_set_mem_eof_return(t->rbio, -1);
  SSL_set_bio(t->ssl, t->rbio, t->wbio);
  if (!server_name) {
    SSL_set_accept_state(t->ssl);
  } else if (gl__tls_client_name(t->ssl, server_name, err, errlen) != GL_OK) {
    gl__tls_destroy(t);
    return GL_ETLS;
  }
  out->i = &gl__tls_i;
  out->ctx = t;
  return GL_OK;
}

#else /* built without TLS: a TLS listener, or a client's --tls, is refused */

void gl_tls_ctx_release(struct gl_tls_ctx *ctx) { (void)ctx; }

int gl_tls_client_ctx_create(const char *ca, const char *cert, const char *key,
                             struct gl_tls_ctx **out, char *err, size_t errlen) {
  (void)ca, (void)cert, (void)key;
  *out = NULL;
  return gl_fail(err, errlen, GL_ENOTSUP, "built without TLS support");
}

int gl_transport_tls_create(struct gl_tls_ctx *ctx, const char *server_name,
                            struct gl_transport *out, char *err, size_t errlen) {
  (void)ctx, (void)server_name, (void)out;
  return gl_fail(err, errlen, GL_ENOTSUP, "built without TLS support");
}
#endif
