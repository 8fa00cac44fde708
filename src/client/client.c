#include "client/client.h"

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
#include "core/transport.h"
#include "gl_build_config.h"

/* The client moves bytes between its socket and its transport (plaintext or
 * TLS, core/transport.h): what arrives is fed to the transport, and what
 * the transport has to send is sent, waiting with poll(2) where the socket
 * would block. Nothing here asks which transport it is. */
struct gl_client {
  int fd;
  int timeout_ms;
  struct gl_transport tp;
  struct gl_transport_plain plain; /* tp's state when it is plaintext */
  struct gl_wire_decoder dec;
  /* Protocol bytes read from the transport, not yet given to the decoder:
   * in points into plain_buf, or into net_in for plaintext. */
  const uint8_t *in;
  size_t in_pos, in_len;
  uint8_t plain_buf[16384];
  uint8_t net_in[16384];  /* as received from the socket */
  uint8_t net_out[65536]; /* as sent to the socket */
  char err[256];
  char *token; /* Hello.token, or NULL */
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

/* Plaintext, or TLS checking the server's certificate against the CA and
 * its name (the host of the address unless opts say another). */
static int gl__transport_create(struct gl_client *c, const struct gl_client_opts *o,
                                const char *host) {
  struct gl_tls_ctx *ctx;
  if (!o->tls) {
    gl_transport_plain_init(&c->plain, &c->tp);
    return GL_OK;
  }
  int rc =
      gl_tls_client_ctx_create(o->tls_ca, o->tls_cert, o->tls_key, &ctx, c->err, sizeof c->err);
  if (rc != GL_OK)
    return rc;
  rc = gl_transport_tls_create(ctx, o->server_name ? o->server_name : host, &c->tp, c->err,
                               sizeof c->err);
  gl_tls_ctx_release(ctx); /* the transport holds its own reference */
  return rc;
}

/* Sends len bytes as they are, waiting while the socket is full. */
static int gl__send_all(struct gl_client *c, const uint8_t *p, size_t len, int64_t deadline) {
  while (len > 0) {
    ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL);
    if (n >= 0) {
      p += n;
      len -= (size_t)n;
      continue;
    }
    int rc = gl__io_retry(c, "send", POLLOUT, deadline);
    if (rc != GL_OK)
      return rc;
  }
  return GL_OK;
}

/* Sends what the transport has to send. */
static int gl__flush(struct gl_client *c, int64_t deadline) {
  while (gl_transport_pending_output(&c->tp) > 0) {
    size_t n = gl_transport_take_output(&c->tp, c->net_out, sizeof c->net_out);
    int rc = gl__send_all(c, c->net_out, n, deadline);
    if (rc != GL_OK)
      return rc;
  }
  return GL_OK;
}

/* Feeds the transport what the socket has, waiting for it until deadline;
 * the end of the stream too, which the transport judges (an orderly close,
 * or a TLS stream cut short). */
static int gl__pull(struct gl_client *c, int64_t deadline) {
  for (;;) {
    ssize_t n = recv(c->fd, c->net_in, sizeof c->net_in, 0);
    if (n > 0) {
      int rc = gl_transport_feed(&c->tp, c->net_in, (size_t)n);
      if (rc != GL_OK)
        gl__cerr(c, "%s", gl_transport_error(&c->tp));
      return rc;
    }
    if (n == 0) {
      gl_transport_end_of_input(&c->tp);
      return GL_OK;
    }
    int rc = gl__io_retry(c, "recv", POLLIN, deadline);
    if (rc != GL_OK)
      return rc;
  }
}

/* Completes the transport's handshake: at once for plaintext, a few round
 * trips for TLS. The server closing or resetting the connection during a
 * handshake is its refusal: GL_ETLS. */
