#include "sd.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/err.h"
#include "gl_build_config.h"

#if GL_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

void gl_sd_notify(const char *state) {
#if GL_HAVE_SYSTEMD
  sd_notify(0, state);
#else
  (void)state;
#endif
}

void gl_sd_notifyf(const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  gl_sd_notify(buf);
}

uint64_t gl_sd_watchdog_usec(void) {
#if GL_HAVE_SYSTEMD
  uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) > 0)
    return usec;
#endif
  return 0;
}

int gl_sd_listen_fds(char ***names) {
  *names = NULL;
#if GL_HAVE_SYSTEMD
  /* unset_environment: children must not take these sockets for theirs. */
  int n = sd_listen_fds_with_names(1, names);
  return n < 0 ? GL_EINVAL : n;
#else
  return 0;
#endif
}

void gl_sd_free_names(char **names) {
  if (!names)
    return;
  for (char **p = names; *p; p++)
    free(*p);
  free(names);
}
