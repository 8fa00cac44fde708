#include "core/config.h"

#include <errno.h>
#include <grp.h>
#include <ini.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/addr.h"
#include "core/err.h"
#include "core/log.h"
#include "gl_build_config.h"

enum gl__cfg_type {
  GL__CFG_U32,
  GL__CFG_BOOL,
  GL__CFG_STR,
  GL__CFG_LEVEL,
  GL__CFG_ENUM,
  GL__CFG_MODE, /* file permission bits in octal, 0..0777 */
};

struct gl__cfg_key {
  const char *section;
  const char *name;
  enum gl__cfg_type type;
  size_t off;
  uint32_t min, max;
  bool zero_ok;               /* 0 is allowed besides min..max ("none") */
  const char *const *choices; /* GL__CFG_ENUM: names of values 0, 1, ..., NULL */
};

#define GL__K(sec, key, type, field, min, max, zero_ok) \
  {sec, key, type, offsetof(struct gl_config, field), min, max, zero_ok, NULL}
#define GL__E(sec, key, field, choices) \
  {sec, key, GL__CFG_ENUM, offsetof(struct gl_config, field), 0, 0, false, choices}

static const char *const gl__backends[] = {"auto", "cuda", "cpu", NULL};

/* The one list of keys: loading, defaults and errors all come from it. */
static const struct gl__cfg_key gl__keys[] = {
    GL__K("daemon", "log_level", GL__CFG_LEVEL, log_level, 0, 0, false),
    GL__K("daemon", "max_clients", GL__CFG_U32, max_clients, 1, 65535, false),
    GL__K("daemon", "max_clients_per_address", GL__CFG_U32, max_clients_per_address, 1, 65535,
          true),
    GL__K("daemon", "max_message_bytes", GL__CFG_U32, max_message_bytes, 1024, 268435456, false),
    GL__K("daemon", "handshake_timeout_ms", GL__CFG_U32, handshake_timeout_ms, 100, 600000, false),
    GL__K("daemon", "idle_timeout_ms", GL__CFG_U32, idle_timeout_ms, 100, 86400000, true),
    GL__K("daemon", "drain_timeout_ms", GL__CFG_U32, drain_timeout_ms, 0, 600000, false),
    GL__K("daemon", "stop_delay_ms", GL__CFG_U32, stop_delay_ms, 0, 600000, false),
    GL__K("daemon", "decode_threads", GL__CFG_U32, decode_threads, 0, 64, false),
    GL__K("daemon", "max_frames_in_flight", GL__CFG_U32, max_frames_in_flight, 1, 4096, false),
    GL__K("daemon", "queue_depth", GL__CFG_U32, queue_depth, 1, 65536, false),
    GL__K("daemon", "stale_after_ms", GL__CFG_U32, stale_after_ms, 1, 600000, true),
    GL__K("daemon", "max_decoded_pixels", GL__CFG_U32, max_decoded_pixels, 1024, 268435456, false),
    GL__K("daemon", "default_top_k", GL__CFG_U32, default_top_k, 1, 100, false),
    GL__K("model", "path", GL__CFG_STR, model_path, 0, 0, false),
    GL__E("model", "backend", backend, gl__backends),
    GL__K("model", "max_batch", GL__CFG_U32, max_batch, 0, 1024, false),
    GL__K("model", "batch_window_us", GL__CFG_U32, batch_window_us, 0, 1000000, false),
    GL__K("model", "threads", GL__CFG_U32, model_threads, 0, 256, false),
    GL__K("search", "tiles", GL__CFG_U32, search_tiles, 1, 1024, false),
    GL__K("search", "bandwidth_m", GL__CFG_U32, bandwidth_m, 0, 100000, false),
    GL__K("search", "threads", GL__CFG_U32, search_threads, 1, GL_CONFIG_MAX_SEARCH_THREADS, true),
    GL__K("search", "fine", GL__CFG_BOOL, fine, 0, 0, false),
    GL__K("search", "fine_top_k", GL__CFG_U32, fine_top_k, 1, 1024, false),
    GL__K("search", "fine_radius_cells", GL__CFG_U32, fine_radius_cells, 0, 16, false),
    GL__K("search", "fine_full_scan_cells", GL__CFG_U32, fine_full_scan_cells, 0, 1000000, false),
    GL__K("search", "heading_step_deg", GL__CFG_U32, heading_step_deg, 1, 180, false),
    GL__K("search", "heading_tolerance_deg", GL__CFG_U32, heading_tolerance_deg, 0, 180, false),
    GL__K("track", "enabled", GL__CFG_BOOL, track, 0, 0, false),
    GL__K("track", "max_speed_mps", GL__CFG_U32, track_max_speed_mps, 1, 1000, false),
    GL__K("track", "window_cells", GL__CFG_U32, track_window_cells, 8, 1024, false),
    GL__K("metrics", "listen", GL__CFG_STR, metrics_listen, 0, 0, false),
    GL__K("listen", "tcp", GL__CFG_STR, tcp, 0, 0, false),
    GL__K("listen", "unix", GL__CFG_STR, unix_path, 0, 0, false),
    GL__K("listen", "unix_mode", GL__CFG_MODE, unix_mode, 0, 0777, false),
    GL__K("listen", "unix_group", GL__CFG_STR, unix_group, 0, 0, false),
    GL__K("listen", "tls", GL__CFG_STR, tls, 0, 0, false),
    GL__K("listen", "allow_remote_plaintext", GL__CFG_BOOL, allow_remote_plaintext, 0, 0, false),
    GL__K("tls", "cert", GL__CFG_STR, tls_cert, 0, 0, false),
    GL__K("tls", "key", GL__CFG_STR, tls_key, 0, 0, false),
    GL__K("tls", "ca", GL__CFG_STR, tls_ca, 0, 0, false),
    GL__K("tls", "require_client_cert", GL__CFG_BOOL, require_client_cert, 0, 0, false),
    GL__K("tls", "ciphers", GL__CFG_STR, tls_ciphers, 0, 0, false),
};
#define GL__NKEYS (sizeof gl__keys / sizeof gl__keys[0])

