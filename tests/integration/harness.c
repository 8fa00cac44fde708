/* Harness of the geolocd integration tests (see harness.h). */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#if GL_HAVE_TLS
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#endif

extern char **environ;

static struct gl_test_env *g_env;
static pthread_mutex_t g_fail_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t g_t0_ms;

/* ---- time ----------------------------------------------------------------- */

uint64_t gl_test_now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

uint64_t gl_test_mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void gl_test_sleep_ms(unsigned ms) {
  struct timespec ts = {.tv_sec = ms / 1000u, .tv_nsec = (long)(ms % 1000u) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* ---- reporting ------------------------------------------------------------ */

void gl_test_logf(const char *fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  if (g_t0_ms == 0)
    g_t0_ms = gl_test_mono_ms();
  fprintf(stderr, "[%6llu ms] %s\n", (unsigned long long)(gl_test_mono_ms() - g_t0_ms), buf);
  fflush(stderr);
}

char *gl_test_read_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    char *s = malloc(1);
    if (s)
      s[0] = '\0';
    return s;
  }
  size_t cap = 4096, len = 0;
  char *s = malloc(cap);
  for (;;) {
    if (!s)
      break;
    if (len + 2048 > cap) {
      char *n = realloc(s, cap * 2);
      if (!n) {
        free(s);
        s = NULL;
        break;
      }
      s = n;
      cap *= 2;
    }
    size_t r = fread(s + len, 1, cap - len - 1, f);
    len += r;
    if (r == 0)
      break;
  }
  fclose(f);
  if (s)
    s[len] = '\0';
  return s;
}

void gl_test_dump_file(const char *title, const char *path) {
  char *s = gl_test_read_file(path);
  size_t len = s ? strlen(s) : 0;
  const size_t max = 64 * 1024;
  fprintf(stderr, "----- %s (%s)%s -----\n", title, path, len > max ? ", last 64 KiB" : "");
  if (s)
    fputs(len > max ? s + len - max : s, stderr);
  if (len && s[len - 1] != '\n')
    fputc('\n', stderr);
  fprintf(stderr, "----- end of %s -----\n", title);
  fflush(stderr);
  free(s);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  remove(path);
  return 0;
}

static void rm_tree(const char *dir) {
  if (dir[0])
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

void gl_test_failf(const char *file, int line, const char *fmt, ...) {
  char buf[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  /* One failure reports; a second thread failing meanwhile waits here until
   * the process exits. */
  pthread_mutex_lock(&g_fail_lock);
  fprintf(stderr, "FAIL %s:%d: %s\n", file, line, buf);
  fflush(stderr);
  struct gl_test_env *e = g_env;
  if (e) {
    if (e->pid > 0) {
      int st = 0;
      if (waitpid(e->pid, &st, WNOHANG) == e->pid)
        fprintf(stderr, "daemon (pid %d) had already exited: %s\n", (int)e->pid,
                gl_test_status_str(st));
      else {
        kill(e->pid, SIGKILL);
        waitpid(e->pid, &st, 0);
        fprintf(stderr, "daemon (pid %d) killed with SIGKILL\n", (int)e->pid);
      }
      e->pid = 0;
    }
    gl_test_dump_file("daemon log", e->log_path);
    rm_tree(e->dir);
  }
  fflush(stderr);
  _exit(1);
}

const char *gl_test_status_str(int status) {
  static __thread char buf[64];
  if (WIFEXITED(status))
    snprintf(buf, sizeof buf, "exit %d", WEXITSTATUS(status));
  else if (WIFSIGNALED(status))
    snprintf(buf, sizeof buf, "killed by signal %d (%s)", WTERMSIG(status),
             strsignal(WTERMSIG(status)));
  else
    snprintf(buf, sizeof buf, "status 0x%x", status);
  return buf;
}

/* ---- environment ---------------------------------------------------------- */

/* The first port of the kernel's ephemeral range (32768 when unknown). */
static unsigned ephemeral_low(void) {
  unsigned lo = 32768, hi = 0;
  FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
  if (f) {
    if (fscanf(f, "%u %u", &lo, &hi) != 2)
      lo = 32768;
    fclose(f);
  }
  return lo;
}

/* A loopback port free now, drawn below the kernel's ephemeral range: the
 * outgoing connections of the tests running beside this one take their
 * local ports from that range, and one of them could take a port picked
 * there before the daemon under test binds it. */
uint16_t gl_test_free_port(void) {
  static unsigned seed;
  if (!seed)
    seed = (unsigned)getpid() ^ (unsigned)gl_test_mono_ms();
  unsigned low = ephemeral_low();
  for (int tries = 0; tries < 1000; tries++) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
      GL_FAIL("socket: %s", strerror(errno));
    unsigned port = low > 11000 ? 10000 + (unsigned)rand_r(&seed) % (low - 10000) : 0;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
      close(fd);
      continue;
    }
    socklen_t sl = sizeof sa;
    if (getsockname(fd, (struct sockaddr *)&sa, &sl) != 0)
      GL_FAIL("getsockname: %s", strerror(errno));
    close(fd);
    return ntohs(sa.sin_port);
  }
  GL_FAIL("no free loopback port below %u", low);
}

static void pick_ports(struct gl_test_env *e) {
  e->tcp_port = gl_test_free_port();
  do
    e->tls_port = gl_test_free_port();
  while (e->tls_port == e->tcp_port);
  snprintf(e->tcp_addr, sizeof e->tcp_addr, "127.0.0.1:%u", (unsigned)e->tcp_port);
  snprintf(e->tls_addr, sizeof e->tls_addr, "127.0.0.1:%u", (unsigned)e->tls_port);
}

