/* Listeners and admission: TCP, unix and TLS sockets (or systemd's), the
 * checks on a unix socket's path, accepting a connection and giving it its
 * transport, and the limits a new connection meets: max_clients (evicting
 * the oldest connection without Hello to make room),
 * max_clients_per_address, and the refusals that follow. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "core/addr.h"
#include "core/err.h"
#include "core/log.h"
#include "metrics.h"
#include "sd.h"
#include "server_internal.h"

/* Connections beyond max_clients are still accepted long enough to be told
 * why they are refused. A plaintext one is told at once and closed as soon
 * as that is written; a TLS one needs its TLS handshake first, and beyond
 * this many connections over max_clients it is closed without a word. */
#define GL_REJECT_SLACK 64
/* Refused and evicted connections are logged in a summary at most this
 * often (each one at debug level): a flood must not flood the log. */
#define GL_REFUSAL_LOG_MS 10000

/* ---- admission --------------------------------------------------------- */

static void gl__hs_unlink(struct gl_conn *c) {
  struct gl_server *srv = c->srv;
  if (!c->in_hs)
    return;
  c->in_hs = false;
  if (c->hs_prev)
    c->hs_prev->hs_next = c->hs_next;
  else
    srv->hs_head = c->hs_next;
  if (c->hs_next)
    c->hs_next->hs_prev = c->hs_prev;
  else
    srv->hs_tail = c->hs_prev;
  c->hs_prev = c->hs_next = NULL;
}

/* The source address of a TCP peer as 16 bytes (IPv4 mapped into IPv6, so
 * that a dual-stack listener counts one host once). False for others. */
static bool gl__src_key(const struct sockaddr_storage *ss, uint8_t key[16]) {
  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
    memset(key, 0, 10);
    key[10] = key[11] = 0xff;
    memcpy(key + 12, &a->sin_addr, 4);
    return true;
  }
  if (ss->ss_family == AF_INET6) {
    memcpy(key, &((const struct sockaddr_in6 *)ss)->sin6_addr, 16);
    return true;
  }
  return false;
}

static struct gl_src **gl__src_slot(struct gl_server *srv, const uint8_t key[16]) {
  uint32_t h = 2166136261u ^ srv->src_seed; /* FNV-1a, seeded per process */
  for (int i = 0; i < 16; i++)
    h = (h ^ key[i]) * 16777619u;
  struct gl_src **p = &srv->src[h % GL_SRC_BUCKETS];
  while (*p && memcmp((*p)->addr, key, 16) != 0)
    p = &(*p)->next;
  return p;
}

/* Gives up c's slot among max_clients (and its address's count). */
void gl__conn_unadmit(struct gl_conn *c) {
  struct gl_server *srv = c->srv;
  if (!c->admitted)
    return;
  c->admitted = false;
  srv->n_admitted--;
  gl__hs_unlink(c);
  if (c->src && --c->src->n == 0) {
    struct gl_src **p = gl__src_slot(srv, c->src->addr);
    *p = c->src->next;
    free(c->src);
  }
  c->src = NULL;
  gl_metrics_set_clients(srv->metrics, srv->n_admitted);
}

enum { GL__REFUSED, GL__EVICTED, GL__CUT };

/* Counts a connection refused, evicted or cut (closed without a word), each
 * logged at debug level, and logs a summary at most every
 * GL_REFUSAL_LOG_MS: a flood of connections must not flood the log. */
static void gl__note_refusal(struct gl_server *srv, int kind, const struct gl_conn *c,
                             const char *why) {
  static const char *const what[] = {"refused", "evicted", "closed without a message"};
  GL_LOG_D("session %llu (%s): %s: %s", (unsigned long long)c->session_id, c->peer, what[kind],
           why);
  srv->n_refused[kind]++;
  uint64_t now = uv_now(srv->loop);
  if (srv->refusal_logged && now - srv->refusal_logged_ms < GL_REFUSAL_LOG_MS)
    return;
  GL_LOG_W("connections over the limits%s: %llu refused, %llu evicted before Hello, %llu closed "
           "without a message (%u of max_clients %u held, %u connection(s) open)",
           srv->refusal_logged ? " since the last report" : "",
           (unsigned long long)srv->n_refused[GL__REFUSED],
           (unsigned long long)srv->n_refused[GL__EVICTED],
           (unsigned long long)srv->n_refused[GL__CUT], srv->n_admitted, srv->cfg.max_clients,
           srv->n_conns);
  memset(srv->n_refused, 0, sizeof srv->n_refused);
  srv->refusal_logged = true;
  srv->refusal_logged_ms = now;
}

