/* Logging: level names, the journal "<N>" prefix when JOURNAL_STREAM names
 * our stderr, the plain format otherwise, and level filtering.
 *
 * stderr is pointed at a real temporary file while gl_log runs and put back
 * before any check, so failure reports never end up in the captured text. */
#include <ctype.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/err.h"
#include "core/log.h"
#include "test.h"

static const struct {
  const char *name;
  int level;
} levels[] = {
    {"err", GL_LOG_ERR},   {"warning", GL_LOG_WARNING}, {"notice", GL_LOG_NOTICE},
    {"info", GL_LOG_INFO}, {"debug", GL_LOG_DEBUG},
};

static void test_level_names(void) {
  for (size_t i = 0; i < sizeof levels / sizeof levels[0]; i++) {
    int level = -1;

    CHECK_EQ_INT(gl_log_level_parse(levels[i].name, &level), 0);
    CHECK_EQ_INT(level, levels[i].level);
    CHECK_EQ_STR(gl_log_level_name(levels[i].level), levels[i].name);
    /* Round trip from the level side too. */
    level = -1;
    CHECK_EQ_INT(gl_log_level_parse(gl_log_level_name(levels[i].level), &level), 0);
    CHECK_EQ_INT(level, levels[i].level);
  }

  const char *bad[] = {"", "verbose", "trace", "inf", "infox", "debug ", " err"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    int level = GL_LOG_NOTICE;
    int rc = gl_log_level_parse(bad[i], &level);
    if (!CHECK_EQ_INT(rc, GL_EINVAL))
      fprintf(stderr, "  input was \"%s\"\n", bad[i]);
  }
}

/* ---- capturing stderr ---------------------------------------------------- */

struct capture {
  char path[256];
  int file;
  int saved_stderr;
};

/* Points fd 2 at a fresh temporary file. */
static bool capture_start(struct capture *c) {
  const char *dir = getenv("TMPDIR");

  snprintf(c->path, sizeof c->path, "%s/gl-test-log-XXXXXX", dir && *dir ? dir : "/tmp");
  c->file = mkstemp(c->path);
  if (c->file < 0)
    return false;
  fflush(stderr);
  c->saved_stderr = dup(2);
  if (c->saved_stderr < 0 || dup2(c->file, 2) < 0)
    return false;
  return true;
}

/* Sets JOURNAL_STREAM to the dev:ino of the current fd 2, plus delta on the
 * inode (delta != 0 names some other file). */
static void set_journal_stream(long long ino_delta) {
  struct stat st;
  char buf[64];

  if (fstat(2, &st) != 0)
    abort();
  snprintf(buf, sizeof buf, "%llu:%llu", (unsigned long long)st.st_dev,
           (unsigned long long)st.st_ino + (unsigned long long)ino_delta);
  setenv("JOURNAL_STREAM", buf, 1);
}

/* Puts stderr back and returns what was written (malloc'ed, NUL-ended). */
static char *capture_end(struct capture *c) {
  struct stat st;
  char *text = NULL;

  fflush(stderr);
  dup2(c->saved_stderr, 2);
  close(c->saved_stderr);
  if (fstat(c->file, &st) == 0) {
    text = calloc(1, (size_t)st.st_size + 1);
    if (text && pread(c->file, text, (size_t)st.st_size, 0) != st.st_size) {
      free(text);
      text = NULL;
    }
  }
  close(c->file);
  unlink(c->path);
  return text;
}

/* Returns the line containing marker (malloc'ed, without '\n'), or NULL. */
static char *line_with(const char *text, const char *marker) {
  const char *hit = text ? strstr(text, marker) : NULL;
  if (!hit)
    return NULL;
  const char *start = hit;
  while (start > text && start[-1] != '\n')
    start--;
  const char *end = strchr(hit, '\n');
  if (!end)
    return NULL; /* every line must end in '\n' */
  size_t n = (size_t)(end - start);
  char *line = malloc(n + 1);
  if (!line)
    abort();
  memcpy(line, start, n);
  line[n] = '\0';
  return line;
}

static int count_lines(const char *text) {
  int n = 0;
  for (const char *p = text; p && *p; p++)
    n += *p == '\n';
  return n;
}

static void check_prefix(const char *text, const char *marker, const char *prefix) {
  char *line = line_with(text, marker);

  if (CHECK(line != NULL)) {
    if (!CHECK(strncmp(line, prefix, strlen(prefix)) == 0))
      fprintf(stderr, "  line \"%s\" should start with \"%s\"\n", line, prefix);
  } else {
    fprintf(stderr, "  no line with \"%s\" in:\n%s\n", marker, text ? text : "(null)");
  }
  free(line);
}

/* ---- journal mode ----------------------------------------------------------- */