struct gl__cfg_parse {
  struct gl_config *cfg;
  FILE *f;
  int line;                /* line being parsed, counted by the reader */
  int key_line[GL__NKEYS]; /* where each key was set, 0 when absent */
  int model_line;          /* where [model] starts, 0 when absent */
  char *err;
  size_t errlen;
  bool failed;
};

static void gl__cfg_fail(struct gl__cfg_parse *p, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void gl__cfg_fail(struct gl__cfg_parse *p, int line, const char *fmt, ...) {
  if (p->failed)
    return; /* the first error is the one worth reading */
  p->failed = true;
  int n = line > 0 ? snprintf(p->err, p->errlen, "%s:%d: ", p->cfg->path, line)
                   : snprintf(p->err, p->errlen, "%s: ", p->cfg->path);
  if (n < 0 || (size_t)n >= p->errlen)
    return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(p->err + n, p->errlen - (size_t)n, fmt, ap);
  va_end(ap);
}

static int gl__parse_bool(const char *v, bool *out) {
  static const char *const yes[] = {"true", "yes", "on", "1"};
  static const char *const no[] = {"false", "no", "off", "0"};
  for (size_t i = 0; i < 4; i++) {
    if (strcasecmp(v, yes[i]) == 0) {
      *out = true;
      return GL_OK;
    }
    if (strcasecmp(v, no[i]) == 0) {
      *out = false;
      return GL_OK;
    }
  }
  return GL_EINVAL;
}

static int gl__parse_u32(const char *v, const struct gl__cfg_key *k, uint32_t *out) {
  char *end;
  errno = 0;
  if (*v < '0' || *v > '9')
    return GL_EINVAL;
  unsigned long long x = strtoull(v, &end, 10);
  if (*end != '\0' || errno != 0)
    return GL_EINVAL;
  if (!(k->zero_ok && x == 0) && (x < k->min || x > k->max))
    return GL_EINVAL;
  *out = (uint32_t)x;
  return GL_OK;
}

/* Permission bits as chmod(1) writes them in octal: "0660", "660", "0". */
static int gl__parse_mode(const char *v, const struct gl__cfg_key *k, uint32_t *out) {
  uint32_t x = 0;
  if (*v == '\0')
    return GL_EINVAL;
  for (const char *c = v; *c; c++) {
    if (*c < '0' || *c > '7')
      return GL_EINVAL;
    x = x * 8 + (uint32_t)(*c - '0');
    if (x > k->max)
      return GL_EINVAL; /* also before it could overflow */
  }
  *out = x;
  return GL_OK;
}

static bool gl__section_known(const char *section) {
  for (size_t i = 0; i < GL__NKEYS; i++)
    if (strcmp(section, gl__keys[i].section) == 0)
      return true;
  return false;
}

/* A map name becomes a metric label and a protocol string: keep it plain. */
static bool gl__map_name_ok(const char *name) {
  size_t n = strlen(name);
  if (n == 0 || n > 64)
    return false;
  for (const char *c = name; *c; c++)
    if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
          *c == '_' || *c == '-' || *c == '.'))
      return false;
  return true;
}

