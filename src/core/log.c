#include "core/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/err.h"

static atomic_int gl__log_level = GL_LOG_INFO;
static atomic_bool gl__log_journal = false;

static const char *const gl__level_names[] = {
    [GL_LOG_ERR] = "err",         [GL_LOG_WARNING] = "warning", [GL_LOG_NOTICE] = "notice",
    [GL_LOG_INFO] = "info",       [GL_LOG_DEBUG] = "debug",
};

/* systemd sets JOURNAL_STREAM to the device and inode of the stream it
 * connected; it only means our stderr is the journal when those match, since
 * the variable is inherited by children whose stderr may be redirected. */
static bool gl__stderr_is_journal(void) {
  const char *js = getenv("JOURNAL_STREAM");
  unsigned long long dev, ino;
  struct stat st;
  if (!js || sscanf(js, "%llu:%llu", &dev, &ino) != 2)
    return false;
  if (fstat(STDERR_FILENO, &st) != 0)
    return false;
  return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void gl_log_init(int level) {
  atomic_store(&gl__log_level, level);
  atomic_store(&gl__log_journal, gl__stderr_is_journal());
}

bool gl_log_to_journal(void) { return atomic_load(&gl__log_journal); }

int gl_log_level_parse(const char *name, int *level) {
  for (int l = GL_LOG_ERR; l <= GL_LOG_DEBUG; l++) {
    if (strcasecmp(name, gl__level_names[l]) == 0) {
      *level = l;
      return GL_OK;
    }
  }
  return GL_EINVAL;
}

const char *gl_log_level_name(int level) {
  if (level < GL_LOG_ERR || level > GL_LOG_DEBUG)
    return "?";
  return gl__level_names[level];
}

void gl_log(int level, const char *fmt, ...) {
  if (level > atomic_load(&gl__log_level))
    return;
  char line[2048];
  size_t n;
  if (atomic_load(&gl__log_journal)) {
    n = (size_t)snprintf(line, sizeof line, "<%d>", level);
  } else {
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    localtime_r(&ts.tv_sec, &tm);
    n = strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%S", &tm);
    n += (size_t)snprintf(line + n, sizeof line - n, ".%03ld %-7s ", ts.tv_nsec / 1000000,
                          gl_log_level_name(level));
  }
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(line + n, sizeof line - n, fmt, ap);
  va_end(ap);
  if (m < 0)
    m = 0;
  n += (size_t)m;
  if (n > sizeof line - 2)
    n = sizeof line - 2; /* truncated: keep the newline */
  line[n++] = '\n';
  /* One write per line so that concurrent lines never interleave. */
  ssize_t w = write(STDERR_FILENO, line, n);
  (void)w;
}

/* Length of the valid UTF-8 sequence at s (2..4), or 0. Overlong forms,
 * surrogates and code points above U+10FFFF are not valid; *cp gets the code
 * point. */
static size_t gl__utf8_seq(const unsigned char *s, unsigned *cp) {
  unsigned c = s[0];
  size_t n;
  unsigned lo = 0x80, hi = 0xbf;
  if (c >= 0xc2 && c <= 0xdf) {
    n = 2;
    *cp = c & 0x1fu;
  } else if (c >= 0xe0 && c <= 0xef) {
    n = 3;
    *cp = c & 0x0fu;
    if (c == 0xe0)
      lo = 0xa0; /* overlong */
    else if (c == 0xed)
      hi = 0x9f; /* surrogates */
  } else if (c >= 0xf0 && c <= 0xf4) {
    n = 4;
    *cp = c & 0x07u;
    if (c == 0xf0)
      lo = 0x90; /* overlong */
    else if (c == 0xf4)
      hi = 0x8f; /* above U+10FFFF */
  } else {
    return 0;
  }
  for (size_t i = 1; i < n; i++) {
    if (s[i] < (i == 1 ? lo : 0x80u) || s[i] > (i == 1 ? hi : 0xbfu))
      return 0; /* also stops at the terminating NUL */
    *cp = (*cp << 6) | (s[i] & 0x3fu);
  }
  return n;
}

size_t gl_log_escape(char *dst, size_t dstlen, const char *src) {
  static const char hex[] = "0123456789abcdef";
  const unsigned char *s = (const unsigned char *)(src ? src : "");
  size_t n = 0, cut = 0;
  bool over = false;
  if (dstlen == 0)
    return 0;
  const size_t cap = dstlen - 1;
  while (*s) {
    char unit[16]; /* one character: at most four bytes, each as \xNN */
    size_t k = 0, len = 1;
    unsigned cp = *s;
    if (*s == '\n' || *s == '\r' || *s == '\t') {
      unit[k++] = '\\';
      unit[k++] = *s == '\n' ? 'n' : *s == '\r' ? 'r' : 't';
    } else if (*s >= 0x20 && *s < 0x7f) {
      unit[k++] = (char)*s;
    } else {
      size_t seq = *s >= 0x80 ? gl__utf8_seq(s, &cp) : 0;
      bool plain = seq > 0 && !(cp >= 0x80 && cp <= 0x9f) && cp != 0x2028 && cp != 0x2029;
      len = seq ? seq : 1;
      for (size_t i = 0; i < len; i++) {
        if (plain) {
          unit[k++] = (char)s[i];
        } else {
          unit[k++] = '\\';
          unit[k++] = 'x';
          unit[k++] = hex[s[i] >> 4];
          unit[k++] = hex[s[i] & 0xf];
        }
      }
    }
    if (n + k > cap) {
      over = true;
      break;
    }
    memcpy(dst + n, unit, k);
    n += k;
    s += len;
    if (n + 3 <= cap)
      cut = n; /* the last place where "..." still fits after */
  }
  if (over) {
    n = cut;
    if (n + 3 <= cap) {
      memcpy(dst + n, "...", 3);
      n += 3;
    }
  }
  dst[n] = '\0';
  return n;
}
