/* Config loading from real INI files, and the address helpers it uses.
 *
 * Every error case checks the return code and that the message names the
 * file, the line (as ":N:") and the key, since that message is all an
 * operator gets. */
#include <arpa/inet.h>
#include <ctype.h>
#include <grp.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <unistd.h>

#include "core/addr.h"
#include "core/auth.h"
#include "core/config.h"
#include "core/err.h"
#include "core/log.h"
#include "gl_build_config.h"
#include "test.h"

static char tmpdir[256];
static int file_seq;

static void make_tmpdir(void) {
  const char *dir = getenv("TMPDIR");

  snprintf(tmpdir, sizeof tmpdir, "%s/gl-test-config-XXXXXX", dir && *dir ? dir : "/tmp");
  if (!mkdtemp(tmpdir)) {
    perror("mkdtemp");
    exit(1);
  }
}

/* Writes content to a new file in tmpdir; returns its path (static buffer,
 * valid until the next call). */
static const char *write_conf(const char *content) {
  static char path[512];

  snprintf(path, sizeof path, "%s/t%03d.conf", tmpdir, ++file_seq);
  FILE *f = fopen(path, "w");
  if (!f || fputs(content, f) < 0 || fclose(f) != 0) {
    perror(path);
    exit(1);
  }
  return path;
}

static void remove_tmpdir(void) {
  char path[512];

  for (int i = 1; i <= file_seq; i++) {
    snprintf(path, sizeof path, "%s/t%03d.conf", tmpdir, i);
    unlink(path);
  }
  rmdir(tmpdir);
}

static bool is_ident(char c) {
  return isalnum((unsigned char)c) || c == '_';
}

/* True when word occurs in text with no identifier character on either side. */
static bool has_word(const char *text, const char *word) {
  size_t n = strlen(word);
  for (const char *p = text; (p = strstr(p, word)) != NULL; p++) {
    if ((p == text || !is_ident(p[-1])) && !is_ident(p[n]))
      return true;
  }
  return false;
}

/* True when msg names key of section. The key "key" needs more than the word,
 * since "missing required key" contains it anyway. */
static bool names_key(const char *msg, const char *section, const char *key) {
  char buf[128];

  snprintf(buf, sizeof buf, "[%s] %s", section, key);
  if (strstr(msg, buf))
    return true;
  snprintf(buf, sizeof buf, "%s.%s", section, key);
  if (strstr(msg, buf))
    return true;
  snprintf(buf, sizeof buf, "'%s'", key);
  if (strstr(msg, buf))
    return true;
  snprintf(buf, sizeof buf, "\"%s\"", key);
  if (strstr(msg, buf))
    return true;
  return strcmp(key, "key") != 0 && has_word(msg, key);
}

static bool cfg_is_empty(const struct gl_config *cfg) {
  return !cfg->path && !cfg->tcp && !cfg->unix_path && !cfg->unix_group && !cfg->tls &&
         !cfg->tls_cert && !cfg->tls_key && !cfg->tls_ca && !cfg->model_path &&
         !cfg->metrics_listen && cfg->n_maps == 0;
}

/* Loads content and expects failure with code rc, a message that names the
 * file, line `line` (or `alt_line` when not 0) and key of section (unless
 * key is NULL: a syntax error has no key). */
#define EXPECT_ERR(content, rc, line, alt_line, section, key)                                  \
  expect_err(__LINE__, (content), (rc), (line), (alt_line), (section), (key))

static void expect_err(int src_line, const char *content, int rc, int line, int alt_line,
                       const char *section, const char *key) {
  int before = gl_test_failures;
  const char *path = write_conf(content);
  struct gl_config cfg;
  char err[512] = "";
  char want[32], alt[32];

  memset(&cfg, 0x5a, sizeof cfg); /* "left empty" must not depend on the caller */
  int got = gl_config_load(path, &cfg, err, sizeof err);
  CHECK_EQ_INT(got, rc);
  if (got == 0) {
    gl_config_fini(&cfg);
  } else {
    CHECK(cfg_is_empty(&cfg));
    gl_config_fini(&cfg); /* releasing an empty config is harmless */
  }
  CHECK_CONTAINS(err, path);
  snprintf(want, sizeof want, ":%d:", line);
  snprintf(alt, sizeof alt, ":%d:", alt_line);
  if (!CHECK(strstr(err, want) || (alt_line && strstr(err, alt))))
    fprintf(stderr, "  message should name line %d%s%s\n", line, alt_line ? " or " : "",
            alt_line ? alt + 1 : "");
  if (key && !CHECK(names_key(err, section, key)))
    fprintf(stderr, "  message should name [%s] %s\n", section, key);
  if (gl_test_failures != before)
    fprintf(stderr, "  (case at %s:%d, message \"%s\", file:\n%s)\n", __FILE__, src_line, err,
            content);
}

/* Loads content and expects success. */
static bool load_ok(int src_line, const char *content, struct gl_config *cfg) {
  const char *path = write_conf(content);
  char err[512] = "";

  int rc = gl_config_load(path, cfg, err, sizeof err);
  if (!CHECK_EQ_INT(rc, 0)) {
    fprintf(stderr, "  (case at %s:%d, message \"%s\", file:\n%s)\n", __FILE__, src_line, err,
            content);
    return false;
  }
  return true;
}
#define LOAD_OK(content, cfg) load_ok(__LINE__, (content), (cfg))

/* ---- valid files ---------------------------------------------------------- */