void gl_test_env_init(struct gl_test_env *e, const char *daemon) {
  memset(e, 0, sizeof *e);
  if (g_t0_ms == 0)
    g_t0_ms = gl_test_mono_ms();
  e->daemon = daemon;
  /* Unix socket paths are limited to 108 bytes: prefer a short base. */
  const char *base = getenv("TMPDIR");
  if (!base || !base[0] || strlen(base) > 60)
    base = "/tmp";
  snprintf(e->dir, sizeof e->dir, "%s/geolocd-it-XXXXXX", base);
  if (!mkdtemp(e->dir))
    GL_FAIL("mkdtemp %s: %s", e->dir, strerror(errno));
  g_env = e;
  snprintf(e->conf_path, sizeof e->conf_path, "%s/geolocd.conf", e->dir);
  snprintf(e->log_path, sizeof e->log_path, "%s/daemon.log", e->dir);
  snprintf(e->unix_path, sizeof e->unix_path, "%s/g.sock", e->dir);
  snprintf(e->unix_addr, sizeof e->unix_addr, "unix:%s", e->unix_path);
  pick_ports(e);
  signal(SIGPIPE, SIG_IGN);
}

void gl_test_env_fini(struct gl_test_env *e) {
  if (e->pid > 0)
    GL_FAIL("internal: env_fini with the daemon running");
  /* GL_TEST_KEEP=1 keeps the temp dir (config, certificates, daemon log). */
  const char *keep = getenv("GL_TEST_KEEP");
  if (keep && keep[0] && strcmp(keep, "0") != 0)
    gl_test_logf("kept %s", e->dir);
  else
    rm_tree(e->dir);
  g_env = NULL;
}

void gl_test_conf_defaults(struct gl_test_conf *c) {
  memset(c, 0, sizeof *c);
  c->log_level = "info";
  c->max_clients = 256;
  c->max_message_bytes = 65536;
  c->handshake_timeout_ms = 5000;
  c->idle_timeout_ms = 60000;
  c->drain_timeout_ms = 5000;
  c->listen_tcp = true;
}

void gl_test_write_conf_to(struct gl_test_env *e, const struct gl_test_conf *c, const char *path) {
  char tmp[400];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *f = fopen(tmp, "w");
  if (!f)
    GL_FAIL("fopen %s: %s", tmp, strerror(errno));
  fprintf(f,
          "; written by the geolocd integration tests\n"
          "[daemon]\n"
          "log_level = %s\n"
          "max_clients = %u\n"
          "max_message_bytes = %u\n"
          "handshake_timeout_ms = %u\n"
          "idle_timeout_ms = %u\n"
          "drain_timeout_ms = %u\n",
          c->log_level ? c->log_level : "info", c->max_clients, c->max_message_bytes,
          c->handshake_timeout_ms, c->idle_timeout_ms, c->drain_timeout_ms);
  if (c->listen_tcp || c->listen_unix || c->listen_tls || c->allow_remote_plaintext) {
    fprintf(f, "\n[listen]\n");
    if (c->listen_tcp)
      fprintf(f, "tcp = %s\n", c->tcp_value ? c->tcp_value : e->tcp_addr);
    if (c->listen_unix)
      fprintf(f, "unix = %s\n", e->unix_path);
    if (c->listen_tls)
      fprintf(f, "tls = %s\n", e->tls_addr);
    if (c->allow_remote_plaintext)
      fprintf(f, "allow_remote_plaintext = true\n");
  }
  if (c->listen_tls || c->tls_section) {
    fprintf(f,
            "\n[tls]\n"
            "cert = %s\n"
            "key = %s\n"
            "ca = %s\n"
            "require_client_cert = %s\n",
            c->tls_cert ? c->tls_cert : e->server_crt, c->tls_key ? c->tls_key : e->server_key,
            c->tls_ca ? c->tls_ca : e->ca_a, c->client_cert_optional ? "false" : "true");
  }
  if (c->extra)
    fprintf(f, "\n%s\n", c->extra);
  if (fclose(f) != 0)
    GL_FAIL("write %s: %s", tmp, strerror(errno));
  if (rename(tmp, path) != 0)
    GL_FAIL("rename %s: %s", tmp, strerror(errno));
}

void gl_test_write_conf(struct gl_test_env *e, const struct gl_test_conf *c) {
  gl_test_write_conf_to(e, c, e->conf_path);
  e->conf = *c;
}

/* ---- certificates ----------------------------------------------------------- */

#if GL_HAVE_TLS
enum cert_kind { CERT_CA, CERT_SERVER, CERT_CLIENT };

static void ssl_fail(const char *file, int line, const char *what) {
  char buf[256] = "";
  unsigned long e = ERR_get_error();
  if (e)
    ERR_error_string_n(e, buf, sizeof buf);
  ERR_clear_error();
  gl_test_failf(file, line, "OpenSSL: %s: %s", what, buf);
}
#define SSL_CHECK(cond, what)                                                                      \
  do {                                                                                             \
    if (!(cond))                                                                                   \
      ssl_fail(__FILE__, __LINE__, (what));                                                        \
  } while (0)

static EVP_PKEY *gen_key(void) {
  EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
  SSL_CHECK(k, "EC P-256 key generation");
  return k;
}

static void add_ext(X509 *cert, X509 *issuer, int nid, const char *value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
  X509_EXTENSION *ex = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
  SSL_CHECK(ex, value);
  SSL_CHECK(X509_add_ext(cert, ex, -1) == 1, "X509_add_ext");
  X509_EXTENSION_free(ex);
}

