/* geolocd: the geoloc localization daemon. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "core/config.h"
#include "core/err.h"
#include "core/log.h"
#include "core/omp.h"
#include "gl_build_config.h"
#include "pipeline.h"
#include "runtime.h"
#include "server.h"
#include "tls.h"

static void usage(FILE *f) {
  fprintf(f, "usage: geolocd --config FILE [--check-config]\n"
             "       geolocd --version\n"
             "\n"
             "  -c, --config FILE   configuration file (see geolocd.conf)\n"
             "  -t, --check-config  validate the configuration, TLS files, model and maps,\n"
             "                      then exit\n"
             "  -V, --version       print the version and exit\n"
             "\n"
             "Signals: SIGHUP reloads the configuration, SIGTERM/SIGINT drain and exit.\n");
}

/* Everything a start would check short of binding the sockets. */
static int check_config(const struct gl_config *cfg) {
  char err[512];
  if (cfg->tls) {
    struct gl_tls_ctx *ctx;
    if (gl_tls_ctx_create(cfg, &ctx, err, sizeof err) != GL_OK) {
      fprintf(stderr, "geolocd: %s\n", err);
      return 1;
    }
    gl_tls_ctx_release(ctx);
  }
  if (cfg->model_path) { /* loads and verifies the model and every map */
    struct gl_runtime *rt;
    if (gl_runtime_load(cfg, 1, &rt, err, sizeof err) != GL_OK) { /* one thread's stage */
      fprintf(stderr, "geolocd: %s\n", err);
      return 1;
    }
    gl_runtime_unref(rt);
  }
  printf("%s: ok\n", cfg->path);
  return 0;
}

int main(int argc, char **argv) {
  gl_omp_wait_passive(argv);
  static const struct option opts[] = {
      {"config", required_argument, NULL, 'c'},
      {"check-config", no_argument, NULL, 't'},
      {"version", no_argument, NULL, 'V'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  const char *path = NULL;
  bool check = false;
  int o;
  while ((o = getopt_long(argc, argv, "c:tVh", opts, NULL)) != -1) {
    switch (o) {
    case 'c':
      path = optarg;
      break;
    case 't':
      check = true;
      break;
    case 'V':
      printf("geolocd %s (protocol %d)\n", GL_VERSION, GL_PROTOCOL_VERSION);
      return 0;
    case 'h':
      usage(stdout);
      return 0;
    default:
      usage(stderr);
      return 2;
    }
  }
  if (!path || optind != argc) {
    usage(stderr);
    return 2;
  }

  gl_log_init(GL_LOG_INFO);
  struct gl_config cfg;
  char err[512];
  if (gl_config_load(path, &cfg, err, sizeof err) != GL_OK) {
    fprintf(stderr, "geolocd: %s\n", err);
    return 1;
  }
  if (check) {
    int rc = check_config(&cfg);
    gl_config_fini(&cfg);
    return rc;
  }
  gl_log_init(cfg.log_level);
  /* A peer that vanishes must be an EPIPE from write, not a signal. */
  signal(SIGPIPE, SIG_IGN);
  /* The decode workers are libuv's thread pool, which takes its size from
   * the environment at its first use: a thread per worker, and one for a
   * SIGHUP's model load, so that a reload holds no frame back. */
  char pool[16];
  snprintf(pool, sizeof pool, "%u", gl_pipeline_decode_workers(cfg.decode_threads) + 1);
  setenv("UV_THREADPOOL_SIZE", pool, 1);

  uv_loop_t loop;
  struct gl_server *srv = NULL;
  int rc = uv_loop_init(&loop);
  if (rc < 0) {
    GL_LOG_E("event loop: %s", uv_strerror(rc));
    gl_config_fini(&cfg);
    return 1;
  }
  rc = gl_server_create(&loop, &cfg, &srv, err, sizeof err);
  gl_config_fini(&cfg); /* moved into srv on success */
  if (rc != GL_OK) {
    GL_LOG_E("cannot start: %s", err);
    uv_loop_close(&loop);
    return 1;
  }
  gl_server_run(srv);
  gl_server_destroy(srv);
  return uv_loop_close(&loop) == 0 ? 0 : 1;
}