static void gl__conn_refuse(struct gl_conn *c, int kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Sends Error{RESOURCE_EXHAUSTED, fatal} and closes the connection as soon
 * as it is written, without the linger of other fatal errors, so that a
 * flood of refused connections holds no descriptors. */
static void gl__conn_refuse(struct gl_conn *c, int kind, const char *fmt, ...) {
  char text[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  gl__note_refusal(c->srv, kind, c, text);
  gl__conn_unadmit(c);
  c->refused = true;
  Geoloc__V1__Error e = GEOLOC__V1__ERROR__INIT;
  gl_server_msg m = GEOLOC__V1__SERVER_MESSAGE__INIT;
  e.has_code = e.has_fatal = 1;
  e.code = GEOLOC__V1__ERROR__CODE__RESOURCE_EXHAUSTED;
  e.fatal = true;
  e.message = text;
  m.msg_case = GEOLOC__V1__SERVER_MESSAGE__MSG_ERROR;
  m.error = &e;
  gl__conn_send(c, &m);
  gl__conn_finish(c);
}

/* A new connection over the limits, once it can be told: at once in
 * plaintext, after its TLS handshake otherwise. */
void gl__conn_refuse_new(struct gl_conn *c) {
  const struct gl_config *cfg = &c->srv->cfg;
  if (c->reject_addr)
    gl__conn_refuse(c, GL__REFUSED, "too many connections from %s (max_clients_per_address %u)",
                    c->peer, cfg->max_clients_per_address);
  else
    gl__conn_refuse(c, GL__REFUSED, "server full: %u clients", cfg->max_clients);
}

/* At max_clients, makes room for a new connection by evicting the oldest
 * one that has not said Hello: idle or slow peers would otherwise hold
 * every slot until handshake_timeout_ms and lock real clients out. It is
 * told why in plaintext or once its TLS is up; a TLS handshake still under
 * way is just closed. Returns false when every slot holds a client past
 * Hello. */
static bool gl__evict_one(struct gl_server *srv) {
  struct gl_conn *v;
  while ((v = srv->hs_head)) {
    gl__hs_unlink(v);
    if (v->state != GL_CONN_HANDSHAKE || !v->admitted || v->closing)
      continue; /* past Hello since it was queued, or going */
    if (!gl_transport_ready(&v->tp)) {
      char why[96];
      snprintf(why, sizeof why, "%s handshake not done while the server is full", v->tp.i->name);
      gl__conn_unadmit(v);
      gl__note_refusal(srv, GL__EVICTED, v, why);
      gl__conn_close(v);
    } else {
      gl__conn_refuse(v, GL__EVICTED,
                      "server full: %u clients; a connection that has not said Hello makes room "
                      "for a new one",
                      srv->cfg.max_clients);
    }
    return true;
  }
  return false;
}

/* The transport a listener's connections speak. A TLS one holds a reference
 * to the server's context of the moment: a reload's new certificates are
 * for new connections. */
static int gl__listener_transport(const struct gl_listener *l, struct gl_conn *c) {
  if (!l->tls) {
    gl_transport_plain_init(&c->plain, &c->tp);
    return GL_OK;
  }
  return gl_transport_tls_create(l->srv->tls_ctx, NULL, &c->tp, NULL, 0);
}

static void gl__on_connection(uv_stream_t *ls, int status) {
  struct gl_listener *l = ls->data;
  struct gl_server *srv = l->srv;
  if (status < 0) {
    GL_LOG_W("%s: accept: %s", l->name, uv_strerror(status));
    return;
  }
  struct gl_conn *c = calloc(1, sizeof *c);
  if (!c) {
    GL_LOG_E("%s: out of memory accepting a connection", l->name);
    return;
  }
  c->srv = srv;
  c->session_id = ++srv->next_session;
  c->io.handle.data = c;
  c->timer.data = c;
  if (l->is_pipe)
    uv_pipe_init(srv->loop, &c->io.pipe, 0);
  else
    uv_tcp_init(srv->loop, &c->io.tcp);
  uv_timer_init(srv->loop, &c->timer);
  c->open_handles = 2;
  c->next = srv->conns;
  if (srv->conns)
    srv->conns->prev = c;
  srv->conns = c;
  srv->n_conns++;
  gl_wire_decoder_init(&c->dec, srv->cfg.max_message_bytes < GL_HELLO_MAX_BYTES
                                    ? srv->cfg.max_message_bytes
                                    : GL_HELLO_MAX_BYTES);

  int r = uv_accept(ls, &c->io.stream);
  if (r < 0) {
    GL_LOG_W("%s: accept: %s", l->name, uv_strerror(r));
    gl__conn_close(c);
    return;
  }
  struct sockaddr_storage ss;
  uint8_t key[16];
  bool has_key = false;
  if (l->is_pipe) {
    snprintf(c->peer, sizeof c->peer, "unix");
  } else {
    int len = sizeof ss;
    uv_tcp_nodelay(&c->io.tcp, 1); /* answers are small and latency matters */
    if (uv_tcp_getpeername(&c->io.tcp, (struct sockaddr *)&ss, &len) == 0) {
      gl_addr_format(&ss, c->peer, sizeof c->peer);
      has_key = gl__src_key(&ss, key);
    }
  }
  /* Admission: a slot among max_clients, within the address's share; at
   * max_clients the oldest connection still without Hello makes room. */
  const struct gl_config *cfg = &srv->cfg;
  const bool crowded = srv->n_conns > cfg->max_clients + GL_REJECT_SLACK;
  struct gl_src **src = has_key ? gl__src_slot(srv, key) : NULL;
  if (crowded) {
    c->reject = true;
  } else if (cfg->max_clients_per_address && src && *src &&
             (*src)->n >= cfg->max_clients_per_address) {
    c->reject = c->reject_addr = true;
  } else {
    while (srv->n_admitted >= cfg->max_clients && gl__evict_one(srv)) {
    }
    c->reject = srv->n_admitted >= cfg->max_clients;
  }
  if (!c->reject) {
    c->admitted = true;
    srv->n_admitted++;
    gl_metrics_set_clients(srv->metrics, srv->n_admitted);
    src = has_key ? gl__src_slot(srv, key) : NULL; /* an eviction may have changed the table */
    if (src && !*src && (*src = calloc(1, sizeof **src)) != NULL)
      memcpy((*src)->addr, key, sizeof key);
    if (src && *src) {
      (*src)->n++;
      c->src = *src;
    }
    c->in_hs = true; /* the newest connection without Hello */
    c->hs_prev = srv->hs_tail;
    if (srv->hs_tail)
      srv->hs_tail->hs_next = c;
    else
      srv->hs_head = c;
    srv->hs_tail = c;
  }
  if (c->reject && l->tls && crowded) {
    /* It could only be told after a TLS handshake, which would cost more
     * than the flood it belongs to is worth. */
    gl__note_refusal(srv, GL__CUT, c, "too many connections open to answer one more over TLS");
    gl__conn_close(c);
    return;
  }
  if (gl__listener_transport(l, c) != GL_OK) {
    GL_LOG_E("%s: cannot create TLS state for %s", l->name, c->peer);
    gl__conn_close(c);
    return;
  }
  GL_LOG_D("session %llu (%s): connected on %s", (unsigned long long)c->session_id, c->peer,
           l->name);
  if (c->reject && gl_transport_ready(&c->tp)) {
    gl__conn_refuse_new(c); /* plaintext: told at once, closed once that is written */
    return;
  }
  gl__conn_arm_timer(c);
  gl__conn_read_start(c);
}

/* ---- listeners --------------------------------------------------------- */

static int gl__listener_start(struct gl_server *srv, struct gl_listener *l, char *err,
                              size_t errlen) {
  l->srv = srv;
  l->io.handle.data = l;
  int r = uv_listen(&l->io.stream, 511, gl__on_connection);
  if (r < 0) {
    snprintf(err, errlen, "%s: listen: %s", l->name, uv_strerror(r));
    return GL_EADDR;
  }
  GL_LOG_I("listening: %s", l->name);
  return GL_OK;
}

static int gl__listen_tcp(struct gl_server *srv, const char *addr, bool tls, char *err,
                          size_t errlen) {
  struct gl_listener *l = &srv->listeners[srv->n_listeners];
  struct sockaddr_storage ss;
  if (gl_addr_parse(addr, &ss) != GL_OK) {
    snprintf(err, errlen, "[listen] %s: bad address '%s'", tls ? "tls" : "tcp", addr);
    return GL_EADDR;
  }
  uv_tcp_init(srv->loop, &l->io.tcp);
  srv->n_listeners++; /* from here on it is closed with the others */
  l->tls = tls;
  snprintf(l->name, sizeof l->name, "%s %s", tls ? "tls" : "tcp", addr);
  int r = uv_tcp_bind(&l->io.tcp, (const struct sockaddr *)&ss, 0);
  if (r < 0) {
    snprintf(err, errlen, "%s: bind: %s", l->name, uv_strerror(r));
    return GL_EADDR;
  }
  return gl__listener_start(srv, l, err, errlen);
}

/* What is at a unix socket path before we bind it. A socket that accepts
 * a connection belongs to a live process (another geolocd, most likely):
 * replacing it would cut that one off from its clients, so the start fails.
 * A socket nobody listens on (the connection is refused) was left by a
 * process that died, and is removed. Anything else is not ours to remove. */
static int gl__unix_path_free(const char *name, const struct sockaddr_un *sa, char *err,
                              size_t errlen) {
  const char *path = sa->sun_path;
  struct stat st;
  if (lstat(path, &st) != 0) {
    if (errno == ENOENT)
      return GL_OK;
    snprintf(err, errlen, "%s: %s", name, strerror(errno));
    return GL_EADDR;
  }
  if (!S_ISSOCK(st.st_mode)) {
    snprintf(err, errlen, "%s: the path exists and is not a socket (not removing it)", name);
    return GL_EADDR;
  }
  /* Non-blocking: a live socket with a full backlog says EAGAIN at once. */
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    snprintf(err, errlen, "%s: socket: %s", name, strerror(errno));
    return GL_EADDR;
  }
  int r = connect(fd, (const struct sockaddr *)sa, sizeof *sa);
  int e = errno;
  close(fd);
  if (r == 0 || e == EAGAIN || e == EINPROGRESS) {
    snprintf(err, errlen,
             "%s: in use: another process (another geolocd?) is listening on this socket", name);
    return GL_EADDR;
  }
  if (e == ENOENT)
    return GL_OK; /* gone meanwhile */
  if (e != ECONNREFUSED) {
    snprintf(err, errlen, "%s: cannot tell whether the socket is in use (%s); not removing it",
             name, strerror(e));
    return GL_EADDR;
  }
  if (unlink(path) != 0 && errno != ENOENT) {
    snprintf(err, errlen, "%s: cannot remove the stale socket: %s", name, strerror(errno));
    return GL_EADDR;
  }
  GL_LOG_N("%s: removed a stale socket that nothing listened on", name);
  return GL_OK;
}

/* [listen] unix: the socket file gets unix_mode and unix_group, and no
 * moment with more permissions than those (see fchmod below). */
static int gl__listen_unix(struct gl_server *srv, const char *path, char *err, size_t errlen) {
  const struct gl_config *cfg = &srv->cfg;
  struct gl_listener *l = &srv->listeners[srv->n_listeners];
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  struct stat st;
  gid_t gid = (gid_t)-1;
  char why[160];
  int fd;
  uv_pipe_init(srv->loop, &l->io.pipe, 0);
  srv->n_listeners++;
  l->is_pipe = true;
  snprintf(l->name, sizeof l->name, "unix %s", path);
  if (strlen(path) >= sizeof sa.sun_path) {
    snprintf(err, errlen, "%s: path longer than %zu bytes", l->name, sizeof sa.sun_path - 1);
    return GL_EADDR;
  }
  memcpy(sa.sun_path, path, strlen(path) + 1);
  if (cfg->unix_group && gl_config_group(cfg->unix_group, &gid, why, sizeof why) != GL_OK) {
    snprintf(err, errlen, "%s: [listen] unix_group: %s", l->name, why);
    return GL_ECONFIG;
  }
  if (gl__unix_path_free(l->name, &sa, err, errlen) != GL_OK)
    return GL_EADDR;
  fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    snprintf(err, errlen, "%s: socket: %s", l->name, strerror(errno));
    return GL_EADDR;
  }
  /* Linux creates the file with the socket's own mode less the umask: the
   * configured bits or fewer, until the chmod below makes them exact. */
  (void)fchmod(fd, (mode_t)cfg->unix_mode);
  if (bind(fd, (const struct sockaddr *)&sa, sizeof sa) != 0) {
    snprintf(err, errlen, "%s: bind: %s", l->name, strerror(errno));
    goto fail;
  }
  l->unlink_path = strdup(path);
  if (lstat(path, &st) != 0 || !l->unlink_path) {
    snprintf(err, errlen, "%s: %s", l->name, l->unlink_path ? strerror(errno) : "out of memory");
    goto fail;
  }
  l->unix_dev = st.st_dev;
  l->unix_ino = st.st_ino;
  if (gid != (gid_t)-1 && lchown(path, (uid_t)-1, gid) != 0) {
    snprintf(err, errlen, "%s: cannot give the socket to group %s: %s", l->name, cfg->unix_group,
             strerror(errno));
    goto fail;
  }
  if (chmod(path, (mode_t)cfg->unix_mode) != 0) {
    snprintf(err, errlen, "%s: chmod %04o: %s", l->name, (unsigned)cfg->unix_mode, strerror(errno));
    goto fail;
  }
  int r = uv_pipe_open(&l->io.pipe, fd);
  if (r < 0) {
    snprintf(err, errlen, "%s: %s", l->name, uv_strerror(r));
    goto fail;
  }
  return gl__listener_start(srv, l, err, errlen); /* the handle owns fd now */
fail:
  close(fd); /* the listener is closed, and its file removed, with the others */
  return GL_EADDR;
}

