/* gl_omp_wait_passive: a program started without OMP_WAIT_POLICY runs
 * again with it passive, under its own name and with its arguments; a
 * user's value is kept. Each case is a child run of this program
 * ("child EXPECT ..."), which calls the function first thing, as main
 * does, and reports what its process image holds: /proc/self/environ is
 * the environment the program was run with, so a setenv alone does not
 * show there, only a new run. */
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/omp.h"
#include "test.h"

/* The value of NAME in /proc/self/environ, or "" when absent. */
static const char *gl__environ(const char *name, char *buf, size_t len) {
  FILE *f = fopen("/proc/self/environ", "r");
  size_t n = f ? fread(buf, 1, len - 1, f) : 0;
  if (f)
    fclose(f);
  buf[n] = '\0';
  size_t k = strlen(name);
  for (size_t i = 0; i < n; i += strlen(buf + i) + 1)
    if (strncmp(buf + i, name, k) == 0 && buf[i + k] == '=')
      return buf + i + k + 1;
  return "";
}

static int gl__child(int argc, char **argv) {
  gl_omp_wait_passive(argv);
  char env[65536], comm[64] = "";
  FILE *f = fopen("/proc/self/comm", "r");
  if (f) {
    if (!fgets(comm, sizeof comm, f))
      comm[0] = '\0';
    fclose(f);
  }
  comm[strcspn(comm, "\n")] = '\0';
  const char *base = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
  CHECK(strncmp(comm, base, 15) == 0); /* not "exe" */
  CHECK_EQ_STR(gl__environ("OMP_WAIT_POLICY", env, sizeof env), argv[2]);
  CHECK_EQ_STR(getenv("OMP_WAIT_POLICY"), argv[2]);
  CHECK_EQ_INT(argc, 5); /* the arguments, unchanged */
  CHECK_EQ_STR(argv[3], "an argument");
  CHECK_EQ_STR(argv[4], "");
  return TEST_END();
}

/* Runs this program as a child with OMP_WAIT_POLICY = value (NULL: unset)
 * expecting expect; returns its exit status. quiet: its stderr goes to
 * /dev/null (a run meant to fail). */
static int gl__run(const char *self, const char *value, const char *expect, bool quiet) {
  pid_t pid = fork();
  if (pid == 0) {
    if (quiet && !freopen("/dev/null", "w", stderr))
      _exit(126);
    if (value)
      setenv("OMP_WAIT_POLICY", value, 1);
    else
      unsetenv("OMP_WAIT_POLICY");
    char *args[] = {(char *)self, "child", (char *)expect, "an argument", "", NULL};
    execv(self, args);
    _exit(127);
  }
  int st = 0;
  if (pid < 0 || waitpid(pid, &st, 0) != pid)
    return -1;
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "child") == 0)
    return gl__child(argc, argv);
  char self[4096];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (!CHECK(n > 0))
    return TEST_END();
  self[n] = '\0';
  CHECK_EQ_INT(gl__run(self, NULL, "passive", false), 0);    /* run again, passive */
  CHECK_EQ_INT(gl__run(self, "active", "active", false), 0); /* the user's value */
  CHECK_EQ_INT(gl__run(self, "PASSIVE", "PASSIVE", false), 0);
  /* The check fails when the child sees what it did not expect. */
  CHECK_EQ_INT(gl__run(self, "active", "passive", true), 1);
  return TEST_END();
}