static void test_full(void) {
  struct gl_config cfg;
  const char *text = "# every key, none at its default\n"
                     "[daemon]\n"
                     "log_level = debug\n"
                     "max_clients=17\n"
                     "max_message_bytes = 2048 ; inline comment\n"
                     "handshake_timeout_ms = 250\n"
                     "idle_timeout_ms = 0\n"
                     "drain_timeout_ms = 1234\n"
                     "\n"
                     "; another comment\n"
                     "[listen]\n"
                     "tcp = 0.0.0.0:7701\n"
                     "unix = /tmp/gl test/geolocd.sock\n"
                     "tls = [::]:7443\n"
                     "allow_remote_plaintext = yes\n"
                     "[tls]\n"
                     "cert = /etc/geoloc/server.crt\n"
                     "key = /etc/geoloc/server.key\n"
                     "ca = /etc/geoloc/clients-ca.crt\n"
                     "require_client_cert = on\n";

  if (!LOAD_OK(text, &cfg))
    return;
  CHECK(cfg.path != NULL && strstr(cfg.path, ".conf") != NULL);
  CHECK_EQ_INT(cfg.log_level, GL_LOG_DEBUG);
  CHECK_EQ_INT(cfg.max_clients, 17);
  CHECK_EQ_INT(cfg.max_message_bytes, 2048);
  CHECK_EQ_INT(cfg.handshake_timeout_ms, 250);
  CHECK_EQ_INT(cfg.idle_timeout_ms, 0);
  CHECK_EQ_INT(cfg.drain_timeout_ms, 1234);
  CHECK_EQ_STR(cfg.tcp, "0.0.0.0:7701");
  CHECK_EQ_STR(cfg.unix_path, "/tmp/gl test/geolocd.sock");
  CHECK_EQ_STR(cfg.tls, "[::]:7443");
  CHECK(cfg.allow_remote_plaintext);
  CHECK_EQ_STR(cfg.tls_cert, "/etc/geoloc/server.crt");
  CHECK_EQ_STR(cfg.tls_key, "/etc/geoloc/server.key");
  CHECK_EQ_STR(cfg.tls_ca, "/etc/geoloc/clients-ca.crt");
  CHECK(cfg.require_client_cert);
  gl_config_fini(&cfg);

  /* The other direction of every bool and the remaining log levels. */
  text = "[daemon]\n"
         "log_level = err\n"
         "idle_timeout_ms = 100\n"
         "[listen]\n"
         "tls = 127.0.0.1:7443\n"
         "allow_remote_plaintext = off\n"
         "[tls]\n"
         "cert = c.pem\n"
         "key = k.pem\n"
         "require_client_cert = no\n";
  if (!LOAD_OK(text, &cfg))
    return;
  CHECK_EQ_INT(cfg.log_level, GL_LOG_ERR);
  CHECK_EQ_INT(cfg.idle_timeout_ms, 100);
  CHECK(cfg.tcp == NULL);
  CHECK(cfg.unix_path == NULL);
  CHECK_EQ_STR(cfg.tls, "127.0.0.1:7443");
  CHECK(!cfg.allow_remote_plaintext);
  CHECK_EQ_STR(cfg.tls_cert, "c.pem");
  CHECK_EQ_STR(cfg.tls_key, "k.pem");
  CHECK(cfg.tls_ca == NULL);
  CHECK(!cfg.require_client_cert);
  gl_config_fini(&cfg);
}

static void check_defaults(const struct gl_config *cfg) {
  CHECK_EQ_INT(cfg->log_level, GL_LOG_INFO);
  CHECK_EQ_INT(cfg->max_clients, 256);
  CHECK_EQ_INT(cfg->max_message_bytes, 16777216);
  CHECK_EQ_INT(cfg->handshake_timeout_ms, 5000);
  CHECK_EQ_INT(cfg->idle_timeout_ms, 60000);
  CHECK_EQ_INT(cfg->drain_timeout_ms, 10000);
  CHECK(cfg->tcp == NULL);
  CHECK(cfg->unix_path == NULL);
  CHECK(cfg->tls == NULL);
  CHECK(!cfg->allow_remote_plaintext);
  CHECK(cfg->tls_cert == NULL);
  CHECK(cfg->tls_key == NULL);
  CHECK(cfg->tls_ca == NULL);
  CHECK(cfg->require_client_cert);
  CHECK(cfg->fine);
  CHECK_EQ_INT(cfg->fine_top_k, 50);
  CHECK_EQ_INT(cfg->fine_full_scan_cells, 0);
  CHECK_EQ_INT(cfg->search_threads, 0);
}

static void test_defaults(void) {
  struct gl_config cfg;

  memset(&cfg, 0x5a, sizeof cfg);
  gl_config_defaults(&cfg);
  check_defaults(&cfg);

  /* An empty file, and one with only comments and empty sections. */
  if (LOAD_OK("", &cfg)) {
    check_defaults(&cfg);
    gl_config_fini(&cfg);
  }
  if (LOAD_OK("# nothing\n; still nothing\n[daemon]\n\n[listen]\n[tls]\n", &cfg)) {
    check_defaults(&cfg);
    gl_config_fini(&cfg);
  }

  /* Keys given leave the others at their defaults. */
  if (LOAD_OK("[daemon]\nmax_clients = 3\n[listen]\nunix = /run/x.sock\n", &cfg)) {
    CHECK_EQ_INT(cfg.max_clients, 3);
    CHECK_EQ_INT(cfg.log_level, GL_LOG_INFO);
    CHECK_EQ_INT(cfg.max_message_bytes, 16777216);
    CHECK_EQ_INT(cfg.handshake_timeout_ms, 5000);
    CHECK_EQ_INT(cfg.idle_timeout_ms, 60000);
    CHECK_EQ_INT(cfg.drain_timeout_ms, 10000);
    CHECK_EQ_STR(cfg.unix_path, "/run/x.sock");
    CHECK(cfg.tcp == NULL && cfg.tls == NULL);
    gl_config_fini(&cfg);
  }

  /* An empty listener value means no listener. */
  if (LOAD_OK("[listen]\ntcp =\nunix =\ntls =\n", &cfg)) {
    CHECK(cfg.tcp == NULL);
    CHECK(cfg.unix_path == NULL);
    CHECK(cfg.tls == NULL);
    gl_config_fini(&cfg);
  }
}

