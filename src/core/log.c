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