/* issuer == NULL: self-signed CA. */
static X509 *make_cert(EVP_PKEY *key, const char *cn, enum cert_kind kind, X509 *issuer,
                       EVP_PKEY *issuer_key) {
  X509 *x = X509_new();
  SSL_CHECK(x, "X509_new");
  SSL_CHECK(X509_set_version(x, 2) == 1, "X509_set_version");
  /* A random serial: two certificates from one CA never share one. */
  BIGNUM *bn = BN_new();
  SSL_CHECK(bn && BN_rand(bn, 63, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) == 1, "BN_rand");
  SSL_CHECK(BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)), "serial");
  BN_free(bn);
  SSL_CHECK(X509_gmtime_adj(X509_getm_notBefore(x), -3600), "notBefore");
  SSL_CHECK(X509_gmtime_adj(X509_getm_notAfter(x), 2L * 24 * 3600), "notAfter");
  SSL_CHECK(X509_set_pubkey(x, key) == 1, "X509_set_pubkey");
  X509_NAME *name = X509_get_subject_name(x);
  SSL_CHECK(X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
                                       (const unsigned char *)"geolocd integration tests", -1, -1,
                                       0) == 1,
            "subject O");
  SSL_CHECK(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1,
                                       0) == 1,
            "subject CN");
  X509 *iss = issuer ? issuer : x;
  SSL_CHECK(X509_set_issuer_name(x, X509_get_subject_name(iss)) == 1, "issuer");
  add_ext(x, iss, NID_subject_key_identifier, "hash");
  if (issuer)
    add_ext(x, iss, NID_authority_key_identifier, "keyid:always");
  switch (kind) {
  case CERT_CA:
    add_ext(x, iss, NID_basic_constraints, "critical,CA:TRUE");
    add_ext(x, iss, NID_key_usage, "critical,keyCertSign,cRLSign");
    break;
  case CERT_SERVER:
    add_ext(x, iss, NID_basic_constraints, "critical,CA:FALSE");
    add_ext(x, iss, NID_key_usage, "critical,digitalSignature");
    add_ext(x, iss, NID_ext_key_usage, "serverAuth");
    add_ext(x, iss, NID_subject_alt_name, "IP:127.0.0.1,DNS:localhost");
    break;
  case CERT_CLIENT:
    add_ext(x, iss, NID_basic_constraints, "critical,CA:FALSE");
    add_ext(x, iss, NID_key_usage, "critical,digitalSignature");
    add_ext(x, iss, NID_ext_key_usage, "clientAuth");
    break;
  }
  SSL_CHECK(X509_sign(x, issuer_key ? issuer_key : key, EVP_sha256()) > 0, "X509_sign");
  return x;
}

static void write_cert(const char *dir, const char *name, X509 *x) {
  char path[400];
  snprintf(path, sizeof path, "%s/%s.crt", dir, name);
  FILE *f = fopen(path, "w");
  if (!f)
    GL_FAIL("fopen %s: %s", path, strerror(errno));
  SSL_CHECK(PEM_write_X509(f, x) == 1, "PEM_write_X509");
  if (fclose(f) != 0)
    GL_FAIL("write %s", path);
}

static void write_key(const char *dir, const char *name, EVP_PKEY *k) {
  char path[400];
  snprintf(path, sizeof path, "%s/%s.key", dir, name);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0)
    GL_FAIL("open %s: %s", path, strerror(errno));
  FILE *f = fdopen(fd, "w");
  if (!f)
    GL_FAIL("fdopen %s", path);
  SSL_CHECK(PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL) == 1, "PEM_write_PrivateKey");
  if (fclose(f) != 0)
    GL_FAIL("write %s", path);
}

static void issue(const char *dir, const char *name, const char *cn, enum cert_kind kind, X509 *ca,
                  EVP_PKEY *ca_key) {
  EVP_PKEY *k = gen_key();
  X509 *x = make_cert(k, cn, kind, ca, ca_key);
  write_cert(dir, name, x);
  write_key(dir, name, k);
  X509_free(x);
  EVP_PKEY_free(k);
}

int gl_test_certs(const char *dir) {
  EVP_PKEY *ka = gen_key(), *kb = gen_key();
  X509 *ca_a = make_cert(ka, "geolocd test CA A", CERT_CA, NULL, NULL);
  X509 *ca_b = make_cert(kb, "geolocd test CA B", CERT_CA, NULL, NULL);
  write_cert(dir, "ca-a", ca_a);
  write_key(dir, "ca-a", ka);
  write_cert(dir, "ca-b", ca_b);
  write_key(dir, "ca-b", kb);
  issue(dir, "server", "localhost", CERT_SERVER, ca_a, ka);
  issue(dir, "client", "client-a", CERT_CLIENT, ca_a, ka);
  issue(dir, "client-b", "client-b", CERT_CLIENT, ca_b, kb);
  X509_free(ca_a);
  X509_free(ca_b);
  EVP_PKEY_free(ka);
  EVP_PKEY_free(kb);
  return 0;
}