static void gl__cfg_token_section(struct gl__cfg_parse *p, const char *section,
                                  const char *tn) {
  struct gl_config *c = p->cfg;
  if (!gl__map_name_ok(tn)) {
    gl__cfg_fail(p, p->line, "[%s]: a token name is 1..64 letters, digits, '_', '-' or '.'",
                 section);
    return;
  }
  for (uint32_t i = 0; i < c->n_tokens; i++) {
    if (strcmp(c->tokens[i].name, tn) == 0) {
      gl__cfg_fail(p, p->line, "[%s]: duplicate token (first on line %d)", section,
                   c->tokens[i].line);
      return;
    }
  }
  if (c->n_tokens == GL_CONFIG_MAX_TOKENS) {
    gl__cfg_fail(p, p->line, "[%s]: more than %d tokens", section, GL_CONFIG_MAX_TOKENS);
    return;
  }
  struct gl_config_token *nt = realloc(c->tokens, (c->n_tokens + 1) * sizeof *nt);
  if (!nt) {
    gl__cfg_fail(p, p->line, "out of memory");
    return;
  }
  c->tokens = nt;
  struct gl_config_token *t = &nt[c->n_tokens];
  memset(t, 0, sizeof *t);
  t->line = p->line;
  t->name = strdup(tn);
  if (!t->name)
    gl__cfg_fail(p, p->line, "out of memory");
  else
    c->n_tokens++;
}

/* A key of the [token NAME] the reader registered last. */
static int gl__cfg_token_key(struct gl__cfg_parse *p, const char *section, const char *name,
                             const char *value) {
  struct gl_config_token *t = &p->cfg->tokens[p->cfg->n_tokens - 1];
  if (strcmp(name, "hash") == 0) {
    if (t->has_hash) {
      gl__cfg_fail(p, p->line, "[%s] hash: duplicate key", section);
      return 0;
    }
    /* Never echo the value: a token pasted here by mistake is a secret. */
    if (gl_auth_parse(value, &t->hash) != GL_OK) {
      gl__cfg_fail(p, p->line,
                   "[%s] hash: expected sha256:SALT:HASH (32 and 64 hex digits) as "
                   "'geoloc token hash' prints it",
                   section);
      return 0;
    }
    t->has_hash = true;
    return 1;
  }
  if (strcmp(name, "maps") != 0) {
    gl__cfg_fail(p, p->line, "unknown key '%s' in [%s] (tokens have 'hash' and 'maps')", name,
                 section);
    return 0;
  }
  if (t->n_maps > 0) {
    gl__cfg_fail(p, p->line, "[%s] maps: duplicate key", section);
    return 0;
  }
  /* Map names separated by commas and/or blanks. */
  const char *v = value;
  while (*v) {
    v += strspn(v, ", \t");
    size_t n = strcspn(v, ", \t");
    if (n == 0)
      break;
    char mn[128];
    snprintf(mn, sizeof mn, "%.*s", (int)(n < 127 ? n : 127), v);
    if (n > 64 || !gl__map_name_ok(mn)) {
      gl__cfg_fail(p, p->line, "[%s] maps: '%s' is not a map name", section, mn);
      return 0;
    }
    if (t->n_maps == GL_CONFIG_MAX_MAPS) {
      gl__cfg_fail(p, p->line, "[%s] maps: more than %d maps", section, GL_CONFIG_MAX_MAPS);
      return 0;
    }
    if (!(t->maps[t->n_maps] = strdup(mn))) {
      gl__cfg_fail(p, p->line, "out of memory");
      return 0;
    }
    t->n_maps++;
    v += n;
  }
  if (t->n_maps == 0) {
    gl__cfg_fail(p, p->line, "[%s] maps: empty (leave the key out to allow every map)", section);
    return 0;
  }
  return 1;
}