static void test_bools(void) {
  static const struct {
    const char *text;
    bool value;
  } spellings[] = {{"true", true}, {"false", false}, {"yes", true}, {"no", false},
                   {"on", true},   {"off", false},   {"1", true},   {"0", false}};
  char text[256];
  struct gl_config cfg;

  for (size_t i = 0; i < sizeof spellings / sizeof spellings[0]; i++) {
    snprintf(text, sizeof text, "[listen]\nallow_remote_plaintext = %s\n[tls]\nrequire_client_cert = %s\n",
             spellings[i].text, spellings[i].text);
    if (LOAD_OK(text, &cfg)) {
      CHECK(cfg.allow_remote_plaintext == spellings[i].value);
      CHECK(cfg.require_client_cert == spellings[i].value);
      gl_config_fini(&cfg);
    }
  }

  const char *bad[] = {"maybe", "2", "", "truee", "-1", "y e s"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    snprintf(text, sizeof text, "[listen]\nunix = /x\nallow_remote_plaintext = %s\n", bad[i]);
    EXPECT_ERR(text, GL_ECONFIG, 3, 0, "listen", "allow_remote_plaintext");
    snprintf(text, sizeof text, "[tls]\n\nrequire_client_cert = %s\n", bad[i]);
    EXPECT_ERR(text, GL_ECONFIG, 3, 0, "tls", "require_client_cert");
  }
}

static void test_log_level(void) {
  static const struct {
    const char *text;
    int value;
  } names[] = {{"err", GL_LOG_ERR},
               {"warning", GL_LOG_WARNING},
               {"notice", GL_LOG_NOTICE},
               {"info", GL_LOG_INFO},
               {"debug", GL_LOG_DEBUG}};
  char text[256];
  struct gl_config cfg;

  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    snprintf(text, sizeof text, "[daemon]\nlog_level = %s\n", names[i].text);
    if (LOAD_OK(text, &cfg)) {
      CHECK_EQ_INT(cfg.log_level, names[i].value);
      gl_config_fini(&cfg);
    }
  }
  const char *bad[] = {"verbose", "trace", "", "inf"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    snprintf(text, sizeof text, "# c\n[daemon]\nmax_clients = 9\nlog_level = %s\n", bad[i]);
    EXPECT_ERR(text, GL_ECONFIG, 4, 0, "daemon", "log_level");
  }
}

/* ---- integers ------------------------------------------------------------- */

struct range {
  const char *key;
  unsigned long min, max;
  size_t offset;
};

#define RANGE(key, field, min, max) {key, min, max, offsetof(struct gl_config, field)}
static const struct range ranges[] = {
    RANGE("max_clients", max_clients, 1, 65535),
    RANGE("max_message_bytes", max_message_bytes, 1024, 268435456),
    RANGE("handshake_timeout_ms", handshake_timeout_ms, 100, 600000),
    RANGE("idle_timeout_ms", idle_timeout_ms, 100, 86400000),
    RANGE("drain_timeout_ms", drain_timeout_ms, 0, 600000),
};

static uint32_t field_u32(const struct gl_config *cfg, size_t offset) {
  uint32_t v;
  memcpy(&v, (const char *)cfg + offset, sizeof v);
  return v;
}

static void test_integers(void) {
  char text[256];
  struct gl_config cfg;

  for (size_t i = 0; i < sizeof ranges / sizeof ranges[0]; i++) {
    const struct range *r = &ranges[i];
    unsigned long good[] = {r->min, r->max, (r->min + r->max) / 2};

    for (size_t j = 0; j < 3; j++) {
      snprintf(text, sizeof text, "[daemon]\n%s = %lu\n", r->key, good[j]);
      if (LOAD_OK(text, &cfg)) {
        CHECK_EQ_U64(field_u32(&cfg, r->offset), good[j]);
        gl_config_fini(&cfg);
      }
    }

    /* Out of range, including values that wrap when parsed into 32 bits. */
    unsigned long long out[] = {r->max + 1ULL, 4294967296ULL + r->min, 4294967295ULL,
                                r->min > 0 ? r->min - 1ULL : r->max + 1000ULL};
    for (size_t j = 0; j < sizeof out / sizeof out[0]; j++) {
      snprintf(text, sizeof text, "[daemon]\nlog_level = info\n\n%s = %llu\n", r->key, out[j]);
      EXPECT_ERR(text, GL_ECONFIG, 4, 0, "daemon", r->key);
    }

    /* Not integers at all. */
    const char *bad[] = {"abc", "12abc", "", "-1", "1.5", "99999999999999999999", "1 2", "-0x10"};
    for (size_t j = 0; j < sizeof bad / sizeof bad[0]; j++) {
      snprintf(text, sizeof text, "[daemon]\n%s = %s\n", r->key, bad[j]);
      EXPECT_ERR(text, GL_ECONFIG, 2, 0, "daemon", r->key);
    }
  }

  /* idle_timeout_ms: 0 means none, 1..99 are refused. */
  if (LOAD_OK("[daemon]\nidle_timeout_ms = 0\n", &cfg)) {
    CHECK_EQ_INT(cfg.idle_timeout_ms, 0);
    gl_config_fini(&cfg);
  }
  EXPECT_ERR("[daemon]\nidle_timeout_ms = 1\n", GL_ECONFIG, 2, 0, "daemon", "idle_timeout_ms");
  EXPECT_ERR("[daemon]\nidle_timeout_ms = 99\n", GL_ECONFIG, 2, 0, "daemon", "idle_timeout_ms");
  /* drain_timeout_ms = 0 (cut at once) is allowed, the others start above 0. */
  EXPECT_ERR("[daemon]\nmax_clients = 0\n", GL_ECONFIG, 2, 0, "daemon", "max_clients");
  EXPECT_ERR("[daemon]\nhandshake_timeout_ms = 0\n", GL_ECONFIG, 2, 0, "daemon",
             "handshake_timeout_ms");
}