void gl_test_new_server_cert(const char *dir, const char *name) {
  char path[400];
  snprintf(path, sizeof path, "%s/ca-a.crt", dir);
  FILE *f = fopen(path, "r");
  if (!f)
    GL_FAIL("fopen %s: %s", path, strerror(errno));
  X509 *ca = PEM_read_X509(f, NULL, NULL, NULL);
  fclose(f);
  SSL_CHECK(ca, "read CA A certificate");
  snprintf(path, sizeof path, "%s/ca-a.key", dir);
  f = fopen(path, "r");
  if (!f)
    GL_FAIL("fopen %s: %s", path, strerror(errno));
  EVP_PKEY *k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
  fclose(f);
  SSL_CHECK(k, "read CA A key");
  issue(dir, name, "localhost", CERT_SERVER, ca, k);
  X509_free(ca);
  EVP_PKEY_free(k);
}
#else
int gl_test_certs(const char *dir) {
  (void)dir;
  return -1;
}

void gl_test_new_server_cert(const char *dir, const char *name) {
  (void)dir;
  (void)name;
  GL_FAIL("TLS support is not built in");
}
#endif

void gl_test_env_certs(struct gl_test_env *e) {
  snprintf(e->ca_a, sizeof e->ca_a, "%s/ca-a.crt", e->dir);
  snprintf(e->ca_b, sizeof e->ca_b, "%s/ca-b.crt", e->dir);
  snprintf(e->server_crt, sizeof e->server_crt, "%s/server.crt", e->dir);
  snprintf(e->server_key, sizeof e->server_key, "%s/server.key", e->dir);
  snprintf(e->client_crt, sizeof e->client_crt, "%s/client.crt", e->dir);
  snprintf(e->client_key, sizeof e->client_key, "%s/client.key", e->dir);
  snprintf(e->client_b_crt, sizeof e->client_b_crt, "%s/client-b.crt", e->dir);
  snprintf(e->client_b_key, sizeof e->client_b_key, "%s/client-b.key", e->dir);
  if (gl_test_certs(e->dir) != 0)
    GL_FAIL("cannot generate certificates: TLS support is not built in");
  e->have_certs = true;
}

/* ---- processes ------------------------------------------------------------- */

static const char *const k_env_strip[] = {
    "NOTIFY_SOCKET=", "WATCHDOG_USEC=",  "WATCHDOG_PID=",   "LISTEN_FDS=",
    "LISTEN_PID=",    "LISTEN_FDNAMES=", "JOURNAL_STREAM=", NULL,
};

static bool env_stripped(const char *kv) {
  for (size_t i = 0; k_env_strip[i]; i++)
    if (strncmp(kv, k_env_strip[i], strlen(k_env_strip[i])) == 0)
      return true;
  return false;
}

pid_t gl_test_spawn(const struct gl_test_spawn *s) {
  size_t n_env = 0, n_add = 0;
  while (environ[n_env])
    n_env++;
  while (s->env_add && s->env_add[n_add])
    n_add++;
  char **envp = calloc(n_env + n_add + 2, sizeof *envp);
  if (!envp)
    GL_FAIL("out of memory");
  size_t k = 0;
  for (size_t i = 0; i < n_env; i++)
    if (!env_stripped(environ[i]))
      envp[k++] = environ[i];
  for (size_t i = 0; i < n_add; i++)
    envp[k++] = (char *)s->env_add[i];
  /* Filled in by the child, which alone knows its pid. */
  char listen_pid[40] = "LISTEN_PID=";
  if (s->set_listen_pid)
    envp[k++] = listen_pid;
  envp[k] = NULL;

  const char *err_path = s->stderr_path;
  const char *out_path = s->stdout_path ? s->stdout_path : s->stderr_path;
  int errfd = open(err_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (errfd < 0)
    GL_FAIL("open %s: %s", err_path, strerror(errno));
  int outfd = open(out_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (outfd < 0)
    GL_FAIL("open %s: %s", out_path, strerror(errno));
  int nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (nullfd < 0)
    GL_FAIL("open /dev/null: %s", strerror(errno));

  fflush(stdout);
  fflush(stderr);
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0)
    GL_FAIL("fork: %s", strerror(errno));
  if (pid == 0) {
    /* Child: only async-signal-safe calls from here on. If the test dies
     * (a crash, a sanitizer report), the daemon must not outlive it. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
      _exit(126);
    if (s->set_listen_pid) {
      char digits[24];
      int nd = 0;
      for (unsigned long v = (unsigned long)getpid(); v; v /= 10)
        digits[nd++] = (char)('0' + v % 10);
      char *p = listen_pid + strlen("LISTEN_PID=");
      while (nd > 0)
        *p++ = digits[--nd];
      *p = '\0';
    }
    int hi[8];
    for (int i = 0; i < s->n_pass_fds && i < 8; i++) {
      hi[i] = fcntl(s->pass_fds[i], F_DUPFD_CLOEXEC, 100);
      if (hi[i] < 0)
        _exit(126);
    }
    if (dup2(nullfd, 0) < 0 || dup2(outfd, 1) < 0 || dup2(errfd, 2) < 0)
      _exit(126);
    for (int i = 0; i < s->n_pass_fds && i < 8; i++)
      if (dup2(hi[i], 3 + i) < 0) /* dup2 clears FD_CLOEXEC on the copy */
        _exit(126);
    int first = 3 + s->n_pass_fds;
#ifdef SYS_close_range
    if (syscall(SYS_close_range, (unsigned)first, ~0u, 0u) != 0)
#endif
      for (int fd = first; fd < 4096; fd++)
        close(fd);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; sig++)
      sigaction(sig, &sa, NULL);
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    execve(s->argv[0], (char *const *)s->argv, envp);
    _exit(127);
  }
  close(errfd);
  close(outfd);
  close(nullfd);
  free(envp);
  return pid;
}