static void test_journal(void) {
  struct capture c;

  if (!CHECK(capture_start(&c)))
    return;
  set_journal_stream(0);
  gl_log_init(GL_LOG_INFO);
  bool journal = gl_log_to_journal();
  gl_log(GL_LOG_ERR, "marker-err %d", 42);
  gl_log(GL_LOG_WARNING, "marker-warning %s", "w");
  gl_log(GL_LOG_NOTICE, "marker-notice");
  gl_log(GL_LOG_INFO, "marker-info");
  gl_log(GL_LOG_DEBUG, "marker-debug-hidden");
  GL_LOG_E("marker-macro-err");
  GL_LOG_I("marker-macro-info");
  GL_LOG_D("marker-macro-debug-hidden");
  char *text = capture_end(&c);
  unsetenv("JOURNAL_STREAM");

  CHECK(journal);
  if (!CHECK(text != NULL))
    return;
  check_prefix(text, "marker-err 42", "<3>");
  check_prefix(text, "marker-warning w", "<4>");
  check_prefix(text, "marker-notice", "<5>");
  check_prefix(text, "marker-info", "<6>");
  check_prefix(text, "marker-macro-err", "<3>");
  check_prefix(text, "marker-macro-info", "<6>");
  /* Debug is above the info level, so it is not written at all. */
  CHECK(strstr(text, "marker-debug-hidden") == NULL);
  CHECK(strstr(text, "marker-macro-debug-hidden") == NULL);
  CHECK_EQ_INT(count_lines(text), 6);
  /* Every line is a complete line that starts with a prefix. */
  CHECK(text[0] == '<');
  CHECK(text[strlen(text) - 1] == '\n');
  for (const char *p = strchr(text, '\n'); p && p[1]; p = strchr(p + 1, '\n'))
    CHECK(p[1] == '<');
  free(text);
}

static void test_journal_levels(void) {
  struct capture c;

  /* At debug everything is written, with "<7>" for debug. */
  if (!CHECK(capture_start(&c)))
    return;
  set_journal_stream(0);
  gl_log_init(GL_LOG_DEBUG);
  gl_log(GL_LOG_DEBUG, "marker-debug-shown");
  gl_log(GL_LOG_INFO, "marker-info-shown");
  char *text = capture_end(&c);
  check_prefix(text, "marker-debug-shown", "<7>");
  check_prefix(text, "marker-info-shown", "<6>");
  free(text);

  /* At err only errors pass. */
  if (!CHECK(capture_start(&c)))
    return;
  set_journal_stream(0);
  gl_log_init(GL_LOG_ERR);
  gl_log(GL_LOG_WARNING, "marker-warning-hidden");
  gl_log(GL_LOG_INFO, "marker-info-hidden");
  gl_log(GL_LOG_ERR, "marker-err-shown");
  text = capture_end(&c);
  unsetenv("JOURNAL_STREAM");
  check_prefix(text, "marker-err-shown", "<3>");
  CHECK(text && strstr(text, "hidden") == NULL);
  CHECK_EQ_INT(count_lines(text), 1);
  free(text);
}

/* ---- plain mode --------------------------------------------------------------- */

/* True when line holds an ISO 8601 date and time: YYYY-MM-DD?HH:MM:SS. */
static bool has_timestamp(const char *line) {
  static const char pat[] = "dddd-dd-dd?dd:dd:dd";
  size_t n = strlen(pat);
  for (const char *p = line; strlen(p) >= n; p++) {
    size_t i = 0;
    for (; i < n; i++) {
      unsigned char ch = (unsigned char)p[i];
      if (pat[i] == 'd' ? !isdigit(ch) : pat[i] == '?' ? (ch != 'T' && ch != ' ') : ch != (unsigned char)pat[i])
        break;
    }
    if (i == n)
      return true;
  }
  return false;
}

static void check_plain(const char *text, const char *marker) {
  char *line = line_with(text, marker);

  if (CHECK(line != NULL)) {
    if (!CHECK(line[0] != '<'))
      fprintf(stderr, "  line \"%s\" has a journal prefix\n", line);
    if (!CHECK(has_timestamp(line)))
      fprintf(stderr, "  line \"%s\" has no ISO 8601 timestamp\n", line);
  }
  free(line);
}