/* [listen] unix_mode (octal permission bits) and unix_group (an existing group). */
static void test_unix_socket_keys(void) {
  struct gl_config cfg;
  char text[256];
  if (LOAD_OK("[listen]\nunix = /x\n", &cfg)) {
    CHECK_EQ_INT(cfg.unix_mode, 0660);
    CHECK(cfg.unix_group == NULL);
    gl_config_fini(&cfg);
  }
  static const struct {
    const char *text;
    uint32_t mode;
  } good[] = {{"0660", 0660}, {"640", 0640},  {"0", 0},
              {"0777", 0777}, {"0600", 0600}, {"00660", 0660}};
  for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
    snprintf(text, sizeof text, "[listen]\nunix = /x\nunix_mode = %s\n", good[i].text);
    if (LOAD_OK(text, &cfg)) {
      CHECK_EQ_INT(cfg.unix_mode, good[i].mode);
      gl_config_fini(&cfg);
    }
  }
  const char *bad[] = {"", "999", "0800", "01777", "1000", "-1", "rw", "0x1b6", "6 6"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    snprintf(text, sizeof text, "[listen]\nunix = /x\nunix_mode = %s\n", bad[i]);
    EXPECT_ERR(text, GL_ECONFIG, 3, 0, "listen", "unix_mode");
  }

  gid_t gid;
  char err[128];
  struct group *g = getgrgid(getgid());
  if (CHECK(g != NULL)) {
    char name[64];
    snprintf(name, sizeof name, "%s", g->gr_name);
    snprintf(text, sizeof text, "[listen]\nunix = /x\nunix_group = %s\n", name);
    if (LOAD_OK(text, &cfg)) {
      CHECK_EQ_STR(cfg.unix_group, name);
      gl_config_fini(&cfg);
    }
    CHECK_EQ_INT(gl_config_group(name, &gid, err, sizeof err), 0);
    CHECK_EQ_INT(gid, getgid());
  }
  EXPECT_ERR("[listen]\nunix = /x\nunix_group = no-such-group-geoloc\n", GL_ECONFIG, 3, 0, "listen",
             "unix_group");
  CHECK_EQ_INT(gl_config_group("no-such-group-geoloc", &gid, err, sizeof err), GL_ENOENT);
  CHECK_CONTAINS(err, "no-such-group-geoloc");
}

/* ---- structure errors --------------------------------------------------------- */

static void test_unknown(void) {
  EXPECT_ERR("[daemon]\n"
             "log_level = info\n"
             "foo = 1\n",
             GL_ECONFIG, 3, 0, "daemon", "foo");
  EXPECT_ERR("[listen]\n"
             "unix = /x\n"
             "\n"
             "tcp6 = [::1]:1\n",
             GL_ECONFIG, 4, 0, "listen", "tcp6");
  EXPECT_ERR("[tls]\n"
             "cert = a\n"
             "key = b\n"
             "password = c\n",
             GL_ECONFIG, 4, 0, "tls", "password");
  /* A [daemon] key in the wrong section is unknown there. */
  EXPECT_ERR("[listen]\n"
             "max_clients = 5\n",
             GL_ECONFIG, 2, 0, "listen", "max_clients");
  /* Unknown section: the line of the header or of its first key. */
  EXPECT_ERR("[daemon]\n"
             "max_clients = 5\n"
             "\n"
             "[bogus]\n"
             "x = 1\n",
             GL_ECONFIG, 4, 5, "bogus", "bogus");
  /* A key before any section. */
  EXPECT_ERR("max_clients = 5\n"
             "[daemon]\n",
             GL_ECONFIG, 1, 0, "", "max_clients");
  /* A line that is not key = value. */
  EXPECT_ERR("[daemon]\n"
             "max_clients = 5\n"
             "this is not ini\n",
             GL_ECONFIG, 3, 0, NULL, NULL);
}

static void test_addresses(void) {
  struct gl_config cfg;
  const char *bad[] = {"localhost:7700", "127.0.0.1", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:70000",
                       "[::1]", "::1:7700", "300.1.1.1:80"};
  char text[256];

  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    snprintf(text, sizeof text, "[listen]\nunix = /x\ntcp = %s\n", bad[i]);
    EXPECT_ERR(text, GL_ECONFIG, 3, 0, "listen", "tcp");
    snprintf(text, sizeof text,
             "[listen]\ntls = %s\n[tls]\ncert = c\nkey = k\nrequire_client_cert = false\n", bad[i]);
    EXPECT_ERR(text, GL_ECONFIG, 2, 0, "listen", "tls");
  }
  if (LOAD_OK("[listen]\ntcp = [::1]:7700\n", &cfg)) {
    CHECK_EQ_STR(cfg.tcp, "[::1]:7700");
    gl_config_fini(&cfg);
  }
  if (LOAD_OK("[listen]\ntcp = 127.1.2.3:65535\n", &cfg)) {
    CHECK_EQ_STR(cfg.tcp, "127.1.2.3:65535");
    gl_config_fini(&cfg);
  }
}