int gl_test_wait_pid(pid_t pid, int timeout_ms, int *status) {
  uint64_t deadline = gl_test_mono_ms() + (uint64_t)timeout_ms;
  for (;;) {
    int st = 0;
    pid_t r = waitpid(pid, &st, WNOHANG);
    if (r == pid) {
      *status = st;
      return 0;
    }
    if (r < 0 && errno != EINTR)
      GL_FAIL("waitpid %d: %s", (int)pid, strerror(errno));
    if (gl_test_mono_ms() >= deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &st, 0);
      *status = st;
      return -1;
    }
    gl_test_sleep_ms(5);
  }
}

static bool probe_tcp(uint16_t port) {
  int fd = gl_test_raw_connect(port, 0);
  if (fd < 0)
    return false;
  close(fd);
  return true;
}

static bool probe_unix(const char *path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return false;
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  size_t n = strlen(path);
  if (n >= sizeof sa.sun_path) {
    close(fd);
    return false;
  }
  memcpy(sa.sun_path, path, n + 1);
  bool ok = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
  close(fd);
  return ok;
}

/* Returns 0 when ready, 1 when the daemon exited first (*status set). */
static int start_once(struct gl_test_env *e, const struct gl_test_start_opts *o, int *status) {
  const char *argv[] = {e->daemon, "--config", e->conf_path, NULL};
  struct gl_test_spawn s = {
      .argv = argv,
      .stderr_path = e->log_path,
      .env_add = o ? o->env_add : NULL,
      .pass_fds = o ? o->pass_fds : NULL,
      .n_pass_fds = o ? o->n_pass_fds : 0,
      .set_listen_pid = o ? o->set_listen_pid : false,
  };
  if (e->pid > 0)
    GL_FAIL("internal: daemon already running");
  e->pid = gl_test_spawn(&s);
  gl_test_logf("started geolocd pid %d (config %s)", (int)e->pid, e->conf_path);
  if (o && o->no_wait_ready)
    return 0;
  uint64_t deadline = gl_test_mono_ms() + 15000;
  for (;;) {
    int st = 0;
    if (waitpid(e->pid, &st, WNOHANG) == e->pid) {
      e->pid = 0;
      *status = st;
      return 1;
    }
    bool ok = true;
    if (e->conf.listen_tcp && !probe_tcp(e->tcp_port))
      ok = false;
    if (ok && e->conf.listen_tls && !probe_tcp(e->tls_port))
      ok = false;
    if (ok && e->conf.listen_unix && !probe_unix(e->unix_path))
      ok = false;
    if (ok)
      return 0;
    if (gl_test_mono_ms() >= deadline)
      GL_FAIL("daemon did not accept connections within 15 s");
    gl_test_sleep_ms(20);
  }
}

void gl_test_start(struct gl_test_env *e, const struct gl_test_start_opts *o) {
  int st = 0;
  if (start_once(e, o, &st) != 0)
    GL_FAIL("daemon exited during startup: %s", gl_test_status_str(st));
}

static bool contains_ci(const char *hay, const char *needle) {
  size_t n = strlen(needle);
  for (; *hay; hay++)
    if (strncasecmp(hay, needle, n) == 0)
      return true;
  return false;
}

void gl_test_start_conf(struct gl_test_env *e, struct gl_test_conf *c) {
  for (int attempt = 0;; attempt++) {
    gl_test_write_conf(e, c);
    int st = 0;
    long off = gl_test_log_size(e);
    if (start_once(e, NULL, &st) == 0)
      return;
    /* A port picked free may have been taken before the daemon bound it
     * (another test's client, say): retry with new ports, but only then. */
    char *log = gl_test_read_file(e->log_path);
    bool in_use = log && (long)strlen(log) > off && contains_ci(log + off, "in use");
    free(log);
    if (!in_use || attempt >= 3)
      GL_FAIL("daemon exited during startup: %s", gl_test_status_str(st));
    gl_test_logf("port taken meanwhile, retrying with new ports");
    pick_ports(e);
  }
}

void gl_test_signal(struct gl_test_env *e, int sig) {
  if (e->pid <= 0)
    GL_FAIL("internal: no daemon to signal");
  if (kill(e->pid, sig) != 0)
    GL_FAIL("kill(%d, %d): %s", (int)e->pid, sig, strerror(errno));
}

void gl_test_expect_exit0(struct gl_test_env *e, int timeout_ms) {
  int st = 0;
  pid_t pid = e->pid;
  if (pid <= 0)
    GL_FAIL("internal: no daemon to wait for");
  int r = gl_test_wait_pid(pid, timeout_ms, &st);
  e->pid = 0;
  if (r != 0)
    GL_FAIL("daemon did not exit within %d ms of SIGTERM (killed with SIGKILL)", timeout_ms);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
    GL_FAIL("daemon should exit 0 after SIGTERM, got %s", gl_test_status_str(st));
  gl_test_logf("daemon exited 0 after SIGTERM");
}

void gl_test_stop(struct gl_test_env *e) {
  gl_test_signal(e, SIGTERM);
  gl_test_expect_exit0(e, 20000);
}

void gl_test_check_alive(struct gl_test_env *e) {
  int st = 0;
  if (e->pid <= 0)
    GL_FAIL("daemon not running");
  if (waitpid(e->pid, &st, WNOHANG) == e->pid) {
    e->pid = 0;
    GL_FAIL("daemon exited unexpectedly: %s", gl_test_status_str(st));
  }
}

long gl_test_log_size(struct gl_test_env *e) {
  struct stat st;
  if (stat(e->log_path, &st) != 0)
    return 0;
  return (long)st.st_size;
}