static int gl__handshake(struct gl_client *c, int64_t deadline) {
  for (;;) {
    int r = gl_transport_handshake(&c->tp);
    int rc = gl__flush(c, deadline); /* its messages, or the alert that ends it */
    if (r < 0) {
      gl__cerr(c, "%s", gl_transport_error(&c->tp));
      return r;
    }
    if (rc == GL_OK && r == 1)
      return GL_OK;
    if (rc == GL_OK)
      rc = gl__pull(c, deadline);
    if (rc == GL_OK)
      continue;
    char what[32];
    snprintf(what, sizeof what, "%s handshake", c->tp.i->name);
    if (rc == GL_ETIMEDOUT) {
      gl__cerr(c, "%s timed out", what);
      return rc;
    }
    gl_err_prefix(c->err, sizeof c->err, what);
    return GL_ETLS;
  }
}

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
  const char *token = o->token ? o->token : getenv("GEOLOC_TOKEN");
  if (token && token[0] && !(c->token = strdup(token))) {
    free(c);
    return GL_ENOMEM;
  }
  gl_wire_decoder_init(&c->dec, o->max_message_bytes ? o->max_message_bytes : 64u << 20);
  int64_t deadline = gl__deadline(c->timeout_ms);
  rc = gl__connect_socket(c, o->address ? o->address : "", deadline, host, sizeof host);
  if (rc == GL_OK)
    rc = gl__transport_create(c, o, host);
  if (rc == GL_OK)
    rc = gl__handshake(c, deadline);
  if (rc != GL_OK)
    goto fail;
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
  gl_transport_destroy(&c->tp);
  if (c->fd >= 0)
    close(c->fd);
  gl_wire_decoder_fini(&c->dec);
  if (c->token) {
    explicit_bzero(c->token, strlen(c->token));
    free(c->token);
  }
  free(c);
}