/* Sockets from systemd: FileDescriptorName=tls marks TLS ones. */
static int gl__listen_activated(struct gl_server *srv, int n, char **names, char *err,
                                size_t errlen) {
  for (int i = 0; i < n && srv->n_listeners < GL_MAX_LISTENERS; i++) {
    int fd = 3 + i;
    struct gl_listener *l = &srv->listeners[srv->n_listeners];
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    char addr[96];
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0) {
      snprintf(err, errlen, "socket activation: fd %d: %s", fd, strerror(errno));
      return GL_EADDR;
    }
    l->tls = names && names[i] && strcmp(names[i], "tls") == 0;
    int r;
    if (ss.ss_family == AF_UNIX) {
      uv_pipe_init(srv->loop, &l->io.pipe, 0);
      l->is_pipe = true;
      snprintf(addr, sizeof addr, "unix fd %d", fd);
      r = uv_pipe_open(&l->io.pipe, fd);
    } else {
      uv_tcp_init(srv->loop, &l->io.tcp);
      gl_addr_format(&ss, addr, sizeof addr);
      r = uv_tcp_open(&l->io.tcp, fd);
    }
    srv->n_listeners++;
    snprintf(l->name, sizeof l->name, "%s %s (systemd)", l->tls ? "tls" : "plain", addr);
    if (r < 0) {
      snprintf(err, errlen, "%s: %s", l->name, uv_strerror(r));
      return GL_EADDR;
    }
    if (!l->tls && ss.ss_family != AF_UNIX && !gl_addr_is_loopback(&ss) &&
        !srv->cfg.allow_remote_plaintext) {
      snprintf(err, errlen,
               "%s: plaintext socket on a non-loopback address (name it 'tls' with "
               "FileDescriptorName=, or set [listen] allow_remote_plaintext = true)",
               l->name);
      return GL_EADDR;
    }
    if (gl__listener_start(srv, l, err, errlen) != GL_OK)
      return GL_EADDR;
  }
  return GL_OK;
}