bool gl_test_log_wait(struct gl_test_env *e, long offset, const char *text, int timeout_ms) {
  uint64_t deadline = gl_test_mono_ms() + (uint64_t)timeout_ms;
  for (;;) {
    char *log = gl_test_read_file(e->log_path);
    bool found = log && (long)strlen(log) > offset && strstr(log + offset, text);
    free(log);
    if (found)
      return true;
    if (gl_test_mono_ms() >= deadline)
      return false;
    gl_test_sleep_ms(20);
  }
}

/* ---- clients ---------------------------------------------------------------- */

int gl_test_try_connect(struct gl_test_env *e, const char *address, bool tls,
                        enum gl_test_cert cert, struct gl_client **out, char *err, size_t errlen) {
  struct gl_client_opts o = {
      .address = address,
      .tls = tls,
      .timeout_ms = GL_TEST_WAIT_MS,
  };
  if (tls) {
    o.tls_ca = e->ca_a;
    if (cert == GL_TEST_CERT_A) {
      o.tls_cert = e->client_crt;
      o.tls_key = e->client_key;
    } else if (cert == GL_TEST_CERT_B) {
      o.tls_cert = e->client_b_crt;
      o.tls_key = e->client_b_key;
    }
  }
  *out = NULL;
  err[0] = '\0';
  return gl_client_connect(&o, out, err, errlen);
}

struct gl_client *gl_test_connect_addr(struct gl_test_env *e, const char *address, bool tls,
                                       enum gl_test_cert cert) {
  struct gl_client *c = NULL;
  char err[256];
  int rc = gl_test_try_connect(e, address, tls, cert, &c, err, sizeof err);
  if (rc != 0)
    GL_FAIL("connect %s%s: %s (%s)", tls ? "tls " : "", address, gl_err_name(rc), err);
  if (!c)
    GL_FAIL("connect %s returned 0 without a client", address);
  return c;
}

struct gl_client *gl_test_connect_plain(struct gl_test_env *e) {
  return gl_test_connect_addr(e, e->tcp_addr, false, GL_TEST_CERT_NONE);
}

struct gl_client *gl_test_connect_unix(struct gl_test_env *e) {
  return gl_test_connect_addr(e, e->unix_addr, false, GL_TEST_CERT_NONE);
}

struct gl_client *gl_test_connect_tls(struct gl_test_env *e, enum gl_test_cert cert) {
  return gl_test_connect_addr(e, e->tls_addr, true, cert);
}

gl_client_msg *gl_test_msg_hello(struct gl_test_cmsg *b, uint32_t version, const char *name,
                                 const char *map) {
  gl_client_msg m = GEOLOC__V1__CLIENT_MESSAGE__INIT;
  Geoloc__V1__Hello h = GEOLOC__V1__HELLO__INIT;
  b->m = m;
  b->hello = h;
  b->hello.has_protocol_version = 1;
  b->hello.protocol_version = version;
  b->hello.client_name = (char *)name;
  b->hello.map = (char *)map;
  b->m.msg_case = GEOLOC__V1__CLIENT_MESSAGE__MSG_HELLO;
  b->m.hello = &b->hello;
  return &b->m;
}

gl_client_msg *gl_test_msg_ping(struct gl_test_cmsg *b, uint64_t nonce, uint64_t send_time_us) {
  gl_client_msg m = GEOLOC__V1__CLIENT_MESSAGE__INIT;
  Geoloc__V1__Ping p = GEOLOC__V1__PING__INIT;
  b->m = m;
  b->ping = p;
  b->ping.has_nonce = 1;
  b->ping.nonce = nonce;
  b->ping.has_send_time_us = 1;
  b->ping.send_time_us = send_time_us;
  b->m.msg_case = GEOLOC__V1__CLIENT_MESSAGE__MSG_PING;
  b->m.ping = &b->ping;
  return &b->m;
}

gl_client_msg *gl_test_msg_frame(struct gl_test_cmsg *b, uint64_t frame_id) {
  gl_client_msg m = GEOLOC__V1__CLIENT_MESSAGE__INIT;
  Geoloc__V1__Frame f = GEOLOC__V1__FRAME__INIT;
  b->m = m;
  b->frame = f;
  for (size_t i = 0; i < sizeof b->image; i++)
    b->image[i] = (uint8_t)(i * 7u + (unsigned)frame_id);
  b->frame.has_frame_id = 1;
  b->frame.frame_id = frame_id;
  b->frame.has_capture_time_us = 1;
  b->frame.capture_time_us = gl_test_now_us();
  b->frame.has_image = 1;
  b->frame.image.data = b->image;
  b->frame.image.len = sizeof b->image;
  b->frame.has_format = 1;
  b->frame.format = GEOLOC__V1__IMAGE_FORMAT__JPEG;
  b->m.msg_case = GEOLOC__V1__CLIENT_MESSAGE__MSG_FRAME;
  b->m.frame = &b->frame;
  return &b->m;
}

uint8_t *gl_test_encode(const gl_client_msg *m, size_t *len) {
  size_t n = gl_wire_encoded_size(&m->base);
  uint8_t *buf = malloc(n);
  if (!buf)
    GL_FAIL("out of memory");
  size_t w = gl_wire_encode(&m->base, buf);
  if (w != n)
    GL_FAIL("gl_wire_encode wrote %zu bytes, gl_wire_encoded_size said %zu", w, n);
  *len = n;
  return buf;
}

const char *gl_test_code_name(int code) {
  const ProtobufCEnumValue *v =
      protobuf_c_enum_descriptor_get_value(&geoloc__v1__error__code__descriptor, code);
  return v ? v->name : "?";
}