int gl_client_send_raw(struct gl_client *c, const void *data, size_t len) {
  const uint8_t *p = data;
  int64_t deadline = gl__deadline(c->timeout_ms);
  while (len > 0) {
    /* A send buffer's worth at a time: TLS then holds that much ciphertext,
     * not a whole image's. */
    size_t n = len < sizeof c->net_out ? len : sizeof c->net_out;
    int rc = gl_transport_write(&c->tp, p, n);
    if (rc != GL_OK) {
      gl__cerr(c, "%s", gl_transport_error(&c->tp));
      return rc;
    }
    rc = gl__flush(c, deadline);
    if (rc != GL_OK)
      return rc;
    p += n;
    len -= n;
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

/* Reads protocol bytes into c->in (which must be used up). What TLS holds
 * already decrypted comes first: the socket may no longer show it. */
static int gl__fill(struct gl_client *c, int64_t deadline) {
  c->in_pos = c->in_len = 0;
  for (;;) {
    int n = gl_transport_read(&c->tp, c->plain_buf, sizeof c->plain_buf, &c->in);
    if (n > 0) {
      c->in_len = (size_t)n;
      return GL_OK;
    }
    if (n == GL_ECLOSED) {
      gl__cerr(c, "server closed the connection");
      return GL_ECLOSED;
    }
    if (n < 0) {
      gl__cerr(c, "%s", gl_transport_error(&c->tp));
      return n;
    }
    /* Nothing buffered: what reading made the transport say (a TLS key
     * update's answer) goes out, then more comes in. */
    int rc = gl__flush(c, deadline);
    if (rc == GL_OK)
      rc = gl__pull(c, deadline);
    if (rc != GL_OK)
      return rc;
  }
}

int gl_client_recv(struct gl_client *c, int timeout_ms, gl_server_msg **out) {
  int64_t deadline = gl__deadline(timeout_ms);
  *out = NULL;
  for (;;) {
    if (c->in_pos == c->in_len) {
      int rc = gl__fill(c, deadline);
      if (rc != GL_OK)
        return rc;
    }
    size_t used;
    const uint8_t *body;
    size_t body_len;
    int r = gl_wire_decoder_feed(&c->dec, c->in + c->in_pos, c->in_len - c->in_pos, &used, &body,
                                 &body_len);
    c->in_pos += used;
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
  hello.token = c->token;
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

int gl_client_error_rc(int code) {
  switch (code) {
  case GEOLOC__V1__ERROR__CODE__SHUTTING_DOWN:
  case GEOLOC__V1__ERROR__CODE__RESOURCE_EXHAUSTED:
  case GEOLOC__V1__ERROR__CODE__UNAVAILABLE:
  case GEOLOC__V1__ERROR__CODE__TIMEOUT:
    return GL_EUNAVAIL;
  default:
    return GL_EPROTO;
  }
}

bool gl_client_retryable(int rc) {
  switch (rc) {
  case GL_ECONNECT:
  case GL_ECLOSED:
  case GL_EIO:
  case GL_ETIMEDOUT:
  case GL_ETLS: /* a peer gone mid-record reads as a TLS error */
  case GL_EUNAVAIL:
    return true;
  default:
    return false;
  }
}

int gl_client_open(const struct gl_client_opts *co, const struct gl_client_hello_args *h,
                   struct gl_client **out, gl_server_msg **welcome, char *err, size_t errlen) {
  struct gl_client *c = NULL;
  gl_server_msg *w = NULL;
  *out = NULL;
  *welcome = NULL;
  int rc = gl_client_connect(co, &c, err, errlen);
  if (rc != GL_OK)
    return rc;
  rc = gl__hello(c, h->client_name, h->map, 0, h->stream, 30000, &w);
  if (rc != GL_OK) {
    snprintf(err, errlen, "Hello: %s%s%s", gl_strerror(rc), c->err[0] ? ": " : "", c->err);
    goto fail;
  }
  if (w->msg_case == GEOLOC__V1__SERVER_MESSAGE__MSG_WELCOME) {
    *out = c;
    *welcome = w;
    return GL_OK;
  }
  if (w->msg_case == GEOLOC__V1__SERVER_MESSAGE__MSG_ERROR) {
    const ProtobufCEnumValue *v =
        protobuf_c_enum_descriptor_get_value(&geoloc__v1__error__code__descriptor, w->error->code);
    snprintf(err, errlen, "server refused: %s: %s", v ? v->name : "ERROR",
             w->error->message ? w->error->message : "");
    rc = gl_client_error_rc(w->error->code);
  } else {
    snprintf(err, errlen, "the server answered Hello with something other than Welcome");
    rc = GL_EPROTO;
  }
fail:
  gl_wire_free(w);
  gl_client_destroy(c);
  return rc;
}

int gl_client_reopen(const struct gl_client_opts *co, const struct gl_client_hello_args *h,
                     uint32_t budget_ms, int64_t *lost_ms, struct gl_client **out,
                     gl_server_msg **welcome, unsigned *attempts, char *err, size_t errlen) {
  if (!*lost_ms)
    *lost_ms = gl__now_ms();
  int64_t give_up = *lost_ms + budget_ms;
  unsigned seed = (unsigned)gl__now_ms() ^ (unsigned)(uintptr_t)out;
  uint32_t delay = 50;
  int rc = GL_ETIMEDOUT;
  snprintf(err, errlen, "no answer for %u ms", budget_ms);
  for (;;) {
    int64_t left = give_up - gl__now_ms();
    if (left <= 0)
      return rc;
    uint32_t wait = delay / 2 + (uint32_t)rand_r(&seed) % (delay / 2 + 1);
    if (wait > left)
      wait = (uint32_t)left;
    struct timespec ts = {wait / 1000, (long)(wait % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
    delay = delay < 1000 ? delay * 2 : 2000;
    ++*attempts;
    rc = gl_client_open(co, h, out, welcome, err, errlen);
    if (rc == GL_OK || !gl_client_retryable(rc))
      return rc;
  }
}

const char *gl_client_last_error(const struct gl_client *c) { return c->err; }

int gl_client_fd(const struct gl_client *c) { return c->fd; }
