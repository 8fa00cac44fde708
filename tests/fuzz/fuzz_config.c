/* libFuzzer target: the daemon's INI configuration loader, gl_config_load,
 * on arbitrary file contents. The loader takes a path, so the input is
 * written to a memfd that is loaded through /proc/self/fd/N (the same
 * fopen/getline path a real file takes).
 *
 * A load either succeeds with every value in its documented range, or fails
 * with GL_ECONFIG, a message that names the file, and cfg left as the
 * defaults; anything else aborts. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/config.h"
#include "core/err.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REQUIRE(cond)                                                                              \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, #cond);                                   \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

static int fd = -1;
static char path[64];

static void check_loaded(const struct gl_config *c) {
  REQUIRE(c->path && strcmp(c->path, path) == 0);
  REQUIRE(c->max_clients >= 1 && c->max_clients <= 65535);
  REQUIRE(c->max_message_bytes >= 1024 && c->max_message_bytes <= 268435456);
  REQUIRE(c->max_decoded_pixels >= 1024 && c->max_decoded_pixels <= 268435456);
  REQUIRE(c->default_top_k >= 1 && c->default_top_k <= 100);
  REQUIRE(c->unix_mode <= 0777);
  REQUIRE(c->heading_step_deg >= 1 && c->heading_step_deg <= 180);
  REQUIRE(c->track_window_cells >= 8 && c->track_window_cells <= 1024);
  REQUIRE(c->n_maps <= GL_CONFIG_MAX_MAPS);
  for (uint32_t i = 0; i < c->n_maps; i++) {
    REQUIRE(c->maps[i].name && c->maps[i].path && c->maps[i].path[0]);
    size_t n = strlen(c->maps[i].name);
    REQUIRE(n >= 1 && n <= 64);
  }
  REQUIRE(c->n_maps == 0 || c->model_path);
  REQUIRE(!c->unix_path || strlen(c->unix_path) < 108);
  REQUIRE(!c->tls || (c->tls_cert && c->tls_key));
  /* Empty strings mean "not set" and are stored as NULL. */
  const char *strs[] = {c->model_path, c->metrics_listen, c->tcp,     c->unix_path, c->unix_group,
                        c->tls,        c->tls_cert,       c->tls_key, c->tls_ca};
  for (size_t i = 0; i < sizeof strs / sizeof *strs; i++)
    REQUIRE(!strs[i] || strs[i][0]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (fd < 0) {
    fd = memfd_create("fuzz_config.conf", MFD_CLOEXEC);
    REQUIRE(fd >= 0);
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  }
  REQUIRE(ftruncate(fd, 0) == 0);
  REQUIRE(pwrite(fd, data, size, 0) == (ssize_t)size);

  struct gl_config cfg;
  char err[512];
  memset(err, 0x5a, sizeof err);
  int rc = gl_config_load(path, &cfg, err, sizeof err);
  if (rc == GL_OK) {
    check_loaded(&cfg);
    gl_config_fini(&cfg);
  } else {
    REQUIRE(rc == GL_ECONFIG);
    REQUIRE(memchr(err, 0, sizeof err) != NULL);
    REQUIRE(strncmp(err, path, strlen(path)) == 0);
    REQUIRE(cfg.path == NULL && cfg.n_maps == 0 && cfg.tcp == NULL && cfg.model_path == NULL);
  }
  return 0;
}