/* Section headers are seen here, not in the handler, because libinih only
 * reports a section through its keys: an empty [map x] or a misspelt empty
 * section would otherwise pass unnoticed. */
static void gl__cfg_section_line(struct gl__cfg_parse *p, const char *line) {
  const char *b = line + strspn(line, " \t");
  if (*b != '[')
    return;
  const char *e = strchr(b, ']');
  if (!e)
    return; /* libinih reports the syntax error */
  char name[128];
  snprintf(name, sizeof name, "%.*s", (int)(e - b - 1), b + 1);
  struct gl_config *c = p->cfg;
  if (strncmp(name, "map ", 4) == 0) {
    const char *mn = name + 4;
    if (!gl__map_name_ok(mn)) {
      gl__cfg_fail(p, p->line, "[%s]: a map name is 1..64 letters, digits, '_', '-' or '.'",
                   name);
      return;
    }
    for (uint32_t i = 0; i < c->n_maps; i++) {
      if (strcmp(c->maps[i].name, mn) == 0) {
        gl__cfg_fail(p, p->line, "[%s]: duplicate map (first on line %d)", name, c->maps[i].line);
        return;
      }
    }
    if (c->n_maps == GL_CONFIG_MAX_MAPS) {
      gl__cfg_fail(p, p->line, "[%s]: more than %d maps", name, GL_CONFIG_MAX_MAPS);
      return;
    }
    struct gl_config_map *m = &c->maps[c->n_maps];
    m->name = strdup(mn);
    m->line = p->line;
    if (!m->name)
      gl__cfg_fail(p, p->line, "out of memory");
    else
      c->n_maps++;
    return;
  }
  if (strncmp(name, "token ", 6) == 0) {
    gl__cfg_token_section(p, name, name + 6);
    return;
  }
  if (!gl__section_known(name))
    gl__cfg_fail(p, p->line, "unknown section [%s]", name);
  else if (strcmp(name, "model") == 0)
    p->model_line = p->line;
}

/* libinih reads through this so that the handler knows the line number
 * (Debian's libinih is built without INI_HANDLER_LINENO). Its line buffer is
 * small (INI_MAX_LINE, 200 bytes in Debian's build) and it would silently
 * split a longer line, so such a line is an error here. */
static char *gl__cfg_reader(char *buf, int size, void *stream) {
  struct gl__cfg_parse *p = stream;
  char *line = NULL;
  size_t cap = 0;
  ssize_t n = getline(&line, &cap, p->f);
  if (n < 0 || p->failed) {
    free(line);
    return NULL;
  }
  p->line++;
  if (n >= size) {
    gl__cfg_fail(p, p->line, "line longer than %d bytes", size - 1);
    free(line);
    return NULL; /* ends parsing; the error above is reported */
  }
  memcpy(buf, line, (size_t)n + 1);
  free(line);
  gl__cfg_section_line(p, buf);
  return buf;
}

