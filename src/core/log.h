/* Logging to stderr with syslog priorities.
 *
 * Under systemd (JOURNAL_STREAM names our stderr) every line starts with the
 * "<N>" priority prefix that the journal understands and carries no
 * timestamp, since the journal adds its own. Otherwise lines carry an ISO
 * 8601 timestamp and the level name. Lines are written with one write(2),
 * so lines from several threads never interleave. */
#ifndef GL_CORE_LOG_H
#define GL_CORE_LOG_H

#include <stdbool.h>
#include <stddef.h>

/* Levels are syslog priorities, so the journal prefix is the level itself. */
enum gl_log_level {
  GL_LOG_ERR = 3,
  GL_LOG_WARNING = 4,
  GL_LOG_NOTICE = 5,
  GL_LOG_INFO = 6,
  GL_LOG_DEBUG = 7,
};

/* Sets the most verbose level that is written (default GL_LOG_INFO) and
 * detects the journal from JOURNAL_STREAM. Safe to call again. */
void gl_log_init(int level);

/* True when lines carry journal "<N>" prefixes. */
bool gl_log_to_journal(void);

/* Parses "err", "warning", "notice", "info" or "debug" into *level.
 * Returns 0 or GL_EINVAL. */
int gl_log_level_parse(const char *name, int *level);

/* Returns the name of a level ("info"). */
const char *gl_log_level_name(int level);

void gl_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Copies src into dst (dstlen bytes, NUL-terminated when dstlen > 0) so
 * that it can be logged: a client-supplied string must not forge a log line
 * or garble a terminal. Newline, carriage return and tab become \n, \r and
 * \t; the other C0 controls, DEL, the C1 controls (U+0080..U+009F), U+2028,
 * U+2029 and every byte that is not part of valid UTF-8 become \xNN, one per
 * byte. Everything else, valid UTF-8 included, is copied. A backslash is
 * copied as it is, so escaping is idempotent: a string escaped where it is
 * formatted (an Error's text) can be escaped again where it is logged. When
 * dst is too small the output is cut between two characters and ends in
 * "...". A NULL src is "". Returns strlen(dst). */
size_t gl_log_escape(char *dst, size_t dstlen, const char *src);

#define GL_LOG_E(...) gl_log(GL_LOG_ERR, __VA_ARGS__)
#define GL_LOG_W(...) gl_log(GL_LOG_WARNING, __VA_ARGS__)
#define GL_LOG_N(...) gl_log(GL_LOG_NOTICE, __VA_ARGS__)
#define GL_LOG_I(...) gl_log(GL_LOG_INFO, __VA_ARGS__)
#define GL_LOG_D(...) gl_log(GL_LOG_DEBUG, __VA_ARGS__)

#endif
