/* Transports (src/core/transport.h): the pass-through hands bytes on without
 * copying them in and asks nothing of a handshake; two TLS transports, a
 * client's and a server's, talk to each other through nothing but the
 * interface (feed what the other has as output), as geolocd and the client
 * do over a socket. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/err.h"
#include "core/transport.h"
#include "gl_build_config.h"
#include "test.h"

#if GL_HAVE_TLS
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#endif

static void test_plain(void) {
  struct gl_transport_plain p;
  struct gl_transport t;
  gl_transport_plain_init(&p, &t);
  const uint8_t in[] = "hello";
  const uint8_t *out = NULL;
  uint8_t buf[4];

  CHECK(gl_transport_ready(&t));
  CHECK_EQ_INT(gl_transport_handshake(&t), 1);
  CHECK_EQ_INT(gl_transport_read(&t, buf, sizeof buf, &out), 0);
  CHECK_EQ_INT(gl_transport_feed(&t, in, 5), GL_OK);
  /* Unread bytes are not copied anywhere: a second feed would lose them. */
  CHECK_EQ_INT(gl_transport_feed(&t, in, 5), GL_EINVAL);
  CHECK_EQ_INT(gl_transport_read(&t, buf, sizeof buf, &out), 4);
  CHECK(out == in); /* the bytes fed, not a copy */
  CHECK_EQ_INT(gl_transport_read(&t, buf, sizeof buf, &out), 1);
  CHECK(out == in + 4);
  CHECK_EQ_INT(gl_transport_read(&t, buf, sizeof buf, &out), 0);

  CHECK_EQ_U64(gl_transport_pending_output(&t), 0);
  CHECK_EQ_INT(gl_transport_write(&t, in, 5), GL_OK);
  CHECK_EQ_U64(gl_transport_pending_output(&t), 5);
  CHECK_EQ_U64(gl_transport_take_output(&t, buf, 3), 3);
  CHECK_EQ_MEM(buf, "hel", 3);
  CHECK_EQ_U64(gl_transport_pending_output(&t), 2);
  CHECK_EQ_U64(gl_transport_take_output(&t, buf, sizeof buf), 2);
  CHECK_EQ_MEM(buf, "lo", 2);
  CHECK_EQ_U64(gl_transport_pending_output(&t), 0);

  gl_transport_shutdown(&t); /* nothing to say */
  CHECK_EQ_U64(gl_transport_pending_output(&t), 0);
  char peer[8] = "x";
  gl_transport_peer(&t, peer, sizeof peer);
  CHECK_EQ_STR(peer, "");
  gl_transport_end_of_input(&t);
  CHECK_EQ_INT(gl_transport_read(&t, buf, sizeof buf, &out), GL_ECLOSED);
  gl_transport_destroy(&t);
  CHECK(t.i == NULL);
  gl_transport_destroy(&t); /* a cleared transport is accepted */
}

#if GL_HAVE_TLS
/* A self-signed certificate for localhost, written to a temporary file
 * (the client's CA) and loaded into a server context. */
struct pki {
  char ca_path[64];
  SSL_CTX *server;
};

static bool pki_make(struct pki *k) {
  EVP_PKEY *key = EVP_EC_gen("P-256");
  X509 *x = X509_new();
  bool ok = false;
  memset(k, 0, sizeof *k);
  if (!key || !x)
    goto done;
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
  X509_gmtime_adj(X509_getm_notBefore(x), -60);
  X509_gmtime_adj(X509_getm_notAfter(x), 3600);
  X509_NAME *name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"localhost", -1, -1,
                             0);
  X509_set_issuer_name(x, name);
  X509_set_pubkey(x, key);
  X509V3_CTX v3;
  X509V3_set_ctx_nodb(&v3);
  X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
  X509_EXTENSION *san = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, "DNS:localhost");
  if (!san || !X509_add_ext(x, san, -1)) {
    X509_EXTENSION_free(san);
    goto done;
  }
  X509_EXTENSION_free(san);
  if (!X509_sign(x, key, EVP_sha256()))
    goto done;
  snprintf(k->ca_path, sizeof k->ca_path, "/tmp/gl-test-transport-XXXXXX");
  int fd = mkstemp(k->ca_path);
  FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
  if (!f || !PEM_write_X509(f, x)) {
    if (f)
      fclose(f);
    goto done;
  }
  fclose(f);
  k->server = SSL_CTX_new(TLS_server_method());
  ok = k->server && SSL_CTX_use_certificate(k->server, x) == 1 &&
       SSL_CTX_use_PrivateKey(k->server, key) == 1;