static int gl__cfg_handler(void *user, const char *section, const char *name, const char *value) {
  struct gl__cfg_parse *p = user;
  const struct gl__cfg_key *k = NULL;
  bool section_known = false;
  size_t i;
  if (strncmp(section, "map ", 4) == 0 && p->cfg->n_maps > 0) {
    /* The reader registered this section as the last map. */
    struct gl_config_map *m = &p->cfg->maps[p->cfg->n_maps - 1];
    if (strcmp(name, "path") != 0) {
      gl__cfg_fail(p, p->line, "unknown key '%s' in [%s] (maps have only 'path')", name, section);
      return 0;
    }
    if (m->path) {
      gl__cfg_fail(p, p->line, "[%s] path: duplicate key", section);
      return 0;
    }
    if (*value && !(m->path = strdup(value))) {
      gl__cfg_fail(p, p->line, "out of memory");
      return 0;
    }
    return 1;
  }
  if (strncmp(section, "token ", 6) == 0 && p->cfg->n_tokens > 0)
    return gl__cfg_token_key(p, section, name, value);
  for (i = 0; i < GL__NKEYS; i++) {
    if (strcmp(section, gl__keys[i].section) != 0)
      continue;
    section_known = true;
    if (strcmp(name, gl__keys[i].name) == 0) {
      k = &gl__keys[i];
      break;
    }
  }
  if (!section_known) {
    if (*section == '\0')
      gl__cfg_fail(p, p->line, "key '%s' outside any section", name);
    else
      gl__cfg_fail(p, p->line, "unknown section [%s]", section);
    return 0;
  }
  if (!k) {
    gl__cfg_fail(p, p->line, "unknown key '%s' in [%s]", name, section);
    return 0;
  }
  if (p->key_line[i]) {
    gl__cfg_fail(p, p->line, "[%s] %s: duplicate key (first set on line %d)", section, name,
                 p->key_line[i]);
    return 0;
  }
  p->key_line[i] = p->line;
  void *field = (char *)p->cfg + k->off;
  switch (k->type) {
  case GL__CFG_U32:
    if (gl__parse_u32(value, k, field) != GL_OK) {
      gl__cfg_fail(p, p->line, "[%s] %s: expected an integer in %s%u..%u, got '%s'", section,
                   name, k->zero_ok ? "0 or " : "", k->min, k->max, value);
      return 0;
    }
    break;
  case GL__CFG_MODE:
    if (gl__parse_mode(value, k, field) != GL_OK) {
      gl__cfg_fail(p, p->line, "[%s] %s: expected an octal mode in 0..%o such as 0660, got '%s'",
                   section, name, k->max, value);
      return 0;
    }
    break;
  case GL__CFG_BOOL:
    if (gl__parse_bool(value, field) != GL_OK) {
      gl__cfg_fail(p, p->line, "[%s] %s: expected true or false, got '%s'", section, name, value);
      return 0;
    }
    break;
  case GL__CFG_ENUM: {
    int v = -1;
    for (int j = 0; k->choices[j]; j++)
      if (strcmp(value, k->choices[j]) == 0)
        v = j;
    if (v < 0) {
      char list[128] = "";
      for (int j = 0; k->choices[j]; j++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", j ? ", " : "",
                 k->choices[j]);
      gl__cfg_fail(p, p->line, "[%s] %s: expected one of %s, got '%s'", section, name, list,
                   value);
      return 0;
    }
    *(int *)field = v;
    break;
  }
  case GL__CFG_LEVEL:
    if (gl_log_level_parse(value, field) != GL_OK) {
      gl__cfg_fail(p, p->line, "[%s] %s: expected err, warning, notice, info or debug, got '%s'",
                   section, name, value);
      return 0;
    }
    break;
  case GL__CFG_STR: {
    char **s = field;
    free(*s);
    *s = NULL;
    if (*value == '\0')
      break; /* an empty value means "not set" */
    *s = strdup(value);
    if (!*s) {
      gl__cfg_fail(p, p->line, "out of memory");
      return 0;
    }
    break;
  }
  }
  return 1;
}

static int gl__key_index(const char *section, const char *name) {
  for (size_t i = 0; i < GL__NKEYS; i++)
    if (strcmp(gl__keys[i].section, section) == 0 && strcmp(gl__keys[i].name, name) == 0)
      return (int)i;
  return -1;
}

static int gl__line_of(const struct gl__cfg_parse *p, const char *section, const char *name) {
  return p->key_line[gl__key_index(section, name)];
}