static void test_plain(void) {
  struct capture c;

  /* No JOURNAL_STREAM at all. */
  unsetenv("JOURNAL_STREAM");
  if (!CHECK(capture_start(&c)))
    return;
  gl_log_init(GL_LOG_INFO);
  bool journal = gl_log_to_journal();
  gl_log(GL_LOG_ERR, "marker-plain-err");
  gl_log(GL_LOG_INFO, "marker-plain-info");
  gl_log(GL_LOG_DEBUG, "marker-plain-debug-hidden");
  char *text = capture_end(&c);
  CHECK(!journal);
  check_plain(text, "marker-plain-err");
  check_plain(text, "marker-plain-info");
  CHECK(text && strstr(text, "marker-plain-debug-hidden") == NULL);
  CHECK(text && strstr(text, "<3>") == NULL && strstr(text, "<6>") == NULL);
  CHECK_EQ_INT(count_lines(text), 2);
  free(text);

  /* JOURNAL_STREAM naming another file (the journal, stderr redirected by
   * the service) does not count. */
  if (!CHECK(capture_start(&c)))
    return;
  set_journal_stream(1);
  gl_log_init(GL_LOG_INFO);
  journal = gl_log_to_journal();
  gl_log(GL_LOG_ERR, "marker-other-err");
  text = capture_end(&c);
  CHECK(!journal);
  check_plain(text, "marker-other-err");
  free(text);

  /* Garbage in JOURNAL_STREAM. */
  if (!CHECK(capture_start(&c)))
    return;
  setenv("JOURNAL_STREAM", "not-a-dev-ino", 1);
  gl_log_init(GL_LOG_INFO);
  journal = gl_log_to_journal();
  gl_log(GL_LOG_ERR, "marker-garbage-err");
  text = capture_end(&c);
  unsetenv("JOURNAL_STREAM");
  CHECK(!journal);
  check_plain(text, "marker-garbage-err");
  free(text);
}

/* gl_log_escape: what a client-supplied string looks like in a log line. */
static void test_escape(void) {
  static const struct {
    const char *in, *out;
  } cases[] = {
      {"", ""},
      {"plain map-1.x", "plain map-1.x"},
      {"x\nFORGED line", "x\\nFORGED line"},
      {"a\r\n\tb", "a\\r\\n\\tb"},
      {"\x1b[31mred\x7f", "\\x1b[31mred\\x7f"},
      {"back\\slash \\n", "back\\slash \\n"}, /* copied: escaping is idempotent */
      {"caf\xc3\xa9 \xe6\x97\xa5 \xf0\x9f\x9b\xb0", "caf\xc3\xa9 \xe6\x97\xa5 \xf0\x9f\x9b\xb0"},
      {"bad \xff\xfe end", "bad \\xff\\xfe end"},
      {"cut \xe6\x97", "cut \\xe6\\x97"},                                /* a sequence cut short */
      {"over \xc0\xaf \xe0\x80\xaf", "over \\xc0\\xaf \\xe0\\x80\\xaf"}, /* overlong */
      {"sur \xed\xa0\x80", "sur \\xed\\xa0\\x80"},                       /* a surrogate */
      {"big \xf4\x90\x80\x80", "big \\xf4\\x90\\x80\\x80"},
      {"c1 \xc2\x85 \xc2\x9b", "c1 \\xc2\\x85 \\xc2\\x9b"}, /* NEL, CSI */
      {"ls \xe2\x80\xa8 ps \xe2\x80\xa9", "ls \\xe2\\x80\\xa8 ps \\xe2\\x80\\xa9"},
  };
  char out[128], twice[128];
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    size_t n = gl_log_escape(out, sizeof out, cases[i].in);
    if (!CHECK_EQ_STR(out, cases[i].out))
      fprintf(stderr, "  case %zu\n", i);
    CHECK_EQ_INT(n, strlen(out));
    gl_log_escape(twice, sizeof twice, out);
    CHECK_EQ_STR(twice, out);
  }
  CHECK_EQ_INT(gl_log_escape(out, sizeof out, NULL), 0);
  CHECK_EQ_STR(out, "");

  /* Too long: cut between characters, never inside an escape, then "...". */
  char small[12];
  CHECK_EQ_INT(gl_log_escape(small, sizeof small, "abcdefghijklmnop"), 11);
  CHECK_EQ_STR(small, "abcdefgh...");
  CHECK_EQ_STR((gl_log_escape(small, sizeof small, "abcdefghijk"), small), "abcdefghijk");
  gl_log_escape(small, sizeof small, "abcdef\n\n\n");
  CHECK_EQ_STR(small, "abcdef\\n...");
  gl_log_escape(small, sizeof small, "abc\xff\xff\xff");
  CHECK_EQ_STR(small, "abc\\xff...");
  char tiny[3];
  gl_log_escape(tiny, sizeof tiny, "abcdef");
  CHECK_EQ_STR(tiny, "");
  gl_log_escape(tiny, sizeof tiny, "ab");
  CHECK_EQ_STR(tiny, "ab");
  CHECK_EQ_INT(gl_log_escape(tiny, 0, "ab"), 0);
}

int main(void) {
  RUN(test_level_names);
  RUN(test_journal);
  RUN(test_journal_levels);
  RUN(test_plain);
  RUN(test_escape);
  return TEST_END();
}
