/* Minimal assertion helpers for the unit tests.
 *
 * A failed check prints file:line and the expression, is counted, and the
 * test goes on, so one run reports every failure. main() ends with
 * `return TEST_END();`, which is 1 when anything failed. */
#ifndef GL_TEST_H
#define GL_TEST_H

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

static int gl_test_checks;
static int gl_test_failures;

static inline bool gl_test_fail(const char *file, int line, const char *what) {
  gl_test_failures++;
  fprintf(stderr, "%s:%d: FAILED: %s\n", file, line, what);
  fflush(stderr);
  return false;
}

static inline bool gl_test_check(bool ok, const char *file, int line, const char *expr) {
  gl_test_checks++;
  return ok ? true : gl_test_fail(file, line, expr);
}

static inline bool gl_test_eq_int(long long a, long long b, const char *ea, const char *eb,
                                  const char *file, int line) {
  gl_test_checks++;
  if (a == b)
    return true;
  gl_test_failures++;
  fprintf(stderr, "%s:%d: FAILED: %s == %s (%lld != %lld)\n", file, line, ea, eb, a, b);
  fflush(stderr);
  return false;
}

static inline bool gl_test_eq_u64(unsigned long long a, unsigned long long b, const char *ea,
                                  const char *eb, const char *file, int line) {
  gl_test_checks++;
  if (a == b)
    return true;
  gl_test_failures++;
  fprintf(stderr, "%s:%d: FAILED: %s == %s (%llu != %llu)\n", file, line, ea, eb, a, b);
  fflush(stderr);
  return false;
}

static inline bool gl_test_eq_str(const char *a, const char *b, const char *ea, const char *eb,
                                  const char *file, int line) {
  gl_test_checks++;
  if (a && b && strcmp(a, b) == 0)
    return true;
  gl_test_failures++;
  fprintf(stderr, "%s:%d: FAILED: %s == %s (\"%s\" != \"%s\")\n", file, line, ea, eb,
          a ? a : "(null)", b ? b : "(null)");
  fflush(stderr);
  return false;
}

static inline bool gl_test_contains(const char *hay, const char *needle, const char *eh,
                                    const char *file, int line) {
  gl_test_checks++;
  if (hay && needle && strstr(hay, needle))
    return true;
  gl_test_failures++;
  fprintf(stderr, "%s:%d: FAILED: %s contains \"%s\" (it is \"%s\")\n", file, line, eh,
          needle ? needle : "(null)", hay ? hay : "(null)");
  fflush(stderr);
  return false;
}

/* memcmp() with a NULL pointer is undefined even for n == 0. */
static inline bool gl_test_mem_eq(const void *a, const void *b, size_t n) {
  return n == 0 || (a && b && memcmp(a, b, n) == 0);
}

/* Each evaluates to true when the check passed, so a test can stop early
 * (`if (!CHECK(p)) return;`) where going on would crash. */
#define CHECK(cond) gl_test_check((cond) ? true : false, __FILE__, __LINE__, #cond)
#define CHECK_EQ_INT(a, b) gl_test_eq_int((long long)(a), (long long)(b), #a, #b, __FILE__, __LINE__)
#define CHECK_EQ_U64(a, b)                                                                     \
  gl_test_eq_u64((unsigned long long)(a), (unsigned long long)(b), #a, #b, __FILE__, __LINE__)
#define CHECK_EQ_STR(a, b) gl_test_eq_str((a), (b), #a, #b, __FILE__, __LINE__)
#define CHECK_CONTAINS(hay, needle) gl_test_contains((hay), (needle), #hay, __FILE__, __LINE__)
#define CHECK_EQ_MEM(a, b, n)                                                                  \
  gl_test_check(gl_test_mem_eq((a), (b), (n)), __FILE__, __LINE__, "memcmp(" #a ", " #b ", " #n ") == 0")

/* Runs one test function, naming it so failures can be placed. */
#define RUN(fn)                                                                                \
  do {                                                                                         \
    int gl_test_before_ = gl_test_failures;                                                    \
    fn();                                                                                      \
    fprintf(stderr, "%s %s\n", gl_test_failures == gl_test_before_ ? "ok  " : "FAIL", #fn);   \
  } while (0)

static inline int gl_test_end(const char *name) {
  fprintf(stderr, "%s: %d checks, %d failed\n", name, gl_test_checks, gl_test_failures);
  return gl_test_failures ? 1 : 0;
}

#define TEST_END() gl_test_end(__FILE__)

#endif