/* Rules that involve more than one key. */
static void gl__cfg_validate(struct gl__cfg_parse *p) {
  struct gl_config *c = p->cfg;
  struct sockaddr_storage ss;
  char buf[64];
  if (c->tcp) {
    int line = gl__line_of(p, "listen", "tcp");
    if (gl_addr_parse(c->tcp, &ss) != GL_OK)
      gl__cfg_fail(p, line, "[listen] tcp: expected a numeric IP:port or [IPv6]:port, got '%s'",
                   c->tcp);
    else if (!gl_addr_is_loopback(&ss) && !c->allow_remote_plaintext)
      gl__cfg_fail(p, line,
                   "[listen] tcp: plaintext listener on non-loopback address %s "
                   "(set allow_remote_plaintext = true to allow)",
                   gl_addr_format(&ss, buf, sizeof buf));
  }
  if (c->metrics_listen) {
    int line = gl__line_of(p, "metrics", "listen");
    if (gl_addr_parse(c->metrics_listen, &ss) != GL_OK)
      gl__cfg_fail(p, line, "[metrics] listen: expected a numeric IP:port or [IPv6]:port, got '%s'",
                   c->metrics_listen);
    else if (!gl_addr_is_loopback(&ss) && !c->allow_remote_plaintext)
      gl__cfg_fail(p, line,
                   "[metrics] listen: plaintext HTTP on non-loopback address %s "
                   "(set [listen] allow_remote_plaintext = true to allow)",
                   gl_addr_format(&ss, buf, sizeof buf));
  }
  if (p->model_line && !c->model_path)
    gl__cfg_fail(p, p->model_line, "[model] path: missing required key");
  for (uint32_t i = 0; i < c->n_maps; i++) {
    if (!c->maps[i].path)
      gl__cfg_fail(p, c->maps[i].line, "[map %s] path: missing required key", c->maps[i].name);
    else if (!c->model_path)
      gl__cfg_fail(p, c->maps[i].line, "[map %s]: a map needs a [model] with a path",
                   c->maps[i].name);
  }
  for (uint32_t i = 0; i < c->n_tokens; i++) {
    const struct gl_config_token *t = &c->tokens[i];
    if (!t->has_hash)
      gl__cfg_fail(p, t->line, "[token %s] hash: missing required key", t->name);
    if (!GL_HAVE_TLS)
      gl__cfg_fail(p, t->line, "[token %s]: tokens need geolocd built with OpenSSL", t->name);
    for (uint32_t j = 0; j < t->n_maps; j++) {
      uint32_t k = 0;
      while (k < c->n_maps && strcmp(c->maps[k].name, t->maps[j]) != 0)
        k++;
      if (k == c->n_maps) /* a typo would refuse every client of that map */
        gl__cfg_fail(p, t->line, "[token %s] maps: no [map %s] in this file", t->name,
                     t->maps[j]);
    }
  }
  if (c->unix_path && strlen(c->unix_path) >= 108)
    gl__cfg_fail(p, gl__line_of(p, "listen", "unix"), "[listen] unix: path longer than 107 bytes");
  if (c->unix_group) {
    int line = gl__line_of(p, "listen", "unix_group");
    gid_t gid;
    char why[128];
    if (gl_config_group(c->unix_group, &gid, why, sizeof why) != GL_OK)
      gl__cfg_fail(p, line, "[listen] unix_group: %s", why);
  }
  if (c->tls) {
    int line = gl__line_of(p, "listen", "tls");
    if (gl_addr_parse(c->tls, &ss) != GL_OK)
      gl__cfg_fail(p, line, "[listen] tls: expected a numeric IP:port or [IPv6]:port, got '%s'",
                   c->tls);
    if (!c->tls_cert)
      gl__cfg_fail(p, line, "[tls] cert: missing required key (needed by [listen] tls)");
    if (!c->tls_key)
      gl__cfg_fail(p, line, "[tls] key: missing required key (needed by [listen] tls)");
    if (!c->tls_ca && c->require_client_cert)
      gl__cfg_fail(p, line,
                   "[tls] ca: missing required key (needed by [listen] tls with "
                   "require_client_cert = true)");
  }
}

int gl_config_group(const char *name, gid_t *gid, char *err, size_t errlen) {
  struct group gr, *found = NULL;
  size_t len = 4096;
  char *buf = NULL;
  int e;
  do { /* a group with many members needs a larger buffer */
    char *nb = realloc(buf, len);
    if (!nb) {
      e = ENOMEM;
      break;
    }
    buf = nb;
    e = getgrnam_r(name, &gr, buf, len, &found);
    len *= 2;
  } while (e == ERANGE && len <= (1u << 24));
  if (e == 0 && found)
    *gid = found->gr_gid;
  free(buf);
  if (e == 0 && found)
    return GL_OK;
  if (e == 0 || e == ENOENT || e == ESRCH)
    snprintf(err, errlen, "no group named '%s'", name);
  else
    snprintf(err, errlen, "cannot look up group '%s': %s", name, strerror(e));
  return GL_ENOENT;
}