static void test_required(void) {
  struct gl_config cfg;

  /* tls without any [tls] section: cert (and key) are missing. */
  EXPECT_ERR("[daemon]\n"
             "log_level = info\n"
             "[listen]\n"
             "tls = 127.0.0.1:7443\n",
             GL_ECONFIG, 4, 0, "tls", "cert");
  /* cert given, key missing. */
  EXPECT_ERR("[listen]\n"
             "tls = 127.0.0.1:7443\n"
             "[tls]\n"
             "cert = /c.pem\n"
             "require_client_cert = false\n",
             GL_ECONFIG, 2, 0, "tls", "key");
  /* key given, cert missing. */
  EXPECT_ERR("[listen]\n"
             "tls = 127.0.0.1:7443\n"
             "[tls]\n"
             "key = /k.pem\n"
             "require_client_cert = false\n",
             GL_ECONFIG, 2, 0, "tls", "cert");
  /* require_client_cert (explicit) without ca. */
  EXPECT_ERR("[listen]\n"
             "tls = 127.0.0.1:7443\n"
             "[tls]\n"
             "cert = /c.pem\n"
             "key = /k.pem\n"
             "require_client_cert = true\n",
             GL_ECONFIG, 2, 6, "tls", "ca");
  /* require_client_cert defaults to true, so ca is still needed. */
  EXPECT_ERR("[listen]\n"
             "tls = 127.0.0.1:7443\n"
             "[tls]\n"
             "cert = /c.pem\n"
             "key = /k.pem\n",
             GL_ECONFIG, 2, 0, "tls", "ca");
  /* An empty cert counts as missing. */
  EXPECT_ERR("[listen]\n"
             "tls = 127.0.0.1:7443\n"
             "[tls]\n"
             "cert =\n"
             "key = /k.pem\n"
             "ca = /ca.pem\n",
             GL_ECONFIG, 2, 0, "tls", "cert");

  /* Without a tls listener the [tls] keys are not required. */
  if (LOAD_OK("[listen]\nunix = /x\n[tls]\nrequire_client_cert = true\n", &cfg))
    gl_config_fini(&cfg);
  /* Complete TLS settings, and TLS on a non-loopback address is fine. */
  if (LOAD_OK("[listen]\ntls = 0.0.0.0:7443\n[tls]\ncert = /c\nkey = /k\nca = /ca\n", &cfg)) {
    CHECK_EQ_STR(cfg.tls, "0.0.0.0:7443");
    CHECK_EQ_STR(cfg.tls_ca, "/ca");
    CHECK(cfg.require_client_cert);
    CHECK(!cfg.allow_remote_plaintext);
    gl_config_fini(&cfg);
  }
}

static void test_remote_plaintext(void) {
  struct gl_config cfg;
  const char *remote[] = {"0.0.0.0:7700", "[::]:7700", "10.1.2.3:7700", "128.0.0.1:7700",
                          "[2001:db8::1]:7700"};
  char text[256];

  for (size_t i = 0; i < sizeof remote / sizeof remote[0]; i++) {
    snprintf(text, sizeof text, "[daemon]\nmax_clients = 4\n[listen]\ntcp = %s\n", remote[i]);
    EXPECT_ERR(text, GL_ECONFIG, 4, 0, "listen", "tcp");
    /* The message says how to allow it. */
    const char *path = write_conf(text);
    char err[512] = "";
    if (gl_config_load(path, &cfg, err, sizeof err) == 0)
      gl_config_fini(&cfg);
    CHECK_CONTAINS(err, "allow_remote_plaintext");

    snprintf(text, sizeof text, "[listen]\ntcp = %s\nallow_remote_plaintext = false\n", remote[i]);
    EXPECT_ERR(text, GL_ECONFIG, 2, 0, "listen", "tcp");

    /* Allowed, whether the flag comes after the address or before. */
    snprintf(text, sizeof text, "[listen]\ntcp = %s\nallow_remote_plaintext = true\n", remote[i]);
    if (LOAD_OK(text, &cfg)) {
      CHECK_EQ_STR(cfg.tcp, remote[i]);
      CHECK(cfg.allow_remote_plaintext);
      gl_config_fini(&cfg);
    }
    snprintf(text, sizeof text, "[listen]\nallow_remote_plaintext = 1\ntcp = %s\n", remote[i]);
    if (LOAD_OK(text, &cfg)) {
      CHECK_EQ_STR(cfg.tcp, remote[i]);
      gl_config_fini(&cfg);
    }
  }

  /* Loopback plaintext needs no permission. */
  const char *local[] = {"127.0.0.1:7700", "127.5.5.5:7700", "[::1]:7700"};
  for (size_t i = 0; i < sizeof local / sizeof local[0]; i++) {
    snprintf(text, sizeof text, "[listen]\ntcp = %s\n", local[i]);
    if (LOAD_OK(text, &cfg)) {
      CHECK_EQ_STR(cfg.tcp, local[i]);
      gl_config_fini(&cfg);
    }
  }
}

static void test_missing_file(void) {
  char path[512];
  struct gl_config cfg;
  char err[512] = "";

  snprintf(path, sizeof path, "%s/does-not-exist.conf", tmpdir);
  memset(&cfg, 0x5a, sizeof cfg);
  CHECK_EQ_INT(gl_config_load(path, &cfg, err, sizeof err), GL_ENOENT);
  CHECK(cfg_is_empty(&cfg));
  CHECK_CONTAINS(err, path);
  gl_config_fini(&cfg);
}

/* An error after valid keys leaves nothing behind in cfg. */
static void test_error_leaves_empty(void) {
  EXPECT_ERR("[listen]\n"
             "tcp = 127.0.0.1:1\n"
             "unix = /x\n"
             "[tls]\n"
             "cert = /c\n"
             "key = /k\n"
             "ca = /ca\n"
             "[daemon]\n"
             "max_clients = many\n",
             GL_ECONFIG, 9, 0, "daemon", "max_clients");
}

/* A value longer than libinih's line buffer (200 bytes in Debian's build):
 * either it is read whole, or the error names the line it is on. It must
 * never be cut into pieces that are then parsed as lines of their own. */
static void test_long_line(void) {
  char value[301];
  char text[512];
  struct gl_config cfg;
  char err[512] = "";

  for (size_t i = 0; i < 300; i++)
    value[i] = i % 10 == 0 ? '/' : (char)('a' + i % 26);
  value[300] = '\0';
  snprintf(text, sizeof text, "[listen]\nunix = /run/x.sock\n[tls]\ncert = %s\n", value);
  const char *path = write_conf(text);
  int rc = gl_config_load(path, &cfg, err, sizeof err);
  if (rc == 0) {
    CHECK_EQ_STR(cfg.tls_cert, value);
    gl_config_fini(&cfg);
  } else {
    CHECK_EQ_INT(rc, GL_ECONFIG);
    if (!CHECK_CONTAINS(err, ":4:"))
      fprintf(stderr, "  a 300-byte value on line 4 of a 4-line file\n");
  }
}