int gl__listen_all(struct gl_server *srv, char *err, size_t errlen) {
  const struct gl_config *cfg = &srv->cfg;
  char **names = NULL;
  int n = gl_sd_listen_fds(&names);
  int rc = GL_OK;
  if (n < 0) {
    snprintf(err, errlen, "socket activation: invalid LISTEN_FDS");
    return GL_EADDR;
  }
  if (n > 0) {
    srv->activated = true;
    GL_LOG_I("%d socket(s) from systemd replace the [listen] addresses", n);
    rc = gl__listen_activated(srv, n, names, err, errlen);
    gl_sd_free_names(names);
    return rc;
  }
  if (cfg->tcp)
    rc = gl__listen_tcp(srv, cfg->tcp, false, err, errlen);
  if (rc == GL_OK && cfg->unix_path)
    rc = gl__listen_unix(srv, cfg->unix_path, err, errlen);
  if (rc == GL_OK && cfg->tls)
    rc = gl__listen_tcp(srv, cfg->tls, true, err, errlen);
  if (rc == GL_OK && srv->n_listeners == 0) {
    snprintf(err, errlen, "%s: no listener: set [listen] tcp, unix or tls", cfg->path);
    rc = GL_ECONFIG;
  }
  return rc;
}

bool gl__has_tls_listener(const struct gl_server *srv) {
  for (int i = 0; i < srv->n_listeners; i++)
    if (srv->listeners[i].tls)
      return true;
  return false;
}

/* A listener is part of the server: nothing to free when it is closed. */
static void gl__on_listener_closed(uv_handle_t *h) { (void)h; }

void gl__close_listeners(struct gl_server *srv) {
  for (int i = 0; i < srv->n_listeners; i++) {
    struct gl_listener *l = &srv->listeners[i];
    if (!uv_is_closing(&l->io.handle))
      uv_close(&l->io.handle, gl__on_listener_closed);
    if (l->unlink_path) {
      struct stat st;
      /* Only the socket we bound, never a file that has replaced it. */
      if (lstat(l->unlink_path, &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == l->unix_dev &&
          st.st_ino == l->unix_ino)
        unlink(l->unlink_path);
      free(l->unlink_path);
      l->unlink_path = NULL;
    }
  }
}