void gl_config_defaults(struct gl_config *cfg) {
  memset(cfg, 0, sizeof *cfg);
  cfg->log_level = GL_LOG_INFO;
  cfg->max_clients = 256;
  cfg->max_message_bytes = 16u << 20;
  cfg->handshake_timeout_ms = 5000;
  cfg->idle_timeout_ms = 60000;
  cfg->drain_timeout_ms = 10000;
  cfg->require_client_cert = true;
  cfg->unix_mode = 0660;
  cfg->max_frames_in_flight = 32;
  cfg->queue_depth = 256;
  cfg->stale_after_ms = 1000;
  cfg->max_decoded_pixels = 4096u * 4096u;
  cfg->default_top_k = 5;
  cfg->backend = GL_CONFIG_BACKEND_AUTO;
  cfg->max_batch = 0; /* by backend: src/loc/load.h */
  cfg->batch_window_us = 2000;
  cfg->search_tiles = 64;
  /* The fine stage's defaults are gl_loc_fine_params_init's. */
  cfg->search_threads = 0;
  cfg->fine = true;
  cfg->fine_top_k = 50;
  cfg->fine_radius_cells = 2;
  cfg->fine_full_scan_cells = 0;
  cfg->heading_step_deg = 10;
  cfg->heading_tolerance_deg = 20;
  /* The tracker's defaults are gl_track_params_init's. */
  cfg->track = true;
  cfg->track_max_speed_mps = 25;
  cfg->track_window_cells = 96;
}

int gl_config_load(const char *path, struct gl_config *cfg, char *err, size_t errlen) {
  struct gl__cfg_parse p = {.cfg = cfg, .err = err, .errlen = errlen};
  int rc;
  gl_config_defaults(cfg);
  if (errlen)
    err[0] = '\0';
  cfg->path = strdup(path);
  if (!cfg->path) {
    rc = GL_ENOMEM;
    goto fail;
  }
  p.f = fopen(path, "r");
  if (!p.f) {
    snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
    rc = GL_ENOENT;
    goto fail;
  }
  int line = ini_parse_stream(gl__cfg_reader, &p, gl__cfg_handler, &p);
  fclose(p.f);
  if (line != 0 && !p.failed)
    gl__cfg_fail(&p, line, "syntax error (expected '[section]' or 'key = value')");
  if (!p.failed)
    gl__cfg_validate(&p);
  if (p.failed) {
    rc = GL_ECONFIG;
    goto fail;
  }
  return GL_OK;
fail:
  gl_config_fini(cfg);
  return rc;
}

void gl_config_fini(struct gl_config *cfg) {
  free(cfg->path);
  free(cfg->tcp);
  free(cfg->unix_path);
  free(cfg->unix_group);
  free(cfg->tls);
  free(cfg->tls_cert);
  free(cfg->tls_key);
  free(cfg->tls_ca);
  free(cfg->tls_ciphers);
  free(cfg->model_path);
  free(cfg->metrics_listen);
  for (uint32_t i = 0; i < cfg->n_maps; i++) {
    free(cfg->maps[i].name);
    free(cfg->maps[i].path);
  }
  for (uint32_t i = 0; i < cfg->n_tokens; i++) {
    free(cfg->tokens[i].name);
    for (uint32_t j = 0; j < cfg->tokens[i].n_maps; j++)
      free(cfg->tokens[i].maps[j]);
  }
  /* The hashes are not secrets, but there is no reason to leave them. */
  if (cfg->tokens)
    memset(cfg->tokens, 0, cfg->n_tokens * sizeof cfg->tokens[0]);
  free(cfg->tokens);
  gl_config_defaults(cfg);
}

bool gl_config_token_allows(const struct gl_config_token *t, const char *map) {
  if (t->n_maps == 0)
    return true;
  for (uint32_t i = 0; i < t->n_maps; i++)
    if (map && strcmp(t->maps[i], map) == 0)
      return true;
  return false;
}