/* A small err buffer is filled, truncated, and still NUL-terminated. */
static void test_small_err_buffer(void) {
  const char *path = write_conf("[daemon]\nmax_clients = abc\n");
  struct gl_config cfg;
  char err[16];

  memset(err, 'x', sizeof err);
  CHECK_EQ_INT(gl_config_load(path, &cfg, err, 8), GL_ECONFIG);
  CHECK(memchr(err, '\0', 8) != NULL);
  CHECK(err[8] == 'x');
}

/* ---- addresses ------------------------------------------------------------- */

static void test_addr(void) {
  struct sockaddr_storage ss;
  char buf[64];

  memset(&ss, 0, sizeof ss);
  if (CHECK_EQ_INT(gl_addr_parse("127.0.0.1:7700", &ss), 0)) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)&ss;
    CHECK_EQ_INT(ss.ss_family, AF_INET);
    CHECK_EQ_INT(ntohs(in->sin_port), 7700);
    CHECK_EQ_U64(ntohl(in->sin_addr.s_addr), 0x7f000001u);
    CHECK(gl_addr_is_loopback(&ss));
    CHECK_EQ_STR(gl_addr_format(&ss, buf, sizeof buf), "127.0.0.1:7700");
  }

  if (CHECK_EQ_INT(gl_addr_parse("[::1]:7443", &ss), 0)) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&ss;
    CHECK_EQ_INT(ss.ss_family, AF_INET6);
    CHECK_EQ_INT(ntohs(in6->sin6_port), 7443);
    CHECK(IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr));
    CHECK(gl_addr_is_loopback(&ss));
    CHECK_EQ_STR(gl_addr_format(&ss, buf, sizeof buf), "[::1]:7443");
  }

  if (CHECK_EQ_INT(gl_addr_parse("[2001:db8::42]:1", &ss), 0)) {
    CHECK_EQ_INT(ss.ss_family, AF_INET6);
    CHECK(!gl_addr_is_loopback(&ss));
    CHECK_EQ_STR(gl_addr_format(&ss, buf, sizeof buf), "[2001:db8::42]:1");
  }

  if (CHECK_EQ_INT(gl_addr_parse("10.0.0.1:65535", &ss), 0)) {
    CHECK(!gl_addr_is_loopback(&ss));
    CHECK_EQ_STR(gl_addr_format(&ss, buf, sizeof buf), "10.0.0.1:65535");
  }

  /* Loopback is all of 127.0.0.0/8 and ::1, nothing else. */
  static const struct {
    const char *text;
    bool loopback;
  } lb[] = {{"127.5.5.5:1", true},    {"127.255.255.255:1", true}, {"127.0.0.0:1", true},
            {"126.255.255.255:1", false}, {"128.0.0.1:1", false},  {"0.0.0.0:1", false},
            {"[::1]:1", true},        {"[::]:1", false},           {"[::2]:1", false},
            {"[fe80::1]:1", false}};
  for (size_t i = 0; i < sizeof lb / sizeof lb[0]; i++) {
    if (CHECK_EQ_INT(gl_addr_parse(lb[i].text, &ss), 0)) {
      if (!CHECK(gl_addr_is_loopback(&ss) == lb[i].loopback))
        fprintf(stderr, "  address %s\n", lb[i].text);
      /* Formatting gives back the canonical text. */
      CHECK_EQ_STR(gl_addr_format(&ss, buf, sizeof buf), lb[i].text);
    }
  }

  const char *bad[] = {"",
                       "127.0.0.1",
                       "127.0.0.1:",
                       "127.0.0.1:0",
                       "127.0.0.1:70000",
                       "127.0.0.1:65536",
                       "127.0.0.1:-1",
                       "127.0.0.1:80x",
                       "127.0.0.1:+80", /* the port is digits only */
                       "127.0.0.1: 80",
                       "[::1]:+80",
                       "127.0.0.1:99999999999999999999",
                       ":80",
                       "localhost:80",
                       "example.com:443",
                       "1.2.3:80",
                       "256.1.1.1:80",
                       "::1:80",
                       "[::1]",
                       "[::1]:",
                       "[::1]:0",
                       "[::1]:70000",
                       "[::1]7700",
                       "[127.0.0.1]:80", /* brackets are for IPv6 */
                       "[::1:80",
                       "[]:80",
                       "[localhost]:80"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    if (!CHECK_EQ_INT(gl_addr_parse(bad[i], &ss), GL_EADDR))
      fprintf(stderr, "  input \"%s\"\n", bad[i]);
  }
}

/* ---- serving: [model], [map NAME], [search], [metrics] ------------------- */

