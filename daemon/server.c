/* The server's life: what starts in which order (runtime before any
 * socket, then pipeline, listeners, metrics, TLS context, signals), running
 * the loop, and what is freed at the end. The rest is in the files that
 * server_internal.h lists. */
#include <stdio.h>
#include <stdlib.h>

#include "core/err.h"
#include "core/log.h"
#include "gl_build_config.h"
#include "metrics.h"
#include "runtime.h"
#include "server_internal.h"
#include "tls.h"

static void gl__on_heartbeat(uv_timer_t *t) {
  struct gl_server *srv = t->data;
  gl_metrics_heartbeat(srv->metrics);
}

void gl__report_runtime(struct gl_server *srv) {
  gl_metrics_set_backend(srv->metrics, srv->rt ? gl_nn_engine_backend_name(srv->rt->engine)
                                               : "none");
  gl_metrics_set_maps(srv->metrics, srv->rt ? srv->rt->n_maps : 0);
}

int gl_server_create(uv_loop_t *loop, struct gl_config *cfg, struct gl_server **out, char *err,
                     size_t errlen) {
  struct gl_server *srv = calloc(1, sizeof *srv);
  int rc;
  *out = NULL;
  if (!srv) {
    snprintf(err, errlen, "out of memory");
    return GL_ENOMEM;
  }
  srv->loop = loop;
  srv->src_seed = (uint32_t)(gl__realtime_us() ^ (uintptr_t)srv);
  srv->cfg = *cfg;
  srv->search_threads = gl_runtime_search_threads(&srv->cfg);
  gl_config_defaults(cfg); /* ownership moved */
  uv_signal_init(loop, &srv->sig_term);
  uv_signal_init(loop, &srv->sig_int);
  uv_signal_init(loop, &srv->sig_hup);
  uv_timer_init(loop, &srv->watchdog);
  uv_timer_init(loop, &srv->drain);
  uv_timer_init(loop, &srv->heartbeat);
  srv->heartbeat.data = srv;
  srv->sig_term.data = srv->sig_int.data = srv->sig_hup.data = srv;
  srv->watchdog.data = srv->drain.data = srv;

  /* The model and maps load before any socket is opened: a client never
   * reaches a daemon that is not ready to serve it. */
  if (srv->cfg.model_path) {
    rc = gl_runtime_load(&srv->cfg, srv->search_threads, &srv->rt, err, errlen);
    if (rc != GL_OK)
      goto fail;
  }
  rc = gl_pipeline_create(loop, srv->cfg.decode_threads, srv->search_threads, gl__on_job_done, srv,
                          &srv->pipe, err, errlen);
  if (rc != GL_OK)
    goto fail;
  rc = gl__listen_all(srv, err, errlen);
  if (rc != GL_OK)
    goto fail;
  /* A NULL listen address gives a registry without an HTTP server. */
  rc = gl_metrics_create(srv->cfg.metrics_listen, &srv->metrics, err, errlen);
  if (rc != GL_OK)
    goto fail;
  gl__report_runtime(srv);
  uv_timer_start(&srv->heartbeat, gl__on_heartbeat, GL_METRICS_HEARTBEAT_MS,
                 GL_METRICS_HEARTBEAT_MS);
  if (gl__has_tls_listener(srv)) {
    if (!srv->cfg.tls_cert || !srv->cfg.tls_key) {
      snprintf(err, errlen, "%s: a TLS socket needs [tls] cert and key", srv->cfg.path);
      rc = GL_ECONFIG;
      goto fail;
    }
    rc = gl_tls_ctx_create(&srv->cfg, &srv->tls_ctx, err, errlen);
    if (rc != GL_OK)
      goto fail;
  }
  gl__srv_signals_start(srv);
  *out = srv;
  return GL_OK;
fail:
  srv->stopping = true;
  gl__close_listeners(srv);
  gl__srv_maybe_done(srv);
  uv_run(loop, UV_RUN_DEFAULT); /* completes the closes */
  gl_server_destroy(srv);
  return rc;
}

int gl_server_run(struct gl_server *srv) {
  gl__notify_status(srv, "READY=1\n");
  gl_metrics_set_ready(srv->metrics, true);
  GL_LOG_N("geolocd %s ready (protocol %d)", GL_VERSION, GL_PROTOCOL_VERSION);
  uv_run(srv->loop, UV_RUN_DEFAULT);
  GL_LOG_N("stopped");
  return GL_OK;
}

void gl_server_destroy(struct gl_server *srv) {
  if (!srv)
    return;
  gl_metrics_destroy(srv->metrics);
  gl_pipeline_destroy(srv->pipe);
  gl_runtime_unref(srv->rt);
  gl_tls_ctx_release(srv->tls_ctx);
  gl_config_fini(&srv->cfg);
  free(srv);
}
