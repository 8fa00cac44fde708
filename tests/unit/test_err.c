/* Error codes: every GL_E* has its own name and text, and values that are
 * not codes are answered with a placeholder instead of NULL or a crash. */
#include <limits.h>
#include <stddef.h>

#include "core/err.h"
#include "test.h"

struct code {
  int value;
  const char *name; /* "GL_" #name as spelled in GL_ERRNO_MAP */
  const char *text;
};

static const struct code codes[] = {
#define ROW(name, text) {GL_##name, "GL_" #name, text},
    GL_ERRNO_MAP(ROW)
#undef ROW
};
#define N_CODES (sizeof codes / sizeof codes[0])

static void test_every_code(void) {
  for (size_t i = 0; i < N_CODES; i++) {
    const struct code *c = &codes[i];
    const char *name = gl_err_name(c->value);
    const char *text = gl_strerror(c->value);

    /* Codes are negative so that "return 0 or a negative code" holds. */
    CHECK(c->value < 0);
    if (!CHECK(name != NULL) || !CHECK(text != NULL))
      continue;
    CHECK_EQ_STR(name, c->name);
    CHECK(strncmp(name, "GL_E", 4) == 0);
    CHECK_EQ_STR(text, c->text);
    CHECK(text[0] != '\0');
    CHECK(strcmp(text, "unknown error") != 0);
  }
}

static void test_distinct(void) {
  for (size_t i = 0; i < N_CODES; i++) {
    for (size_t j = i + 1; j < N_CODES; j++) {
      CHECK(codes[i].value != codes[j].value);
      CHECK(strcmp(gl_err_name(codes[i].value), gl_err_name(codes[j].value)) != 0);
      CHECK(strcmp(gl_strerror(codes[i].value), gl_strerror(codes[j].value)) != 0);
    }
  }
}

static void test_ok(void) {
  const char *text = gl_strerror(GL_OK);

  CHECK_EQ_INT(GL_OK, 0);
  CHECK_EQ_STR(gl_err_name(0), "GL_OK");
  if (CHECK(text != NULL)) {
    CHECK(text[0] != '\0');
    CHECK(strcmp(text, "unknown error") != 0);
  }
}

static bool is_known_name(const char *name) {
  for (size_t i = 0; i < N_CODES; i++)
    if (strcmp(name, codes[i].name) == 0)
      return true;
  return strcmp(name, "GL_OK") == 0;
}

static void test_unknown(void) {
  /* Positive values, the enum's sentinels, errno-like values and extremes. */
  const int bad[] = {1, -1, -2, 42, GL__ERR_FIRST, GL__ERR_END, GL__ERR_FIRST - 1,
                     GL__ERR_END + 1, INT_MIN, INT_MAX};

  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    const char *text = gl_strerror(bad[i]);
    const char *name = gl_err_name(bad[i]);

    if (CHECK(text != NULL))
      CHECK_EQ_STR(text, "unknown error");
    if (CHECK(name != NULL)) {
      CHECK(name[0] != '\0');
      CHECK(!is_known_name(name));
    }
  }
}

int main(void) {
  RUN(test_every_code);
  RUN(test_distinct);
  RUN(test_ok);
  RUN(test_unknown);
  return TEST_END();
}