static void test_serving(void) {
  struct gl_config cfg;

  if (LOAD_OK("[daemon]\n"
              "max_frames_in_flight = 8\n"
              "queue_depth = 100\n"
              "stale_after_ms = 0\n"
              "default_top_k = 3\n"
              "[model]\n"
              "path = /m/model.safetensors\n"
              "backend = cpu\n"
              "max_batch = 16\n"
              "batch_window_us = 500\n"
              "threads = 2\n"
              "[map north]\n"
              "path = /maps/north.map\n"
              "[map south-2020.v1]\n"
              "path = /maps/south.map\n"
              "[search]\n"
              "tiles = 32\n"
              "fine_full_scan_cells = 6000\n"
              "threads = 4\n"
              "[metrics]\n"
              "listen = 127.0.0.1:9100\n",
              &cfg)) {
    CHECK_EQ_INT(cfg.max_frames_in_flight, 8);
    CHECK_EQ_INT(cfg.queue_depth, 100);
    CHECK_EQ_INT(cfg.stale_after_ms, 0);
    CHECK_EQ_INT(cfg.default_top_k, 3);
    CHECK_EQ_STR(cfg.model_path, "/m/model.safetensors");
    CHECK_EQ_INT(cfg.backend, GL_CONFIG_BACKEND_CPU);
    CHECK_EQ_INT(cfg.max_batch, 16);
    CHECK_EQ_INT(cfg.batch_window_us, 500);
    CHECK_EQ_INT(cfg.model_threads, 2);
    CHECK_EQ_INT(cfg.n_maps, 2);
    CHECK_EQ_STR(cfg.maps[0].name, "north");
    CHECK_EQ_STR(cfg.maps[0].path, "/maps/north.map");
    CHECK_EQ_STR(cfg.maps[1].name, "south-2020.v1");
    CHECK_EQ_INT(cfg.maps[1].line, 14);
    CHECK_EQ_INT(cfg.search_tiles, 32);
    CHECK_EQ_INT(cfg.fine_full_scan_cells, 6000);
    CHECK_EQ_INT(cfg.search_threads, 4);
    CHECK_EQ_INT(cfg.fine_top_k, 50); /* the others at their defaults */
    CHECK_EQ_STR(cfg.metrics_listen, "127.0.0.1:9100");
    gl_config_fini(&cfg);
  }
  /* No [model]: the daemon serves the protocol without localization. */
  if (LOAD_OK("[listen]\ntcp = 127.0.0.1:7700\n", &cfg)) {
    CHECK(cfg.model_path == NULL);
    CHECK_EQ_INT(cfg.backend, GL_CONFIG_BACKEND_AUTO);
    CHECK_EQ_INT(cfg.max_batch, 0); /* by backend */
    CHECK_EQ_INT(cfg.n_maps, 0);
    gl_config_fini(&cfg);
  }
  EXPECT_ERR("[model]\npath = /m\nbackend = tpu\n", GL_ECONFIG, 3, 0, "model", "backend");
  EXPECT_ERR("[search]\nfine_full_scan_cells = 1000001\n", GL_ECONFIG, 2, 0, "search",
             "fine_full_scan_cells");
  EXPECT_ERR("[search]\nthreads = 65\n", GL_ECONFIG, 2, 0, "search", "threads");
  /* precision was a GPU setting that nothing read: gone, and refused. */
  EXPECT_ERR("[model]\nprecision = fp16\npath = /m\n", GL_ECONFIG, 2, 0, "model", "precision");
  EXPECT_ERR("[daemon]\n[model]\nmax_batch = 4\n", GL_ECONFIG, 2, 0, "model", "path");
  EXPECT_ERR("[model]\npath = /m\nmax_batch = 1025\n", GL_ECONFIG, 3, 0, "model", "max_batch");
  EXPECT_ERR("[model]\npath = /m\n\n[map a]\n", GL_ECONFIG, 4, 0, "map a", "path");
  EXPECT_ERR("[map a]\npath = /a.map\n", GL_ECONFIG, 1, 0, "map a", "model");
  EXPECT_ERR("[model]\npath = /m\n[map a]\npath = /a\n[map a]\npath = /b\n", GL_ECONFIG, 5, 0,
             "map a", "duplicate");
  EXPECT_ERR("[model]\npath = /m\n[map a]\npath = /a\npath = /b\n", GL_ECONFIG, 5, 0, "map a",
             "path");
  EXPECT_ERR("[model]\npath = /m\n[map a]\nfile = /a\n", GL_ECONFIG, 4, 0, "map a", "file");
  EXPECT_ERR("[model]\npath = /m\n[map a/b]\npath = /a\n", GL_ECONFIG, 3, 0, "map a/b",
             "name");
  /* An empty section is checked too, not only sections with keys. */
  EXPECT_ERR("[daemon]\nmax_clients = 4\n[deamon]\n", GL_ECONFIG, 3, 0, "deamon", "deamon");
  EXPECT_ERR("[metrics]\nlisten = 0.0.0.0:9100\n", GL_ECONFIG, 2, 0, "metrics", "listen");
  EXPECT_ERR("[metrics]\nlisten = localhost:9100\n", GL_ECONFIG, 2, 0, "metrics", "listen");
  if (LOAD_OK("[listen]\nallow_remote_plaintext = true\n[metrics]\nlisten = 0.0.0.0:9100\n",
              &cfg))
    gl_config_fini(&cfg);
}

/* ---- client tokens ([token NAME], core/auth.h) ------------------------------ */

/* SHA-256(bytes 0..15 || "secret"), computed apart (Python's hashlib). */
#define SECRET_HASH                                                                            \
  "sha256:000102030405060708090a0b0c0d0e0f:"                                                   \
  "67557c0d86179c45199f096d85b7aeb2b8b34bf423c403ba517f72bcc5913c4c"

