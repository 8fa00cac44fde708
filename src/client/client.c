#include "client/client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "core/err.h"
#include "gl_build_config.h"

#if GL_HAVE_TLS
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#endif

struct gl_client {
  int fd;
  int timeout_ms;
#if GL_HAVE_TLS
  SSL_CTX *ctx;
  SSL *ssl;
#endif
  struct gl_wire_decoder dec;
  uint8_t buf[16384]; /* received bytes not yet given to the decoder */
  size_t buf_pos, buf_len;
  char err[256];
};

static void gl__cerr(struct gl_client *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void gl__cerr(struct gl_client *c, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(c->err, sizeof c->err, fmt, ap);
  va_end(ap);
}

static int64_t gl__now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits for events on the socket until deadline (-1: none). */
static int gl__wait(struct gl_client *c, short events, int64_t deadline) {
  for (;;) {
    int t = -1;
    if (deadline >= 0) {
      int64_t left = deadline - gl__now_ms();
      t = left > 0 ? (int)left : 0;
    }
    struct pollfd p = {.fd = c->fd, .events = events};
    int r = poll(&p, 1, t);
    if (r > 0)
      return GL_OK;
    if (r == 0)
      return GL_ETIMEDOUT;
    if (errno != EINTR) {
      gl__cerr(c, "poll: %s", strerror(errno));
      return GL_EIO;
    }
  }
}

/* After a send or recv failed: waits when the socket would block (or the
 * call was interrupted), else maps errno to an error. */
static int gl__io_retry(struct gl_client *c, const char *what, short ev, int64_t deadline) {
  int e = errno;
  if (e == EAGAIN || e == EINTR)
    return gl__wait(c, ev, deadline);
  gl__cerr(c, "%s: %s", what, strerror(e));
  return e == EPIPE || e == ECONNRESET ? GL_ECLOSED : GL_EIO;
}

static int64_t gl__deadline(int timeout_ms) {
  return timeout_ms < 0 ? -1 : gl__now_ms() + timeout_ms;
}

#if GL_HAVE_TLS
static void gl__tls_err(struct gl_client *c, const char *what) {
  unsigned long e = ERR_get_error();
  char buf[200];
  if (e) {
    ERR_error_string_n(e, buf, sizeof buf);
    gl__cerr(c, "%s: %s", what, buf);
  } else {
    gl__cerr(c, "%s: %s", what, errno ? strerror(errno) : "connection closed");
  }
  ERR_clear_error();
}

/* Maps an SSL_* result to waiting (0 with *ev set) or an error. */
static int gl__tls_result(struct gl_client *c, int r, const char *what, short *ev) {
  int e = SSL_get_error(c->ssl, r);
  switch (e) {
  case SSL_ERROR_WANT_READ:
    *ev = POLLIN;
    return GL_OK;
  case SSL_ERROR_WANT_WRITE:
    *ev = POLLOUT;
    return GL_OK;
  case SSL_ERROR_ZERO_RETURN:
    gl__cerr(c, "%s: server closed the connection", what);
    return GL_ECLOSED;
  default:
    gl__tls_err(c, what);
    return GL_ETLS;
  }
}
#endif

static int gl__connect_socket(struct gl_client *c, const char *address, int64_t deadline,
                              char *host, size_t hostlen) {
  if (strncmp(address, "unix:", 5) == 0) {
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    if (strlen(address + 5) >= sizeof sun.sun_path) {
      gl__cerr(c, "%s: unix socket path too long", address);
      return GL_EADDR;
    }
    strcpy(sun.sun_path, address + 5);
    snprintf(host, hostlen, "localhost");
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&sun, sizeof sun) != 0) {
      gl__cerr(c, "%s: %s", address, strerror(errno));
      return GL_ECONNECT;
    }
    return fcntl(c->fd, F_SETFL, O_NONBLOCK) == 0 ? GL_OK : GL_EIO;
  }
  const char *colon;
  if (address[0] == '[') {
    const char *end = strchr(address, ']');
    if (!end || end[1] != ':' || (size_t)(end - address) > hostlen) {
      gl__cerr(c, "%s: expected [IPv6]:port", address);
      return GL_EADDR;
    }
    snprintf(host, hostlen, "%.*s", (int)(end - address - 1), address + 1);
    colon = end + 1;
  } else {
    colon = strrchr(address, ':');
    if (!colon || (size_t)(colon - address) >= hostlen) {
      gl__cerr(c, "%s: expected HOST:PORT or unix:PATH", address);
      return GL_EADDR;
    }
    snprintf(host, hostlen, "%.*s", (int)(colon - address), address);
  }
  struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
  int g = getaddrinfo(host, colon + 1, &hints, &res);
  if (g != 0) {
    gl__cerr(c, "%s: %s", address, gai_strerror(g));
    return GL_EADDR;
  }
  int rc = GL_ECONNECT;
  for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
    c->fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
      continue;
    if (connect(c->fd, ai->ai_addr, ai->ai_addrlen) == 0) {
      rc = GL_OK;
      break;
    }
    if (errno == EINPROGRESS) {
      int soerr = 0;
      socklen_t sl = sizeof soerr;
      rc = gl__wait(c, POLLOUT, deadline);
      if (rc == GL_OK && getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr == 0)
        break;
      errno = soerr;
      if (rc == GL_OK)
        rc = GL_ECONNECT;
    }
    gl__cerr(c, "%s: %s", address, rc == GL_ETIMEDOUT ? "connect timed out" : strerror(errno));
    close(c->fd);
    c->fd = -1;
  }
  freeaddrinfo(res);
  return rc;
}

