/* Harness of the geolocd integration tests.
 *
 * Everything is real: a fresh temp dir, certificates generated with OpenSSL,
 * the geolocd binary started as a child process with a config written here,
 * loopback sockets and signals. A failed check prints where and why, dumps
 * the daemon's log, kills the daemon, removes the temp dir and exits 1, so a
 * scenario is written as a straight line of checks. */
#ifndef GL_TEST_HARNESS_H
#define GL_TEST_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "client/client.h"
#include "core/err.h"
#include "gl_build_config.h"
#include "proto/wire.h"

#define GL_TEST_SKIP 77

/* How long a reply that should come promptly may take. Generous on purpose:
 * the suite must not flake on a loaded 2-core machine or under ASan. */
#define GL_TEST_WAIT_MS 10000

/* ---- failure reporting ------------------------------------------------- */

void gl_test_failf(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4), noreturn));
void gl_test_logf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#define GL_FAIL(...) gl_test_failf(__FILE__, __LINE__, __VA_ARGS__)
#define GL_CHECK(cond)                                                                             \
  do {                                                                                             \
    if (!(cond))                                                                                   \
      gl_test_failf(__FILE__, __LINE__, "%s", #cond);                                              \
  } while (0)
#define GL_CHECKF(cond, ...)                                                                       \
  do {                                                                                             \
    if (!(cond))                                                                                   \
      gl_test_failf(__FILE__, __LINE__, __VA_ARGS__);                                              \
  } while (0)

/* ---- environment: temp dir, ports, certificates, config ----------------- */

struct gl_test_conf {
  const char *log_level; /* default "info" */
  uint32_t max_clients;
  uint32_t max_message_bytes;
  uint32_t handshake_timeout_ms;
  uint32_t idle_timeout_ms;
  uint32_t drain_timeout_ms;
  bool listen_tcp;       /* [listen] tcp = 127.0.0.1:<env tcp_port> */
  bool listen_tls;       /* [listen] tls = 127.0.0.1:<env tls_port>, writes [tls] */
  bool listen_unix;      /* [listen] unix = <dir>/g.sock */
  const char *tcp_value; /* overrides the tcp value (e.g. "0.0.0.0:1234") */
  bool allow_remote_plaintext;
  bool tls_section;          /* write [tls] even without a TLS listener */
  bool client_cert_optional; /* require_client_cert = false */
  const char *tls_cert;      /* default <dir>/server.crt */
  const char *tls_key;       /* default <dir>/server.key */
  const char *tls_ca;        /* default <dir>/ca-a.crt */
  const char *extra;         /* raw text appended at the end of the file */
};

struct gl_test_env {
  char dir[256];
  char conf_path[320];
  char log_path[320];
  char unix_path[320];
  char unix_addr[340]; /* "unix:<unix_path>" */
  /* certificates (see gl_test_certs) */
  char ca_a[320], ca_b[320];
  char server_crt[320], server_key[320];
  char client_crt[320], client_key[320];
  char client_b_crt[320], client_b_key[320];
  bool have_certs;
  uint16_t tcp_port, tls_port;
  char tcp_addr[64], tls_addr[64];
  const char *daemon;       /* path of geolocd */
  pid_t pid;                /* running daemon, 0 when none */
  struct gl_test_conf conf; /* what the last gl_test_write_conf wrote */
};

/* Creates the temp dir, picks ports, registers env for failure cleanup.
 * daemon: path of the geolocd binary. */
void gl_test_env_init(struct gl_test_env *e, const char *daemon);
/* Removes the temp dir (the daemon must have exited). */
void gl_test_env_fini(struct gl_test_env *e);

/* A free loopback TCP port (bind 127.0.0.1:0, getsockname, close). */
uint16_t gl_test_free_port(void);

/* Conf with the test defaults: log_level info, max_clients 256,
 * max_message_bytes 65536, handshake 5000 ms, idle 60000 ms, drain 5000 ms,
 * plaintext tcp on. */
void gl_test_conf_defaults(struct gl_test_conf *c);
/* Renders c into a config file at path (written to a temp file, then renamed
 * over path so a reloading daemon never reads half a file). */
void gl_test_write_conf_to(struct gl_test_env *e, const struct gl_test_conf *c, const char *path);
/* Same, at e->conf_path, and remembers c in e->conf. */
void gl_test_write_conf(struct gl_test_env *e, const struct gl_test_conf *c);

/* Generates into dir: ca-a.{crt,key}, server.{crt,key} (signed by A, SAN
 * IP:127.0.0.1 and DNS:localhost), client.{crt,key} (signed by A),
 * ca-b.{crt,key}, client-b.{crt,key} (signed by B). EC P-256 keys.
 * Returns 0, or -1 when TLS support is not built in. */
int gl_test_certs(const char *dir);
/* A new server certificate <name>.crt/<name>.key in dir, signed by CA A. */
void gl_test_new_server_cert(const char *dir, const char *name);
/* Fills the certificate paths of e and generates them. */
void gl_test_env_certs(struct gl_test_env *e);

/* ---- processes --------------------------------------------------------- */

struct gl_test_spawn {
  const char *const *argv;    /* argv[0] is the program */
  const char *stdout_path;    /* NULL: stderr_path */
  const char *stderr_path;    /* appended to */
  const char *const *env_add; /* "K=V", NULL-terminated, may be NULL */
  const int *pass_fds;        /* become fds 3, 4, ... in the child */
  int n_pass_fds;
  bool set_listen_pid; /* LISTEN_PID=<child pid> set in the child */
};

/* fork/exec. The child gets the parent's environment minus systemd's
 * variables (NOTIFY_SOCKET, WATCHDOG_*, LISTEN_*, JOURNAL_STREAM), plus
 * env_add. */
pid_t gl_test_spawn(const struct gl_test_spawn *s);

/* Waits for pid to exit. Returns 0 and the waitpid status, or -1 when it
 * did not exit within timeout_ms (it is then killed with SIGKILL and reaped). */
int gl_test_wait_pid(pid_t pid, int timeout_ms, int *status);

/* Text of a waitpid status ("exit 0", "signal 6"), static buffer. */
const char *gl_test_status_str(int status);

struct gl_test_start_opts {
  const char *const *env_add;
  const int *pass_fds;
  int n_pass_fds;
  bool set_listen_pid;
  bool no_wait_ready; /* do not probe listeners */
};

/* Starts geolocd --config e->conf_path with stderr to e->log_path, then
 * waits until every configured listener accepts connections (10 s). */
void gl_test_start(struct gl_test_env *e, const struct gl_test_start_opts *o);
/* Writes c, then starts (retrying with new ports when the first choice
 * turned out to be taken between picking and binding). */
void gl_test_start_conf(struct gl_test_env *e, struct gl_test_conf *c);

void gl_test_signal(struct gl_test_env *e, int sig);
/* Sends SIGTERM and requires exit status 0 within 20 s. */
void gl_test_stop(struct gl_test_env *e);
/* Requires the daemon (already signalled) to exit 0 within timeout_ms. */
void gl_test_expect_exit0(struct gl_test_env *e, int timeout_ms);
/* Requires the daemon to still run. */
void gl_test_check_alive(struct gl_test_env *e);
/* Current size of the daemon log. */
long gl_test_log_size(struct gl_test_env *e);
/* Waits until text appears in the log after offset. Returns true if found. */
bool gl_test_log_wait(struct gl_test_env *e, long offset, const char *text, int timeout_ms);
void gl_test_dump_file(const char *title, const char *path);
/* Reads a whole file into a malloc'ed NUL-terminated string ("" if absent). */
char *gl_test_read_file(const char *path);

/* ---- clients ------------------------------------------------------------ */

enum gl_test_cert {
  GL_TEST_CERT_NONE,
  GL_TEST_CERT_A, /* client cert signed by CA A */
  GL_TEST_CERT_B, /* client cert signed by CA B */
};

/* Connects; returns the gl_client_connect code, *out set on 0. */
int gl_test_try_connect(struct gl_test_env *e, const char *address, bool tls,
                        enum gl_test_cert cert, struct gl_client **out, char *err, size_t errlen);
/* Connects or fails the test. */
struct gl_client *gl_test_connect_plain(struct gl_test_env *e);
struct gl_client *gl_test_connect_unix(struct gl_test_env *e);
struct gl_client *gl_test_connect_tls(struct gl_test_env *e, enum gl_test_cert cert);
struct gl_client *gl_test_connect_addr(struct gl_test_env *e, const char *address, bool tls,
                                       enum gl_test_cert cert);

/* Storage for one ClientMessage built on the stack. */
struct gl_test_cmsg {
  gl_client_msg m;
  Geoloc__V1__Hello hello;
  Geoloc__V1__Ping ping;
  Geoloc__V1__Frame frame;
  uint8_t image[64];
};
gl_client_msg *gl_test_msg_hello(struct gl_test_cmsg *b, uint32_t version, const char *name,
                                 const char *map);
gl_client_msg *gl_test_msg_ping(struct gl_test_cmsg *b, uint64_t nonce, uint64_t send_time_us);
gl_client_msg *gl_test_msg_frame(struct gl_test_cmsg *b, uint64_t frame_id);
/* Encoded (length prefix + body) into a malloc'ed buffer. */
uint8_t *gl_test_encode(const gl_client_msg *m, size_t *len);

uint64_t gl_test_now_us(void);  /* CLOCK_REALTIME */
uint64_t gl_test_mono_ms(void); /* CLOCK_MONOTONIC */
void gl_test_sleep_ms(unsigned ms);

/* Text of a server message for failure messages (static per-thread buffer). */
const char *gl_test_msg_str(const gl_server_msg *m);
const char *gl_test_code_name(int code);

/* Each fails the test (naming what) unless the expectation holds. */
void gl_test_send(struct gl_client *c, const gl_client_msg *m, const char *what);
void gl_test_send_raw(struct gl_client *c, const void *data, size_t len, const char *what);
gl_server_msg *gl_test_recv(struct gl_client *c, int timeout_ms, const char *what);
/* Hello (version 1, no map) answered by a Welcome, which is returned. */
gl_server_msg *gl_test_hello_ok(struct gl_client *c, const char *what);
void gl_test_expect_pong(struct gl_client *c, uint64_t nonce, uint64_t send_time_us,
                         const char *what);
/* frame_id < 0: not checked. */
void gl_test_expect_error(struct gl_client *c, int code, bool fatal, int64_t frame_id,
                          const char *what);
/* The server closed in order: gl_client_recv returns GL_ECLOSED. */
void gl_test_expect_eof(struct gl_client *c, const char *what);
/* Ping round trip. */
void gl_test_ping_ok(struct gl_client *c, uint64_t nonce, const char *what);

/* A raw (non-gl_client) TCP connection to 127.0.0.1:port; -1 on failure. */
int gl_test_raw_connect(uint16_t port, int rcvbuf);

#if GL_HAVE_TLS
/* Connects with OpenSSL directly, verifying the server against ca, and
 * returns 1 when the server presented the certificate in expect_crt, 0 when
 * another one, -1 when the handshake failed. */
int gl_test_tls_peer_is(uint16_t port, const char *ca, const char *cert, const char *key,
                        const char *expect_crt);
/* Handshake with a client limited to TLS <= 1.1 (security level 0).
 * Returns 0 when the handshake succeeded, -1 when it failed. */
int gl_test_tls_old_version(uint16_t port, const char *ca, const char *cert, const char *key);
/* A TLS 1.2 handshake offering only cipher (OpenSSL syntax): 0 when the
 * server accepts it, -1 when it refuses. */
int gl_test_tls12_cipher(uint16_t port, const char *ca, const char *cert, const char *key,
                         const char *cipher);
#endif

#endif