const char *gl_test_msg_str(const gl_server_msg *m) {
  static __thread char buf[512];
  if (!m)
    return "(none)";
  switch (m->msg_case) {
  case GEOLOC__V1__SERVER_MESSAGE__MSG_WELCOME: {
    const Geoloc__V1__Welcome *w = m->welcome;
    snprintf(buf, sizeof buf,
             "Welcome{protocol_version=%s%u server=\"%s\" map=\"%s\" n_maps=%zu "
             "max_message_bytes=%s%u session_id=%s%llu}",
             w->has_protocol_version ? "" : "(unset)", w->protocol_version,
             w->server ? w->server : "(null)", w->map ? w->map : "(null)", w->n_maps,
             w->has_max_message_bytes ? "" : "(unset)", w->max_message_bytes,
             w->has_session_id ? "" : "(unset)", (unsigned long long)w->session_id);
    break;
  }
  case GEOLOC__V1__SERVER_MESSAGE__MSG_ERROR: {
    const Geoloc__V1__Error *er = m->error;
    snprintf(buf, sizeof buf, "Error{code=%s%s message=\"%s\" frame_id=%s%llu fatal=%s%s}",
             er->has_code ? "" : "(unset)", gl_test_code_name((int)er->code),
             er->message ? er->message : "(null)", er->has_frame_id ? "" : "(unset)",
             (unsigned long long)er->frame_id, er->has_fatal ? "" : "(unset)",
             er->fatal ? "true" : "false");
    break;
  }
  case GEOLOC__V1__SERVER_MESSAGE__MSG_PONG: {
    const Geoloc__V1__Pong *p = m->pong;
    snprintf(buf, sizeof buf, "Pong{nonce=%s%llu send_time_us=%s%llu server_time_us=%s%llu}",
             p->has_nonce ? "" : "(unset)", (unsigned long long)p->nonce,
             p->has_send_time_us ? "" : "(unset)", (unsigned long long)p->send_time_us,
             p->has_server_time_us ? "" : "(unset)", (unsigned long long)p->server_time_us);
    break;
  }
  case GEOLOC__V1__SERVER_MESSAGE__MSG_ESTIMATE:
    snprintf(buf, sizeof buf, "Estimate{frame_id=%llu}", (unsigned long long)m->estimate->frame_id);
    break;
  default:
    snprintf(buf, sizeof buf, "ServerMessage{msg_case=%d}", (int)m->msg_case);
    break;
  }
  return buf;
}

void gl_test_send(struct gl_client *c, const gl_client_msg *m, const char *what) {
  int rc = gl_client_send(c, m);
  if (rc != 0)
    GL_FAIL("%s: send: %s (%s)", what, gl_err_name(rc), gl_client_last_error(c));
}

void gl_test_send_raw(struct gl_client *c, const void *data, size_t len, const char *what) {
  int rc = gl_client_send_raw(c, data, len);
  if (rc != 0)
    GL_FAIL("%s: send_raw: %s (%s)", what, gl_err_name(rc), gl_client_last_error(c));
}

gl_server_msg *gl_test_recv(struct gl_client *c, int timeout_ms, const char *what) {
  gl_server_msg *m = NULL;
  int rc = gl_client_recv(c, timeout_ms, &m);
  if (rc != 0)
    GL_FAIL("%s: recv: %s (%s)", what, gl_err_name(rc), gl_client_last_error(c));
  if (!m)
    GL_FAIL("%s: recv returned 0 without a message", what);
  return m;
}

gl_server_msg *gl_test_hello_ok(struct gl_client *c, const char *what) {
  struct gl_test_cmsg b;
  gl_test_send(c, gl_test_msg_hello(&b, GL_PROTOCOL_VERSION, "geolocd-it", NULL), what);
  gl_server_msg *m = gl_test_recv(c, GL_TEST_WAIT_MS, what);
  if (m->msg_case != GEOLOC__V1__SERVER_MESSAGE__MSG_WELCOME)
    GL_FAIL("%s: Hello: expected Welcome, got %s", what, gl_test_msg_str(m));
  return m;
}

void gl_test_expect_pong(struct gl_client *c, uint64_t nonce, uint64_t send_time_us,
                         const char *what) {
  gl_server_msg *m = gl_test_recv(c, GL_TEST_WAIT_MS, what);
  if (m->msg_case != GEOLOC__V1__SERVER_MESSAGE__MSG_PONG)
    GL_FAIL("%s: expected Pong{nonce=%llu}, got %s", what, (unsigned long long)nonce,
            gl_test_msg_str(m));
  const Geoloc__V1__Pong *p = m->pong;
  if (!p->has_nonce || p->nonce != nonce || !p->has_send_time_us ||
      p->send_time_us != send_time_us || !p->has_server_time_us || p->server_time_us == 0)
    GL_FAIL("%s: expected Pong{nonce=%llu send_time_us=%llu server_time_us>0}, got %s", what,
            (unsigned long long)nonce, (unsigned long long)send_time_us, gl_test_msg_str(m));
  gl_wire_free(m);
}

void gl_test_ping_ok(struct gl_client *c, uint64_t nonce, const char *what) {
  struct gl_test_cmsg b;
  uint64_t t = gl_test_now_us();
  gl_test_send(c, gl_test_msg_ping(&b, nonce, t), what);
  gl_test_expect_pong(c, nonce, t, what);
}