#if GL_HAVE_TLS
static int gl__tls_setup(struct gl_client *c, const struct gl_client_opts *o, const char *host,
                         int64_t deadline) {
  if (!o->tls_ca) {
    gl__cerr(c, "TLS needs a CA file to verify the server");
    return GL_EINVAL;
  }
  if (!o->tls_cert != !o->tls_key) {
    gl__cerr(c, "TLS client certificate and key go together");
    return GL_EINVAL;
  }
  c->ctx = SSL_CTX_new(TLS_client_method());
  if (!c->ctx || !SSL_CTX_set_min_proto_version(c->ctx, TLS1_2_VERSION)) {
    gl__tls_err(c, "TLS context");
    return GL_ETLS;
  }
  SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
  if (SSL_CTX_load_verify_locations(c->ctx, o->tls_ca, NULL) != 1) {
    gl__tls_err(c, o->tls_ca);
    return GL_ETLS;
  }
  if (o->tls_cert && (SSL_CTX_use_certificate_chain_file(c->ctx, o->tls_cert) != 1 ||
                      SSL_CTX_use_PrivateKey_file(c->ctx, o->tls_key, SSL_FILETYPE_PEM) != 1 ||
                      SSL_CTX_check_private_key(c->ctx) != 1)) {
    gl__tls_err(c, o->tls_cert);
    return GL_ETLS;
  }
  c->ssl = SSL_new(c->ctx);
  if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1) {
    gl__tls_err(c, "TLS session");
    return GL_ETLS;
  }
  const char *name = o->server_name ? o->server_name : host;
  struct in6_addr a;
  bool is_ip = inet_pton(AF_INET, name, &a) == 1 || inet_pton(AF_INET6, name, &a) == 1;
  X509_VERIFY_PARAM *vp = SSL_get0_param(c->ssl);
  if (is_ip ? X509_VERIFY_PARAM_set1_ip_asc(vp, name) != 1
            : (SSL_set_tlsext_host_name(c->ssl, name) != 1 || SSL_set1_host(c->ssl, name) != 1)) {
    gl__tls_err(c, "TLS server name");
    return GL_ETLS;
  }
  for (;;) {
    int r = SSL_connect(c->ssl);
    if (r == 1)
      return GL_OK;
    short ev;
    int rc = gl__tls_result(c, r, "TLS handshake", &ev);
    if (rc == GL_OK)
      rc = gl__wait(c, ev, deadline);
    if (rc == GL_ECLOSED)
      rc = GL_ETLS; /* a close during the handshake is a refusal */
    if (rc != GL_OK) {
      if (rc == GL_ETIMEDOUT)
        gl__cerr(c, "TLS handshake timed out");
      return rc;
    }
  }
}
#endif

int gl_client_connect(const struct gl_client_opts *o, struct gl_client **out, char *err,
                      size_t errlen) {
  struct gl_client *c = calloc(1, sizeof *c);
  char host[256];
  int rc;
  *out = NULL;
  if (!c)
    return GL_ENOMEM;
  c->fd = -1;
  c->timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : 10000;
  gl_wire_decoder_init(&c->dec, o->max_message_bytes ? o->max_message_bytes : 64u << 20);
  int64_t deadline = gl__deadline(c->timeout_ms);
  rc = gl__connect_socket(c, o->address ? o->address : "", deadline, host, sizeof host);
  if (rc != GL_OK)
    goto fail;
  if (o->tls) {
#if GL_HAVE_TLS
    rc = gl__tls_setup(c, o, host, deadline);
    if (rc != GL_OK)
      goto fail;
#else
    gl__cerr(c, "built without TLS support");
    rc = GL_ENOTSUP;
    goto fail;
#endif
  }
  *out = c;
  return GL_OK;
fail:
  snprintf(err, errlen, "%s", c->err[0] ? c->err : gl_strerror(rc));
  gl_client_destroy(c);
  return rc;
}

void gl_client_destroy(struct gl_client *c) {
  if (!c)
    return;
#if GL_HAVE_TLS
  SSL_free(c->ssl);
  SSL_CTX_free(c->ctx);
#endif
  if (c->fd >= 0)
    close(c->fd);
  gl_wire_decoder_fini(&c->dec);
  free(c);
}