done:
  X509_free(x);
  EVP_PKEY_free(key);
  return ok;
}

static void pki_free(struct pki *k) {
  if (k->ca_path[0])
    unlink(k->ca_path);
  SSL_CTX_free(k->server);
}

/* Hands what from has to send to to, as a socket would. */
static void pass(struct gl_transport *from, struct gl_transport *to) {
  uint8_t buf[4096];
  while (gl_transport_pending_output(from) > 0) {
    size_t n = gl_transport_take_output(from, buf, sizeof buf);
    CHECK_EQ_INT(gl_transport_feed(to, buf, n), GL_OK);
  }
}

/* Runs both handshakes to their end; the first failure's code otherwise. */
static int handshake(struct gl_transport *cli, struct gl_transport *srv) {
  for (int round = 0; round < 16; round++) {
    int rc = gl_transport_ready(cli) ? 1 : gl_transport_handshake(cli);
    pass(cli, srv);
    int rs = gl_transport_ready(srv) ? 1 : gl_transport_handshake(srv);
    pass(srv, cli);
    if (rc < 0 || rs < 0)
      return rc < 0 ? rc : rs;
    if (rc == 1 && rs == 1)
      return 1;
  }
  return 0;
}

/* A client's and a server's transport over k, the client expecting name. */
static bool pair(const struct pki *k, const char *name, struct gl_transport *cli,
                 struct gl_transport *srv) {
  struct gl_tls_ctx *cctx = NULL;
  char err[256] = "";
  memset(cli, 0, sizeof *cli);
  memset(srv, 0, sizeof *srv);
  if (!CHECK_EQ_INT(gl_tls_client_ctx_create(k->ca_path, NULL, NULL, &cctx, err, sizeof err),
                    GL_OK))
    return false;
  int rc = gl_transport_tls_create(cctx, name, cli, err, sizeof err);
  gl_tls_ctx_release(cctx); /* the transport holds its own reference */
  return CHECK_EQ_INT(rc, GL_OK) &&
         CHECK_EQ_INT(
             gl_transport_tls_create((struct gl_tls_ctx *)k->server, NULL, srv, err, sizeof err),
             GL_OK);
}

/* Reads what is there into buf; the read's result when nothing is. */
static int read_all(struct gl_transport *t, uint8_t *buf, size_t cap, size_t *len) {
  const uint8_t *p;
  int n;
  *len = 0;
  while ((n = gl_transport_read(t, buf + *len, cap - *len, &p)) > 0) {
    CHECK(p == buf + *len); /* TLS decrypts into the caller's buffer */
    *len += (size_t)n;
  }
  return *len ? (int)*len : n;
}