void gl_test_expect_error(struct gl_client *c, int code, bool fatal, int64_t frame_id,
                          const char *what) {
  gl_server_msg *m = gl_test_recv(c, GL_TEST_WAIT_MS, what);
  bool ok = m->msg_case == GEOLOC__V1__SERVER_MESSAGE__MSG_ERROR;
  if (ok) {
    const Geoloc__V1__Error *er = m->error;
    bool is_fatal = er->has_fatal && er->fatal;
    ok = er->has_code && (int)er->code == code && is_fatal == fatal;
    if (frame_id >= 0)
      ok = ok && er->has_frame_id && er->frame_id == (uint64_t)frame_id;
  }
  if (!ok) {
    char fid[32] = "any";
    if (frame_id >= 0)
      snprintf(fid, sizeof fid, "%lld", (long long)frame_id);
    GL_FAIL("%s: expected Error{code=%s frame_id=%s fatal=%s}, got %s", what,
            gl_test_code_name(code), fid, fatal ? "true" : "false", gl_test_msg_str(m));
  }
  gl_wire_free(m);
}

void gl_test_expect_eof(struct gl_client *c, const char *what) {
  gl_server_msg *m = NULL;
  int rc = gl_client_recv(c, GL_TEST_WAIT_MS, &m);
  if (rc == 0)
    GL_FAIL("%s: expected EOF (GL_ECLOSED), got %s", what, gl_test_msg_str(m));
  if (rc != GL_ECLOSED)
    GL_FAIL("%s: expected EOF (GL_ECLOSED), got %s (%s)", what, gl_err_name(rc),
            gl_client_last_error(c));
}

int gl_test_raw_connect(uint16_t port, int rcvbuf) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  if (rcvbuf > 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

#if GL_HAVE_TLS
static void set_timeouts(int fd) {
  struct timeval tv = {.tv_sec = GL_TEST_WAIT_MS / 1000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

int gl_test_tls_peer_is(uint16_t port, const char *ca, const char *cert, const char *key,
                        const char *expect_crt) {
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  SSL_CHECK(ctx, "SSL_CTX_new");
  SSL_CHECK(SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) == 1, "min version");
  SSL_CHECK(SSL_CTX_load_verify_locations(ctx, ca, NULL) == 1, ca);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
  if (cert) {
    SSL_CHECK(SSL_CTX_use_certificate_chain_file(ctx, cert) == 1, cert);
    SSL_CHECK(SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) == 1, key);
  }
  FILE *f = fopen(expect_crt, "r");
  if (!f)
    GL_FAIL("fopen %s: %s", expect_crt, strerror(errno));
  X509 *want = PEM_read_X509(f, NULL, NULL, NULL);
  fclose(f);
  SSL_CHECK(want, expect_crt);
  int result = -1;
  int fd = gl_test_raw_connect(port, 0);
  if (fd >= 0) {
    set_timeouts(fd);
    SSL *ssl = SSL_new(ctx);
    SSL_CHECK(ssl, "SSL_new");
    SSL_CHECK(X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), "127.0.0.1") == 1, "set ip");
    SSL_set_fd(ssl, fd);
    if (SSL_connect(ssl) == 1) {
      X509 *peer = SSL_get1_peer_certificate(ssl);
      result = peer && X509_cmp(peer, want) == 0 ? 1 : 0;
      X509_free(peer);
      SSL_shutdown(ssl);
    }
    ERR_clear_error();
    SSL_free(ssl);
    close(fd);
  }
  X509_free(want);
  SSL_CTX_free(ctx);
  return result;
}

/* A handshake at protocol versions lo..hi offering only the TLS 1.2-style
 * cipher list ciphers: 0 when it succeeds, -1 when it fails. */
static int gl__tls_try(uint16_t port, const char *ca, const char *cert, const char *key, int lo,
                       int hi, const char *ciphers) {
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  SSL_CHECK(ctx, "SSL_CTX_new");
  /* Level 0 lets this client offer old versions and weak suites at all, so
   * any refusal is the server's. */
  SSL_CTX_set_security_level(ctx, 0);
  SSL_CHECK(SSL_CTX_set_cipher_list(ctx, ciphers) == 1, ciphers);
  SSL_CTX_set_min_proto_version(ctx, lo);
  SSL_CTX_set_max_proto_version(ctx, hi);
  SSL_CHECK(SSL_CTX_load_verify_locations(ctx, ca, NULL) == 1, ca);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
  if (cert) {
    SSL_CHECK(SSL_CTX_use_certificate_chain_file(ctx, cert) == 1, cert);
    SSL_CHECK(SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) == 1, key);
  }
  int result = -1;
  int fd = gl_test_raw_connect(port, 0);
  if (fd >= 0) {
    set_timeouts(fd);
    SSL *ssl = SSL_new(ctx);
    SSL_CHECK(ssl, "SSL_new");
    SSL_set_fd(ssl, fd);
    if (SSL_connect(ssl) == 1) {
      result = 0;
      SSL_shutdown(ssl);
    }
    ERR_clear_error();
    SSL_free(ssl);
    close(fd);
  }
  SSL_CTX_free(ctx);
  return result;
}

int gl_test_tls_old_version(uint16_t port, const char *ca, const char *cert, const char *key) {
  return gl__tls_try(port, ca, cert, key, TLS1_VERSION, TLS1_1_VERSION, "DEFAULT:@SECLEVEL=0");
}

int gl_test_tls12_cipher(uint16_t port, const char *ca, const char *cert, const char *key,
                         const char *cipher) {
  return gl__tls_try(port, ca, cert, key, TLS1_2_VERSION, TLS1_2_VERSION, cipher);
}
#endif