int gl_client_send_raw(struct gl_client *c, const void *data, size_t len) {
  const uint8_t *p = data;
  int64_t deadline = gl__deadline(c->timeout_ms);
  while (len > 0) {
    short ev = POLLOUT;
    ssize_t n;
#if GL_HAVE_TLS
    if (c->ssl) {
      size_t w = 0;
      int r = SSL_write_ex(c->ssl, p, len, &w);
      if (r == 1) {
        p += w;
        len -= w;
        continue;
      }
      int rc = gl__tls_result(c, r, "TLS write", &ev);
      if (rc != GL_OK)
        return rc;
      n = -1;
      errno = EAGAIN;
    } else
#endif
      n = send(c->fd, p, len, MSG_NOSIGNAL);
    if (n >= 0) {
      p += n;
      len -= (size_t)n;
      continue;
    }
    int rc = gl__io_retry(c, "send", ev, deadline);
    if (rc != GL_OK)
      return rc;
  }
  return GL_OK;
}

int gl_client_send(struct gl_client *c, const gl_client_msg *msg) {
  uint8_t *buf;
  size_t len;
  int rc = gl_wire_encode_alloc(&msg->base, UINT32_MAX, &buf, &len);
  if (rc != GL_OK)
    return rc;
  rc = gl_client_send_raw(c, buf, len);
  free(buf);
  return rc;
}

/* Reads more bytes into c->buf (which must be empty). */
static int gl__fill(struct gl_client *c, int64_t deadline) {
  c->buf_pos = c->buf_len = 0;
  for (;;) {
    short ev = POLLIN;
    ssize_t n;
#if GL_HAVE_TLS
    if (c->ssl) {
      size_t r = 0;
      int ok = SSL_read_ex(c->ssl, c->buf, sizeof c->buf, &r);
      if (ok == 1) {
        c->buf_len = r;
        return GL_OK;
      }
      int rc = gl__tls_result(c, ok, "TLS read", &ev);
      if (rc != GL_OK)
        return rc;
      n = -1;
      errno = EAGAIN;
    } else
#endif
      n = recv(c->fd, c->buf, sizeof c->buf, 0);
    if (n > 0) {
      c->buf_len = (size_t)n;
      return GL_OK;
    }
    if (n == 0) {
      gl__cerr(c, "server closed the connection");
      return GL_ECLOSED;
    }
    int rc = gl__io_retry(c, "recv", ev, deadline);
    if (rc != GL_OK)
      return rc;
  }
}

int gl_client_recv(struct gl_client *c, int timeout_ms, gl_server_msg **out) {
  int64_t deadline = gl__deadline(timeout_ms);
  *out = NULL;
  for (;;) {
    if (c->buf_pos == c->buf_len) {
      int rc = gl__fill(c, deadline);
      if (rc != GL_OK)
        return rc;
    }
    size_t used;
    const uint8_t *body;
    size_t body_len;
    int r = gl_wire_decoder_feed(&c->dec, c->buf + c->buf_pos, c->buf_len - c->buf_pos, &used,
                                 &body, &body_len);
    c->buf_pos += used;
    if (r < 0) {
      gl__cerr(c, "server message: %s", gl_strerror(r));
      return r;
    }
    if (r == 1)
      return gl_wire_unpack_server(body, body_len, out);
  }
}

static int gl__hello(struct gl_client *c, const char *client_name, const char *map,
                     uint32_t version, const Geoloc__V1__StreamOptions *opts, int timeout_ms,
                     gl_server_msg **reply) {
  Geoloc__V1__Hello hello = GEOLOC__V1__HELLO__INIT;
  gl_client_msg m = GEOLOC__V1__CLIENT_MESSAGE__INIT;
  hello.has_protocol_version = 1;
  hello.protocol_version = version ? version : GL_PROTOCOL_VERSION;
  hello.client_name = (char *)(client_name ? client_name : "geoloc");
  hello.map = (char *)map;
  hello.options = (Geoloc__V1__StreamOptions *)opts;
  m.msg_case = GEOLOC__V1__CLIENT_MESSAGE__MSG_HELLO;
  m.hello = &hello;
  *reply = NULL;
  int rc = gl_client_send(c, &m);
  if (rc != GL_OK)
    return rc;
  return gl_client_recv(c, timeout_ms, reply);
}

int gl_client_hello(struct gl_client *c, const char *client_name, const char *map,
                    uint32_t version, int timeout_ms, gl_server_msg **reply) {
  return gl__hello(c, client_name, map, version, NULL, timeout_ms, reply);
}

int gl_client_hello_opts(struct gl_client *c, const char *client_name, const char *map,
                         const Geoloc__V1__StreamOptions *opts, int timeout_ms,
                         gl_server_msg **reply) {
  return gl__hello(c, client_name, map, 0, opts, timeout_ms, reply);
}

const char *gl_client_last_error(const struct gl_client *c) { return c->err; }

int gl_client_fd(const struct gl_client *c) { return c->fd; }