static void test_tokens(void) {
  struct gl_auth_hash h[3];
  char text[GL_AUTH_TEXT_LEN];

  CHECK_EQ_INT(gl_auth_parse(SECRET_HASH, &h[0]), GL_OK);
  gl_auth_format(&h[0], text);
  CHECK_EQ_STR(text, SECRET_HASH);
  /* Malformed: wrong scheme, short or long salt or hash, not hex, trailing. */
  static const char *const bad[] = {
      "",
      "secret",
      "sha1:000102030405060708090a0b0c0d0e0f:"
      "67557c0d86179c45199f096d85b7aeb2b8b34bf423c403ba517f72bcc5913c4c",
      "sha256:000102030405060708090a0b0c0d0e:"
      "67557c0d86179c45199f096d85b7aeb2b8b34bf423c403ba517f72bcc5913c4c",
      "sha256:000102030405060708090a0b0c0d0e0f:"
      "67557c0d86179c45199f096d85b7aeb2b8b34bf423c403ba517f72bcc5913c4",
      "sha256:000102030405060708090a0b0c0d0e0f:"
      "67557c0d86179c45199f096d85b7aeb2b8b34bf423c403ba517f72bcc5913c4c0",
      "sha256:000102030405060708090a0b0c0d0e0g:"
      "67557c0d86179c45199f096d85b7aeb2b8b34bf423c403ba517f72bcc5913c4c",
      "sha256:000102030405060708090a0b0c0d0e0f-"
      "67557c0d86179c45199f096d85b7aeb2b8b34bf423c403ba517f72bcc5913c4c",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    if (!CHECK_EQ_INT(gl_auth_parse(bad[i], &h[1]), GL_EINVAL))
      fprintf(stderr, "  accepted '%s'\n", bad[i]);

#if GL_HAVE_TLS
  /* The known hash, and fresh ones: each entry matches its own token only. */
  CHECK_EQ_INT(gl_auth_find(h, sizeof h[0], 1, "secret"), 0);
  CHECK_EQ_INT(gl_auth_make("alpha", 5, &h[1]), GL_OK);
  CHECK_EQ_INT(gl_auth_make("alpha", 5, &h[2]), GL_OK);
  CHECK(memcmp(h[1].salt, h[2].salt, sizeof h[1].salt) != 0); /* a salt of its own */
  CHECK_EQ_INT(gl_auth_make("beta", 4, &h[2]), GL_OK);
  CHECK_EQ_INT(gl_auth_find(h, sizeof h[0], 3, "alpha"), 1);
  CHECK_EQ_INT(gl_auth_find(h, sizeof h[0], 3, "beta"), 2);
  CHECK_EQ_INT(gl_auth_find(h, sizeof h[0], 3, "secreT"), -1);
  CHECK_EQ_INT(gl_auth_find(h, sizeof h[0], 3, "secret "), -1);
  CHECK_EQ_INT(gl_auth_find(h, sizeof h[0], 3, "alph"), -1);
  CHECK_EQ_INT(gl_auth_find(h, sizeof h[0], 3, ""), -1);
  CHECK_EQ_INT(gl_auth_find(h, sizeof h[0], 3, NULL), -1);
  CHECK_EQ_INT(gl_auth_find(h, sizeof h[0], 0, "secret"), -1);
#endif

  struct gl_config cfg;
  if (LOAD_OK("[model]\npath = /m\n"
              "[token ci]\nhash = " SECRET_HASH "\n"
              "[token ops-1]\nhash = " SECRET_HASH "\nmaps = north, south  x.y\n"
              "[map north]\npath = /n\n[map south]\npath = /s\n[map x.y]\npath = /x\n",
              &cfg)) {
    CHECK_EQ_INT(cfg.n_tokens, 2);
    CHECK_EQ_STR(cfg.tokens[0].name, "ci");
    CHECK_EQ_INT(cfg.tokens[0].n_maps, 0);
    CHECK(gl_config_token_allows(&cfg.tokens[0], "south"));
    CHECK_EQ_STR(cfg.tokens[1].name, "ops-1");
    CHECK_EQ_INT(cfg.tokens[1].line, 5);
    CHECK_EQ_INT(cfg.tokens[1].n_maps, 3);
    CHECK_EQ_STR(cfg.tokens[1].maps[2], "x.y");
    CHECK(gl_config_token_allows(&cfg.tokens[1], "south"));
    CHECK(!gl_config_token_allows(&cfg.tokens[1], "sout"));
    CHECK(!gl_config_token_allows(&cfg.tokens[1], ""));
    CHECK(memcmp(&cfg.tokens[1].hash, &h[0], sizeof h[0]) == 0);
#if GL_HAVE_TLS
    CHECK_EQ_INT(gl_auth_find(&cfg.tokens[0].hash, sizeof cfg.tokens[0], 2, "secret"), 0);
#endif
    gl_config_fini(&cfg);
  }
  EXPECT_ERR("[token a]\nhash = sha256:00:11\n", GL_ECONFIG, 2, 0, "token a", "hash");
  EXPECT_ERR("[token a]\nhash = secret\n", GL_ECONFIG, 2, 0, "token a", "hash");
  EXPECT_ERR("[token a]\nmaps = x\n", GL_ECONFIG, 1, 0, "token a", "hash");
  EXPECT_ERR("[token a]\nhash = " SECRET_HASH "\nhash = " SECRET_HASH "\n", GL_ECONFIG, 3, 0,
             "token a", "hash");
  EXPECT_ERR("[token a]\nhash = " SECRET_HASH "\ntoken = x\n", GL_ECONFIG, 3, 0, "token a",
             "token");
  EXPECT_ERR("[token a]\nhash = " SECRET_HASH "\nmaps = ,\n", GL_ECONFIG, 3, 0, "token a",
             "maps");
  EXPECT_ERR("[token a]\nhash = " SECRET_HASH "\nmaps = a/b\n", GL_ECONFIG, 3, 0, "token a",
             "maps");
  /* A map the file does not define: a typo would refuse its clients. */
  EXPECT_ERR("[token a]\nhash = " SECRET_HASH "\nmaps = nowhere\n", GL_ECONFIG, 1, 0,
             "token a", "maps");
  EXPECT_ERR("[token a]\nhash = " SECRET_HASH "\n[token a]\nhash = " SECRET_HASH "\n",
             GL_ECONFIG, 3, 0, "token a", "duplicate");
  EXPECT_ERR("[token a b]\nhash = " SECRET_HASH "\n", GL_ECONFIG, 1, 0, "token a b", "name");
  /* The error never echoes the value, which may be a pasted token. */
  const char *path = write_conf("[token a]\nhash = hunter2-secret\n");
  char err[512];
  CHECK_EQ_INT(gl_config_load(path, &cfg, err, sizeof err), GL_ECONFIG);
  CHECK(strstr(err, "hunter2") == NULL);
}

int main(void) {
  make_tmpdir();
  RUN(test_full);
  RUN(test_defaults);
  RUN(test_bools);
  RUN(test_log_level);
  RUN(test_integers);
  RUN(test_unix_socket_keys);
  RUN(test_unknown);
  RUN(test_addresses);
  RUN(test_required);
  RUN(test_remote_plaintext);
  RUN(test_missing_file);
  RUN(test_error_leaves_empty);
  RUN(test_small_err_buffer);
  RUN(test_long_line);
  RUN(test_addr);
  RUN(test_serving);
  RUN(test_tokens);
  remove_tmpdir();
  return TEST_END();
}