static void test_tls_round_trip(void) {
  struct pki k;
  struct gl_transport cli = {0}, srv = {0};
  uint8_t buf[256];
  size_t len;
  if (!CHECK(pki_make(&k)))
    goto done;
  if (!pair(&k, "localhost", &cli, &srv))
    goto done;
  CHECK_EQ_STR(cli.i->name, "TLS");
  CHECK(!gl_transport_ready(&cli) && !gl_transport_ready(&srv));
  if (!CHECK_EQ_INT(handshake(&cli, &srv), 1))
    goto done;
  CHECK(gl_transport_ready(&cli) && gl_transport_ready(&srv));
  char peer[128] = "x";
  gl_transport_peer(&srv, peer, sizeof peer);
  CHECK_EQ_STR(peer, ""); /* the client showed no certificate */

  CHECK_EQ_INT(gl_transport_write(&cli, (const uint8_t *)"ping", 4), GL_OK);
  pass(&cli, &srv);
  CHECK_EQ_INT(read_all(&srv, buf, sizeof buf, &len), 4);
  CHECK_EQ_MEM(buf, "ping", 4);
  CHECK_EQ_INT(gl_transport_write(&srv, (const uint8_t *)"pong!", 5), GL_OK);
  pass(&srv, &cli);
  CHECK_EQ_INT(read_all(&cli, buf, sizeof buf, &len), 5);
  CHECK_EQ_MEM(buf, "pong!", 5);

  /* close_notify is the orderly end, even when the socket then closes. */
  gl_transport_shutdown(&cli);
  pass(&cli, &srv);
  gl_transport_end_of_input(&srv);
  CHECK_EQ_INT(read_all(&srv, buf, sizeof buf, &len), GL_ECLOSED);
done:
  gl_transport_destroy(&cli);
  gl_transport_destroy(&srv);
  pki_free(&k);
}

static void test_tls_truncated(void) {
  struct pki k;
  struct gl_transport cli = {0}, srv = {0};
  uint8_t buf[64];
  size_t len;
  if (!CHECK(pki_make(&k)) || !pair(&k, "localhost", &cli, &srv) ||
      !CHECK_EQ_INT(handshake(&cli, &srv), 1))
    goto done;
  /* The socket's end without close_notify: a cut, not an end. */
  CHECK_EQ_INT(read_all(&cli, buf, sizeof buf, &len), 0);
  gl_transport_end_of_input(&cli);
  CHECK_EQ_INT(read_all(&cli, buf, sizeof buf, &len), GL_ETLS);
  CHECK_CONTAINS(gl_transport_error(&cli), "TLS read");
done:
  gl_transport_destroy(&cli);
  gl_transport_destroy(&srv);
  pki_free(&k);
}

static void test_tls_wrong_name(void) {
  struct pki k;
  struct gl_transport cli = {0}, srv = {0};
  if (!CHECK(pki_make(&k)) || !pair(&k, "other.example", &cli, &srv))
    goto done;
  CHECK_EQ_INT(handshake(&cli, &srv), GL_ETLS);
  CHECK_CONTAINS(gl_transport_error(&cli), "TLS handshake");
  CHECK_CONTAINS(gl_transport_error(&cli), "certificate");
done:
  gl_transport_destroy(&cli);
  gl_transport_destroy(&srv);
  pki_free(&k);
}

static void test_tls_client_options(void) {
  struct gl_tls_ctx *ctx = NULL;
  char err[256] = "";
  CHECK_EQ_INT(gl_tls_client_ctx_create(NULL, NULL, NULL, &ctx, err, sizeof err), GL_EINVAL);
  CHECK_CONTAINS(err, "CA file");
  CHECK_EQ_INT(
      gl_tls_client_ctx_create("/nonexistent/ca.crt", "c.crt", NULL, &ctx, err, sizeof err),
      GL_EINVAL);
  CHECK_CONTAINS(err, "go together");
  CHECK_EQ_INT(gl_tls_client_ctx_create("/nonexistent/ca.crt", NULL, NULL, &ctx, err, sizeof err),
               GL_ETLS);
  CHECK_CONTAINS(err, "/nonexistent/ca.crt");
  CHECK(ctx == NULL);
}
#endif

int main(void) {
  RUN(test_plain);
#if GL_HAVE_TLS
  RUN(test_tls_round_trip);
  RUN(test_tls_truncated);
  RUN(test_tls_wrong_name);
  RUN(test_tls_client_options);
#endif
  return TEST_END();
}
