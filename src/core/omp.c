#include "core/omp.h"

#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

void gl_omp_wait_passive(char **argv) {
  if (getenv("OMP_WAIT_POLICY"))
    return;
  /* The program's own path rather than /proc/self/exe, whose name the
   * process would then carry ("exe" in ps, pgrep and the journal). */
  char path[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
  if (n <= 0 || setenv("OMP_WAIT_POLICY", "passive", 1))
    return;
  path[n] = '\0';
  execv(path, argv); /* returns only on failure */
}
